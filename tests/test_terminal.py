"""A worker that reads the terminal (`--workers 1`): it gets the terminal's foreground."""

from __future__ import annotations

import contextlib
import os
import platform
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI

DEADLINE = 60.0

# The read(2) system call's number, as /proc/PID/syscall shows it.
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}

# Makes the pseudo-terminal the launcher's controlling terminal (its session's), as a shell
# in a terminal window has it, then runs the launcher.
CONTROLLING_TTY = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

ASK = "print('asking', flush=True)\nanswer = input()\nprint(f'got:{answer}', flush=True)\n"


class Terminal:
    """`agent-run ARGS` on a fresh pseudo-terminal; the test types at its master side."""

    def __init__(self, cli: CLI, *args: str) -> None:
        self.master, replica = os.openpty()
        self.output = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTROLLING_TTY, *cli.argv(*args)],
            stdin=replica, stdout=replica, stderr=replica,
            start_new_session=True, env={**cli.env, "AGENT_RUN_LOG_FORMAT": "json"},
            cwd=cli.cwd,
        )  # fmt: skip
        os.close(replica)

    def expect(self, text: bytes) -> None:
        deadline = time.monotonic() + DEADLINE
        while text not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} on the terminal; it shows:\n{self.output.decode()}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every process on the terminal has gone
                    chunk = b""
                assert chunk, f"the terminal closed before {text!r}:\n{self.output.decode()}"
                self.output += chunk

    def wait(self) -> int:
        """The launcher's exit code; the terminal is read meanwhile, so no write blocks."""
        deadline = time.monotonic() + DEADLINE
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running:\n{self.output.decode()}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.master, 4096)
        return self.proc.returncode

    def wait_until_reading(self) -> None:
        """Until the terminal's foreground process is blocked reading it.

        A Ctrl-C that lands after the agent's last check for signals but before its read
        starts is caught and never acted on: CPython's input() then blocks with the
        KeyboardInterrupt pending, as it would without agent-run. A user types long after
        the prompt; the test must wait for the read to start.
        """
        read = READ_SYSCALL.get(platform.machine())
        deadline = time.monotonic() + DEADLINE
        while True:
            assert time.monotonic() < deadline, f"nothing reads the terminal:\n{self.output!r}"
            with contextlib.suppress(OSError):
                group = os.tcgetpgrp(self.master)
                call = Path(f"/proc/{group}/syscall").read_text().split()
                if read is None or call[:2] == [str(read), "0x0"]:  # read(0, ...)
                    return
            time.sleep(0.01)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(cli: CLI) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []
    (cli.cwd / "ask.py").write_text(ASK)

    def start(*args: str) -> Terminal:
        started.append(Terminal(cli, *args))
        return started[-1]

    yield start
    for term in started:
        term.close()


def test_a_single_worker_reads_the_terminal(terminal: Callable[..., Terminal]) -> None:
    """With --workers 1 on a terminal, input() in the worker reads what is typed (no SIGTTIN)."""
    term = terminal("--workers", "1", "--restart", "never", "--no-watch", "ask.py")
    term.expect(b"asking")
    term.type(b"hello\n")
    term.expect(b"got:hello")
    # The launcher takes the terminal back when the worker ends, and exits like `exec`.
    assert term.wait() == 0


def test_ctrl_c_stops_the_launcher_not_only_its_worker(terminal: Callable[..., Terminal]) -> None:
    """Ctrl-C reaches the foreground worker; the launcher then stops instead of restarting it."""
    term = terminal("--workers", "1", "--no-watch", "ask.py")
    term.expect(b"asking")
    term.wait_until_reading()
    term.type(b"\x03")
    assert term.wait() == 0
    assert term.output.count(b"asking") == 1
