"""The template interpreter, launcher side (#18): warm starts for Python targets.

A template is a Python interpreter that has imported the agent's dependencies and holds no
secret. `Template.launch` has `fork_exec`'s signature and promise: it asks the template for
a process, which the launcher owns exactly as a spawned one (its child, in its own process
group, with the parent-death signal, reaped by the one reaper), and hands that process its
environment over a private socketpair. When the template cannot serve — not started, not
ready yet, dead, stuck, another interpreter, or an environment it cannot stand for (below) —
`launch` spawns the old way, and a dead or stuck template is started again, a few times.

The rule for imports that read the environment: a preloaded module runs in the template,
without secrets. The template records every name a preloaded module reads from `os.environ`
while importing; a process whose environment gives one of those names another value than
the template had (a secret, a per-worker variable) is spawned the old way, with a warning
that names the variable and the module list. The interpreter's own start-up variables
(PYTHON*, locale, HOME) must match too. A read through C's getenv() is not seen: such
modules belong out of `--preload`.

How a process gets here (see template_runtime.py for the other side): the launcher sends the
template the process's setup channel and its stdio and kept fds (SCM_RIGHTS); the template
forks twice, so the process is re-parented to the launcher (a child subreaper) before the
template answers with its pid. The launcher then registers nothing itself: `spawn` does, as
for `fork_exec`, on this same thread before any reap can run, and only then is the
environment sent; until it arrives the process runs nothing of the agent's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from launcher.process import reaper
from launcher.process import worker as process
from launcher.process.template_runtime import BOOTSTRAP, CHANNEL_VARIABLE, PING

if TYPE_CHECKING:
    from launcher.config import RunConfig
    from launcher.environment import EnvironmentLayers

Log = Callable[..., None]

READY_TIMEOUT = 120.0  # for the template's imports, at launch (then: the old way)
# For one answer; longer means stuck (a fork takes milliseconds, a few hundred on a loaded
# machine with a large heap). The event loop awaits a ping first (`answering`), so only a
# template stuck between the ping and the fork can hold the loop this long.
REPLY_TIMEOUT = 2.0
TIMEOUT_VARIABLE = "AGENT_RUN_TEMPLATE_TIMEOUT"  # seconds; REPLY_TIMEOUT when unset or bad
MAX_STARTS = 4  # a template that keeps dying is given up on: processes start the old way
_STARTUP_PREFIXES = ("PYTHON", "LC_")
_STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "HOME", "PATH"})
# Read at import by our own start-up hook (LiveKit's port default), which each forked process
# applies again with its own value (python_bootstrap's rebind()).
_REAPPLIED = frozenset({"AGENT_RUN_PORT"})


def startup_variable(name: str) -> bool:
    """Read by the interpreter itself at start-up (paths, encodings, flags)."""
    return name.startswith(_STARTUP_PREFIXES) or name in _STARTUP_NAMES


def merge_environment(
    wanted: Mapping[str, str], launched: Mapping[str, str], current: Mapping[str, str]
) -> dict[str, str]:
    """A child's environment: `wanted`, plus each change that start-up and preloading made
    to the template's own (`launched` -> `current`: our bootstrap's PYTHONPATH edit, a
    library's setdefault), unless the child's own value differs from what the template was
    started with (then a fresh interpreter would not have made that change either)."""
    result = dict(wanted)
    for name in set(launched) | set(current):
        before, after = launched.get(name), current.get(name)
        if before == after or wanted.get(name) != before:
            continue
        if after is None:
            result.pop(name, None)
        else:
            result[name] = after
    return result


def template_environment(inherited: Mapping[str, str], withheld: Sequence[str]) -> dict[str, str]:
    """The template's environment: the launcher's own, minus its private variables and every
    name a secret, an env file or a platform credential may set (`withheld`)."""
    from launcher.environment import PRIVATE_VARIABLES, PYTHON_BOOTSTRAP
    from launcher.store.names import PLATFORM_CREDENTIALS

    hidden = set(PRIVATE_VARIABLES) | set(PLATFORM_CREDENTIALS) | set(withheld)
    env = {k: v for k, v in inherited.items() if k not in hidden}
    env.setdefault("PYTHONUNBUFFERED", "1")  # as compose() sets it for a Python target
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (PYTHON_BOOTSTRAP, env.get("PYTHONPATH"))))
    return env


class Template:
    """One template interpreter, restarted when it dies; `launch` forks from it."""

    def __init__(
        self,
        modules: Sequence[str],
        environment: Mapping[str, str],
        python: str = sys.executable,
        *,
        loaded: Mapping[str, str] | None = None,
        compiled: Sequence[str] = (),
    ) -> None:
        self.modules = list(modules)
        # Files the template loads as modules by path (ours: NAME -> PATH), and the agent's
        # own files it compiles, never runs (template_runtime's ENTRY forms).
        self.loaded = dict(loaded or {})
        self.compiled = list(compiled)
        self.environment = dict(environment)  # secret-free, as the template was started
        self.python = python
        self.pid: int | None = None
        # Events before logging exists (the launch path) wait here for attach_log().
        self._pending: list[tuple[str, dict[str, object]]] = []
        self.log: Log = lambda event, **fields: self._pending.append((event, fields))
        self.starts = 0
        self.forks = 0
        self.fallbacks = 0
        self._control: socket.socket | None = None
        self._report: dict[str, object] | None = None
        self._started_at = 0.0
        self._closing = False
        self._said: set[str] = set()
        self.reply_timeout = _reply_timeout(os.environ.get(TIMEOUT_VARIABLE))

    def attach_log(self, log: Log) -> None:
        """Logging exists now: what happened before is logged first."""
        self.log = log
        pending, self._pending = self._pending, []
        for event, fields in pending:
            log(event, **fields)

    # --- life -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the template (it imports in the background); False when it cannot be."""
        if self._closing or self.starts >= MAX_STARTS:
            return False
        self.starts += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**self.environment, CHANNEL_VARIABLE: str(theirs.fileno())}
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template_runtime.py")
        argv = [self.python, "-c", BOOTSTRAP, here, str(os.getpid()), *self.modules]
        argv += [f"{name}={path}" for name, path in self.loaded.items()]
        argv += [f"@{path}" for path in self.compiled]
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = process.fork_exec(
                argv, env, stdin=devnull, stdout=None, stderr=None, pass_fds=(theirs.fileno(),)
            )
        except OSError as error:
            ours.close()
            self._say("template_unavailable", reason=error.strerror or str(error))
            return False
        finally:
            theirs.close()
            os.close(devnull)
        self.pid, self._control, self._report = pid, ours, None
        self._started_at = time.monotonic()
        reaper.register(pid, functools.partial(self._exited, pid))
        reaper.outlives_us(pid)  # stopped by close(); the launcher's exit need not wait
        return True

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Block until the template has imported its modules (the launch path only)."""
        return self._poll(timeout)

    def renew(self) -> None:
        """The agent's code or dependencies changed (`agent-run dev`): a new template imports
        them again; processes start the old way until it is ready."""
        self._stop()
        self.pid, self._report, self.starts = None, None, 0
        self.start()

    def close(self) -> None:
        """Stop the template (its children are the launcher's, and stay)."""
        self._closing = True
        self._stop()

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # the template reads EOF and exits
            self._control = None
        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)

    def _exited(self, pid: int, status: int) -> None:
        if pid != self.pid:
            return
        self.pid = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if not self._closing:
            self.log(
                "template_exited",
                pid=pid,
                code=reaper.exit_code(status),
                restart=self.starts < MAX_STARTS,
                level="warning",
            )

    # --- readiness --------------------------------------------------------------------------

    def _poll(self, timeout: float) -> bool:
        """True once the template reported; reads the report if it is there."""
        if self._report is not None:
            return True
        control = self._control
        if control is None:
            return False
        readable, _, _ = select.select([control], [], [], timeout)
        if not readable:
            return False
        try:
            data = control.recv(1 << 22)
        except OSError:
            data = b""
        if not data:
            self._failed("the template exited while importing")
            return False
        report: dict[str, object] = json.loads(data)
        self._report = report
        self._ready(report)
        return True

    def _ready(self, report: dict[str, object]) -> None:
        failed = report.get("failed") or {}
        self.log(
            "template_ready",
            pid=self.pid,
            modules=len(self.modules),
            failed=sorted(failed) if isinstance(failed, dict) else [],
            seconds=round(time.monotonic() - self._started_at, 3),
        )
        threads = report.get("threads")
        if isinstance(threads, int) and threads > 1:
            # Forking a process with other threads can copy a lock some thread holds.
            self._failed(f"a preloaded module started {threads - 1} thread(s)")
            self.starts = MAX_STARTS  # the same modules would do it again

    # --- forks ------------------------------------------------------------------------------

    def serving(self) -> bool:
        """Running and done importing: the next `launch` would ask it for a fork."""
        return self.pid is not None and self._control is not None and self._poll(0.0)

    async def answering(self) -> None:
        """Await (without blocking the event loop) a ping answered by a serving template;
        a template that does not answer within the timeout is failed (killed, restarted), so
        the `launch` that follows spawns the old way at once instead of waiting on it."""
        import anyio

        control = self._control
        if not self.serving() or control is None:
            return
        try:
            control.send(PING)
            with anyio.fail_after(self.reply_timeout):
                await anyio.wait_readable(control)
            reply = control.recv(4096)
        except TimeoutError:
            if control is self._control:
                self._failed(f"no answer within {self.reply_timeout:g} s")
            return
        except OSError as error:
            if control is self._control:
                self._failed(f"ping failed: {error}")
            return
        if reply != PING and control is self._control:
            self._failed("the template closed its socket" if not reply else "a bad answer")

    def unusable(self, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
        """Why this process cannot come from the template (None: it can)."""
        if self.pid is None and not self._closing and not self.start():
            return "the template is not running"
        if self.pid is None or not self._poll(0.0):
            return "the template is still importing"
        if not argv or argv[0] != self.python:
            return "another interpreter"
        if len(argv) < 2 or (argv[1].startswith("-") and argv[1] not in ("-m", "-c")):
            return "interpreter options"
        if argv[1] in ("-m", "-c") and len(argv) < 3:
            return "interpreter options"
        launched = self.environment
        for name in set(env) | set(launched):
            if startup_variable(name) and env.get(name) != launched.get(name):
                return f"{name} differs from the template's"
        assert self._report is not None
        read = self._report.get("env_read")
        for name in read if isinstance(read, list) else []:
            if name not in _REAPPLIED and env.get(name) != launched.get(name):
                return f"a preloaded module read {name} at import"
        return None

    def launch(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int | None,
        stderr: int | None,
        pass_fds: Sequence[int] = (),
        foreground: bool = False,
    ) -> int:
        """`fork_exec`, from the template when it can serve; the old way otherwise."""
        reason = self.unusable(argv, env)
        if reason is None:
            try:
                pid = self._fork(argv, env, stdin, stdout, stderr, pass_fds, foreground)
            except (OSError, ValueError) as error:
                self._failed(f"fork request failed: {error}")
            else:
                self.forks += 1
                return pid
            reason = "the template failed"
        self.fallbacks += 1
        self._say("template_not_used", reason=reason)
        return process.fork_exec(
            argv,
            env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            foreground=foreground,
        )

    def _fork(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        stdin: int,
        stdout: int | None,
        stderr: int | None,
        pass_fds: Sequence[int],
        foreground: bool,
    ) -> int:
        control = self._control
        assert control is not None and self._report is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fds = [theirs.fileno(), stdin, 1 if stdout is None else stdout]
            fds += [2 if stderr is None else stderr, *pass_fds]
            socket.send_fds(control, [b"fork"], fds)
        finally:
            theirs.close()
        readable, _, _ = select.select([control], [], [], self.reply_timeout)
        if not readable:
            ours.close()
            raise OSError(f"no answer within {self.reply_timeout:g} s")
        reply = control.recv(4096)
        if not reply:
            ours.close()
            raise OSError("the template closed its socket")
        pid = int(json.loads(reply)["pid"])
        if pid <= 0:
            ours.close()
            raise OSError("the template could not fork")
        for hook in process.spawn_hooks:
            hook(pid)
        # As fork_exec does: a stop sent right after this reaches the new group.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        current = self._report.get("environ")
        environment = merge_environment(
            process.marked_environment(env),
            self.environment,
            current if isinstance(current, dict) else self.environment,
        )
        setup = json.dumps(
            {
                "env": environment,
                "argv": list(argv),
                "cwd": os.getcwd(),
                "targets": [0, 1, 2, *pass_fds],
                "foreground": foreground,
            }
        ).encode()
        # Over the process's own channel, after the fork: the template never sees it. A
        # process that died meanwhile is the reaper's to report, like any other exit.
        with contextlib.suppress(OSError), ours:
            ours.sendall(len(setup).to_bytes(4, "big") + setup)
        return pid

    def _failed(self, reason: str) -> None:
        """Stuck or broken: stop it; the next launch starts another (while starts remain)."""
        self._say("template_failed", reason=reason, pid=self.pid, level="warning")
        self._stop()
        self._report = None

    def _say(self, event: str, **fields: object) -> None:
        """Log an event once per reason: a pool falling back would repeat it per process."""
        key = f"{event}:{fields.get('reason')}"
        if key not in self._said:
            self._said.add(key)
            fields.setdefault("level", "warning" if event != "template_not_used" else "info")
            self.log(event, **fields)


def _reply_timeout(text: str | None) -> float:
    try:
        value = float(text) if text else REPLY_TIMEOUT
    except ValueError:
        return REPLY_TIMEOUT
    return value if value > 0 else REPLY_TIMEOUT


def for_target(
    config: RunConfig,
    layers: EnvironmentLayers,
    *,
    session: bool,
    extra: Callable[[Sequence[str]], Sequence[str]] = lambda found: (),
    loaded: Mapping[str, str] | None = None,
) -> Template | None:
    """The template for this launch, or None (see `preload.modules_for`); `extra(found)`
    names modules to import first, given the ones found; `loaded` files of ours it loads as
    modules (NAME -> PATH)."""
    from launcher.process.preload import agent_files, modules_for

    modules = modules_for(config, session=session)
    if modules is None:
        return None
    if not process.become_subreaper() and os.getpid() != 1:
        return None  # its forks would be re-parented to init, out of our reach
    withheld = [*layers.secrets, *layers.env_files, *layers.platform]
    first = list(extra(modules))
    modules = [*first, *(m for m in modules if m not in first)]
    return Template(
        modules,
        template_environment(layers.inherited, withheld),
        loaded=loaded,
        compiled=agent_files(config.target),
    )
