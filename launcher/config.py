"""`RunConfig`: everything `agent-run [OPTIONS] TARGET` was asked to do, as frozen data.

Options are resolved in this order: flags, then `AGENT_RUN_*` environment variables, then
`agent-run.toml`, then the defaults below. The CLI does the resolving; the layers below it
only ever see a `RunConfig`.
"""

from __future__ import annotations

import enum
import signal
import sys
from typing import NamedTuple


class TargetKind(enum.Enum):
    SCRIPT = "script"  # bot.py: run with the launcher's own interpreter
    MODULE = "module"  # -m package.module
    COMMAND = "command"  # -- COMMAND ARGS: anything else (node agents, binaries)


class RestartPolicy(enum.Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class LogFormat(enum.Enum):
    AUTO = "auto"  # JSON when stderr is not a terminal, console otherwise
    JSON = "json"
    CONSOLE = "console"


# NamedTuples, not dataclasses: this module is on the launch critical path, and
# `dataclasses` imports `inspect` (~7 ms here).
class Target(NamedTuple):
    kind: TargetKind
    value: str  # script path, module name, or the command's executable
    args: tuple[str, ...] = ()

    @property
    def is_python(self) -> bool:
        return self.kind is not TargetKind.COMMAND

    def interpreted(self) -> tuple[str, Target] | None:
        """`-- /venv/bin/python bot.py ARGS` (or `-m MODULE ARGS`): (that interpreter, the
        script or module target), so session mode can run a bot on its own venv's Python."""
        if self.kind is not TargetKind.COMMAND or len(self.args) < 1:
            return None
        name = self.value.rpartition("/")[2]  # python, python3, python3.12 (no `re`: start-up)
        if name not in ("python", "python3") and not (
            name.startswith("python3.") and name[8:].isdigit()
        ):
            return None
        first, rest = self.args[0], self.args[1:]
        if first == "-m" and rest:
            return self.value, Target(TargetKind.MODULE, rest[0], rest[1:])
        if first.endswith(".py"):
            return self.value, Target(TargetKind.SCRIPT, first, rest)
        return None

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command line of one worker."""
        if self.kind is TargetKind.SCRIPT:
            return [python, self.value, *self.args]
        if self.kind is TargetKind.MODULE:
            return [python, "-m", self.value, *self.args]
        return [self.value, *self.args]


# LiveKit's worker drains its calls for up to 3600 s (AgentServer's drain_timeout), then takes
# up to 10 s to close its job processes (shutdown_process_timeout) and a few more to exit:
# agent-run's SIGKILL comes only after all of that. Outer deadlines (Kubernetes
# terminationGracePeriodSeconds, systemd TimeoutStopSec, docker stop -t) need a little more.
DRAIN_TIMEOUT = 3630.0
# Our default ports stay clear of LiveKit workers' health server (8081), Pipecat's runner
# (7860) and Pipecat Cloud's base image (8080).
SESSION_API = "127.0.0.1:8098"
HEALTH_PORT = 8099


class RunConfig(NamedTuple):
    target: Target
    # Where the secrets come from.
    store: str | None = None  # --store; None = AGENT_RUN_HOME / XDG default
    key_file: str | None = None
    secret_set: str | None = None
    env_files: tuple[str, ...] = ()
    # The `env` table of agent-run.toml: plain values, which may reference secrets.
    env: tuple[tuple[str, str], ...] = ()
    config_file: str | None = None  # the agent-run.toml that was read, if any
    render: tuple[str, ...] = ()  # --render TEMPLATE:DEST
    # The pool.
    workers: int = 1
    restart: RestartPolicy = RestartPolicy.ALWAYS
    max_restarts: int | None = None  # None: never give up (the CLI's default is finite)
    restart_window: float = 60.0
    ready: str = "started"  # started | notify | tcp:PORT | http:URL | log:REGEX
    ready_delay: float = 1.0
    ready_timeout: float = 60.0
    watchdog: float | None = None
    drain_timeout: float = DRAIN_TIMEOUT
    stop_signal: signal.Signals = signal.SIGTERM
    max_surge: int = 1  # 0 = singleton handover
    port_base: int | None = None
    grace_period: float | None = None  # the outer stop deadline (Kubernetes, docker stop -t)
    # Recycling (worker mode): a worker over a limit is replaced ready-first, then drained.
    max_worker_age: float | None = None  # seconds
    max_worker_memory: int | None = None  # bytes of its process group (PSS, else RSS)
    max_worker_calls: int | None = None  # X_AGENT_RUN_CALL_DONE=1 messages
    # Operations.
    name: str | None = None  # control socket name; default the bound set
    user: str | None = None  # --user USER[:GROUP]: workers run as it (launcher/privilege.py)
    health: str | None = None  # HOST:PORT
    log_format: LogFormat = LogFormat.AUTO
    mask: bool = True
    watch: bool = True
    dev: bool = False  # `agent-run dev`: console logs, restart on code change
    # Session mode.
    listen: str = SESSION_API
    idle: int = 1
    max_sessions: int | None = None  # None: default_max_sessions()
    entrypoint: str | None = None  # module:function
    mode: str = "auto"  # auto | worker | session (--mode)
    max_session_seconds: float | None = None
    insecure_no_auth: bool = False
    # Python targets: auto | none | MOD,MOD (--preload): the template interpreter (#18).
    preload: str = "auto"
