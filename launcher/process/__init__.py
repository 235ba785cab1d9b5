"""The process layer: one child process, its readiness, its output, its notify socket."""
