"""The terminal's foreground, for a worker that reads it (`--workers 1` on a terminal).

A worker runs in a process group of its own (so it can be stopped with its sub-processes),
which makes it a *background* job of the terminal: reading it, as `input()` or
`breakpoint()` do, sends it SIGTTIN and it stops for good while the launcher reports it
ready (#11, item 6). So a worker that inherits the terminal as stdin, from a launcher that
is itself in the terminal's foreground, is given the foreground, as a shell gives it to a
job: the child calls tcsetpgrp on itself between fork and exec (signals are blocked there,
so the kernel does not stop it with SIGTTOU for it), which leaves no window where it could
read too early. When it exits the launcher takes the foreground back (with SIGTTOU
blocked: it is a background process by then), unless a newer worker already has it.

Ctrl-C then reaches the worker, as it would without agent-run; a worker that dies of it
passes the interrupt on to the launcher (`pass_on_interrupt`, `Worker.interrupted`), which
then shuts down as if it had been pressed there, instead of restarting the worker.
"""

from __future__ import annotations

import os
import signal


def can_hand_over(fd: int = 0) -> bool:
    """True when `fd` is a terminal whose foreground is the launcher's own process group."""
    try:
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def take_back(group: int, fd: int = 0) -> bool:
    """Make the launcher's group the foreground again if `group` still holds it."""
    try:
        if os.tcgetpgrp(fd) != group:
            return False  # a newer worker has it, or the user's shell
    except OSError:
        return False
    # A background process calling tcsetpgrp gets SIGTTOU (and stops) unless it blocks it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(fd, os.getpgrp())
        return True
    except OSError:
        return False
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def pass_on_interrupt(status: int) -> bool:
    """A foreground worker died of the terminal's Ctrl-C: the user meant us too.

    The launcher gets the SIGINT it would have got without the hand-over (its signal loop
    logs it and drains); True tells the caller, which must stop restarting at once: the
    signal arrives a loop iteration later, after a restart could already have been planned.
    """
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT:
        os.kill(os.getpid(), signal.SIGINT)
        return True
    return False
