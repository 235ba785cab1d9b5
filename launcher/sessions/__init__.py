"""Session mode: warm processes, dispatch, the session API and the child-side runtime."""
