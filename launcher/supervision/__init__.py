"""The pool of workers: restart policy, slots, rolling replacement."""
