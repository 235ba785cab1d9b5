"""`agent-run [OPTIONS] TARGET` and `agent-run dev TARGET`: resolve options, build the plan.

Options come from flags, then `AGENT_RUN_*` environment variables, then `agent-run.toml`
(keys as in Pipecat's pcc-deploy.toml: `secret_set = "my-secrets"`), then the defaults. This
module only resolves and validates; the supervisor does the work. It stays light: the launch
critical path runs through it: paths stay `str` here (no pathlib), and `typing` is only
imported by the type checker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from launcher.config import (
    DRAIN_TIMEOUT,
    SESSION_API,
    LogFormat,
    RestartPolicy,
    RunConfig,
    Target,
    TargetKind,
)
from launcher.errors import InvalidInput, UsageError

if TYPE_CHECKING:
    from typing import Any

CONFIG_FILE = "agent-run.toml"
MODES = ("auto", "worker", "session")
# A crash-looping slot is given up after this many restarts within --restart-window, and the
# launcher exits 1 once every slot has given up, so Docker, systemd and Kubernetes see the
# failure instead of a process that looks alive forever. Five in 60 s is systemd's own
# StartLimitBurst idea; with the 0.1 s doubling backoff a slot that fails at once gives up
# within seconds. `agent-run dev` keeps retrying: there a code change restarts the workers.
DEFAULT_MAX_RESTARTS = 5
# Variables that are not options but that agent-run reads or sets (runtime variables of a
# worker appear when an agent itself runs agent-run). Add new AGENT_RUN_* variables here, or
# `agent-run` warns that they are unknown.
OTHER_VARIABLES = frozenset(
    {
        "AGENT_RUN_HOME",
        "AGENT_RUN_MASTER_KEY",
        "AGENT_RUN_KEY_FILE",
        "AGENT_RUN_RUNTIME_DIR",
        "AGENT_RUN_WORKER",
        "AGENT_RUN_SECRETS_VERSION",
        "AGENT_RUN_PORT",
        "AGENT_RUN_SESSION_ID",
        "AGENT_RUN_SESSION_FD",
        "AGENT_RUN_INSTANCE",
        "AGENT_RUN_CONTAINMENT",
        "AGENT_RUN_FILES",
        "AGENT_RUN_API_TOKEN",  # a key of the bound set (session API token), not a variable
        "AGENT_RUN_TEMPLATE_FD",
        "AGENT_RUN_TEMPLATE_TIMEOUT",  # seconds a template has to answer (tests: long)
    }
)
KEY_SEARCH_ORDER = (
    "AGENT_RUN_MASTER_KEY, then --key-file / AGENT_RUN_KEY_FILE, "
    "$CREDENTIALS_DIRECTORY/agent-run.key, /run/secrets/agent-run.key, <store>/master.key"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _max_restarts(text: str) -> int | None:
    """A positive count, or `never` (also `none`, `unlimited`): keep restarting forever."""
    if text.strip().lower() in ("never", "none", "unlimited"):
        return None
    return _positive_int(text)


def _mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(text)
    return mode


def _preload(text: str) -> str:
    from launcher.process.preload import parse

    value = parse(text)
    return value if isinstance(value, str) else ",".join(value)


MAX_SECONDS = 1e9  # ~31 years: larger (or inf, nan) would overflow the clocks it is added to


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= MAX_SECONDS:  # also refuses nan
        raise ValueError(text)
    return value


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(text: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024; `Mi`, `MB` the same)."""
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = cleaned[-1:] if cleaned[-1:] in _SIZE_UNITS else ""
    value = float(cleaned[: len(cleaned) - len(unit)])
    if not value > 0 or value == float("inf"):
        raise ValueError(text)
    return int(value * _SIZE_UNITS[unit])


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(text)
    return value


def _signal(text: str) -> signal.Signals:
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(text) from None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


class Option(NamedTuple):
    flag: str
    dest: str
    convert: Callable[[str], Any] | None  # None: a switch
    default: Any
    help: str
    metavar: str | None = None
    env: str | None = None  # default: AGENT_RUN_<DEST>


OPTIONS: tuple[Option, ...] = (
    Option(
        "--secrets",
        "secret_set",
        str,
        None,
        "bind this secret set (toml: secret_set)",
        "SET",
        "AGENT_RUN_SECRETS",
    ),
    Option(
        "--store",
        "store",
        str,
        None,
        "store directory (default: $AGENT_RUN_HOME, else $XDG_DATA_HOME/agent-run)",
        "DIR",
        "AGENT_RUN_HOME",
    ),
    Option(
        "--key-file",
        "key_file",
        str,
        None,
        "master key file; without it the key is searched: " + KEY_SEARCH_ORDER,
        "FILE",
    ),
    Option(
        "--env-file",
        "env_files",
        str,
        (),
        "plain development values from a dotenv file; repeatable (toml: env_files = [...])",
        "FILE",
    ),
    Option(
        "--render",
        "render",
        str,
        (),
        "render TEMPLATE (${secret:NAME} references resolved) to DEST in each process's private "
        "directory $AGENT_RUN_FILES; repeatable (toml: render = [...]; env: comma-separated)",
        "TEMPLATE:DEST",
    ),
    Option(
        "--workers",
        "workers",
        _positive_int,
        1,
        "number of worker processes: at most 32 per CPU, and at most half the process limit "
        "(ulimit -u) when one applies",
        "N",
    ),
    Option(
        "--restart",
        "restart",
        RestartPolicy,
        RestartPolicy.ALWAYS,
        "restart policy: always, on-failure, never",
        "POLICY",
    ),
    Option(
        "--max-restarts",
        "max_restarts",
        _max_restarts,
        DEFAULT_MAX_RESTARTS,
        "give up on a slot after N restarts within --restart-window; all slots given up: "
        "exit 1; `never` keeps restarting (the default under `agent-run dev`)",
        "N|never",
    ),
    Option(
        "--restart-window",
        "restart_window",
        _seconds,
        60.0,
        "window for --max-restarts, in seconds",
        "S",
    ),
    Option(
        "--ready",
        "ready",
        str,
        "started",
        "readiness: started, notify, tcp:PORT, http:URL, log:REGEX ({port} = AGENT_RUN_PORT)",
        "HOW",
    ),
    Option(
        "--ready-delay",
        "ready_delay",
        _seconds,
        1.0,
        "with --ready started: seconds alive before a worker counts as ready",
        "S",
    ),
    Option(
        "--ready-timeout",
        "ready_timeout",
        _seconds,
        60.0,
        "boot timeout: a worker not ready by then is restarted (a rollout aborts)",
        "S",
    ),
    Option(
        "--watchdog",
        "watchdog",
        _seconds,
        None,
        "liveness: a notify worker must send WATCHDOG=1 every S seconds or it is restarted",
        "S",
    ),
    Option(
        "--drain-timeout",
        "drain_timeout",
        _seconds,
        DRAIN_TIMEOUT,
        "seconds a stopped worker may drain before its process group is SIGKILLed (the default "
        "leaves a LiveKit worker its 3600 s drain and its shutdown)",
        "S",
    ),
    Option(
        "--max-worker-age",
        "max_worker_age",
        _positive_seconds,
        None,
        "recycle a worker after S seconds (each comes due up to 10%% earlier, so a pool does "
        "not recycle at once): a fresh one starts, then the old one drains like a rollout's",
        "S",
    ),
    Option(
        "--max-worker-memory",
        "max_worker_memory",
        _size,
        None,
        "recycle a worker whose process group uses more than SIZE (PSS where readable, else "
        "RSS; e.g. 512M, 2G), measured every few seconds; replaced ready-first, then drained",
        "SIZE",
    ),
    Option(
        "--max-worker-calls",
        "max_worker_calls",
        _positive_int,
        None,
        "recycle a worker after N calls, counted by the X_AGENT_RUN_CALL_DONE=1 notify "
        "message it sends per call (launcher.sd_notify.notify_call_done)",
        "N",
    ),
    Option(
        "--stop-signal",
        "stop_signal",
        _signal,
        signal.SIGTERM,
        "signal that asks a worker to drain and exit",
        "SIG",
    ),
    Option(
        "--max-surge",
        "max_surge",
        _non_negative_int,
        1,
        "rollout batch size; 0 = singleton handover (stop old, then start new)",
        "N",
    ),
    Option(
        "--port-base",
        "port_base",
        _non_negative_int,
        None,
        "give worker i AGENT_RUN_PORT = PORT + i; its replacement in a rollout gets "
        "PORT + N + i (N = --workers), so a pool uses ports PORT .. PORT + 2N - 1",
        "PORT",
    ),
    Option(
        "--grace-period",
        "grace_period",
        _seconds,
        None,
        "how long whatever stops agent-run waits before its SIGKILL (Kubernetes "
        "terminationGracePeriodSeconds, docker stop -t): a warning at start-up when it is "
        "shorter than --drain-timeout (systemd's TimeoutStopSec is found by itself)",
        "S",
    ),
    Option(
        "--health",
        "health",
        str,
        None,
        "serve /healthz, /readyz, /metrics on HOST:PORT",
        "HOST:PORT",
    ),
    Option(
        "--user",
        "user",
        str,
        None,
        "run workers and session processes as USER[:GROUP] (the launcher must be root; "
        "supplementary groups cleared): the agent cannot read the store, key or control socket",
        "USER[:GROUP]",
    ),
    Option(
        "--name",
        "name",
        str,
        None,
        "name of this launcher for `agent-run status/reload` (default: the secret set)",
        "NAME",
    ),
    Option(
        "--log-format",
        "log_format",
        LogFormat,
        LogFormat.AUTO,
        "launcher logs: auto (JSON unless stderr is a terminal), json, console",
        "FORMAT",
    ),
    Option(
        "--listen",
        "listen",
        str,
        SESSION_API,
        "session mode: serve the session API (POST /sessions ...) on HOST:PORT",
        "HOST:PORT",
    ),
    Option(
        "--idle",
        "idle",
        _non_negative_int,
        1,
        "session mode: processes kept pre-warmed (agent imported) waiting for a session; "
        "bounded like --workers",
        "N",
    ),
    Option(
        "--max-sessions",
        "max_sessions",
        _positive_int,
        None,
        "session mode: sessions at once; more are answered 429 with Retry-After "
        "(default: from the machine's CPUs and memory)",
        "N",
    ),
    Option(
        "--mode",
        "mode",
        _mode,
        "auto",
        "worker: a pool of workers; session: serve sessions (POST /sessions) from bot() or "
        "--entrypoint; auto: session mode when the target defines async def bot(runner_args)",
        "MODE",
    ),
    Option(
        "--max-session-seconds",
        "max_session_seconds",
        _seconds,
        None,
        "session mode: stop a session after this long (warned before); "
        "a start's X-Pcc-Max-Session-Seconds header may ask for less",
        "S",
    ),
    Option(
        "--insecure-no-auth",
        "insecure_no_auth",
        None,
        False,
        "session mode: serve a non-loopback --listen without the bearer token "
        "(AGENT_RUN_API_TOKEN in the bound set); anyone who reaches the port starts sessions",
    ),
    Option(
        "--preload",
        "preload",
        _preload,
        "auto",
        "Python targets: fork processes from a template interpreter that has imported these "
        "modules (MOD,MOD...) without any secret; auto: the agent's top-level imports (worker "
        "mode: only when one is not in the standard library); none: every process is a fresh "
        "interpreter",
        "MODULES",
    ),
    Option(
        "--entrypoint",
        "entrypoint",
        str,
        None,
        "session mode with this function: MODULE:FUNC, FILE.py:FUNC or FUNC in the target "
        "(default: session mode when the target defines bot())",
        "MODULE:FUNC",
    ),
    Option(
        "--no-mask",
        "no_mask",
        None,
        False,
        "pass worker output through unmasked (hands over the file descriptors)",
    ),
    Option(
        "--no-watch",
        "no_watch",
        None,
        False,
        "no automatic rollout of new secret versions (SIGHUP and `agent-run reload` still roll)",
    ),
)

VALUE_FLAGS = {o.flag for o in OPTIONS if o.convert is not None} | {"--config"}
SWITCHES = {o.flag for o in OPTIONS if o.convert is None}
LIST_OPTIONS = ("env_files", "render")  # repeatable flags, lists in toml


def _env_name(option: Option) -> str:
    return option.env or "AGENT_RUN_" + option.dest.upper()


RUN_DESCRIPTION = (
    "Run an agent with its secret set and the platform credentials in its environment, "
    "as a supervised pool of workers that rolls onto new secret versions without "
    "dropping work. agent-run's options go before the target; what follows the target is "
    "the agent's own (after `--` when it uses an agent-run option's name). Each option can "
    "also be set as an AGENT_RUN_* variable or in agent-run.toml; flags win, then "
    "variables, then the file."
)
DEV_DESCRIPTION = (
    "Run an agent for development: as `agent-run`, with four defaults changed — console "
    "logs (--log-format console), --drain-timeout 5, --max-restarts never (a crash waits "
    "for your fix), and a watch of the target's directory: a changed .py file restarts "
    "the workers (in session mode, replaces the idle processes). Options given explicitly "
    "still win."
)
EPILOG = (
    "other commands: agent-run dev TARGET (development), agent-run secrets|key|platform ... "
    "(the store), agent-run status|reload (a running launcher), agent-run sessions ... "
    "(sessions of a launcher in session mode), agent-run --version. Each has --help."
)


def build_parser(prog: str = "agent-run") -> Any:
    """The argparse parser: used for --help and error messages only (see parse_options)."""
    import argparse
    from pathlib import Path

    dev = prog.endswith(" dev")
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [OPTIONS] bot.py [ARGS...] | -m MODULE [ARGS...] | -- COMMAND [ARGS...]",
        description=DEV_DESCRIPTION if dev else RUN_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=True,
    )
    for option in OPTIONS:
        default = option.default
        if isinstance(default, (RestartPolicy, LogFormat)):
            default = default.value
        elif isinstance(default, signal.Signals):
            default = default.name
        shown = (
            f" (default: {default}; env {_env_name(option)})"
            if default not in (None, (), False)
            else f" (env {_env_name(option)})"
        )
        if option.convert is None:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                action="store_true",
                default=argparse.SUPPRESS,
                help=option.help + shown,
            )
        elif option.dest in LIST_OPTIONS:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                action="append",
                metavar=option.metavar,
                default=argparse.SUPPRESS,
                help=option.help + shown,
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                metavar=option.metavar,
                default=argparse.SUPPRESS,
                help=option.help + shown,
            )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"options file (default: ./{CONFIG_FILE} if present)",
    )
    return parser


def split_target(argv: Sequence[str]) -> tuple[list[str], Target | None]:
    """Our options come first; the target starts at the first non-option, `-m` or `--`.

    What follows a script or module belongs to the agent, but an agent-run option there is
    almost always a mistake (gunicorn and uvicorn users write `app.py --workers 2`), so it
    is refused with a hint; the agent's own options of the same name go after a `--`, which
    is not passed on. After `-- COMMAND` everything is the command's.
    """
    options: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            rest = list(argv[index + 1 :])
            if not rest:
                raise UsageError("`--` must be followed by a command to run")
            return options, Target(TargetKind.COMMAND, rest[0], tuple(rest[1:]))
        if token == "-m":
            if index + 1 >= len(argv):
                raise UsageError("-m needs a module name (agent-run -m package.module)")
            module = argv[index + 1]
            args = _agent_args(argv[index + 2 :], f"-m {module}")
            return options, Target(TargetKind.MODULE, module, args)
        if token.startswith("-") and token != "-":
            options.append(token)
            if token in VALUE_FLAGS and index + 1 < len(argv):
                options.append(argv[index + 1])
                index += 1
            index += 1
            continue
        kind = TargetKind.SCRIPT if token.endswith(".py") else TargetKind.COMMAND
        return options, Target(kind, token, _agent_args(argv[index + 1 :], token))
    return options, None


def _agent_args(args: Sequence[str], target: str) -> tuple[str, ...]:
    """The agent's arguments: refuses agent-run options before a `--` (see split_target)."""
    for index, token in enumerate(args):
        if token == "--":
            return (*args[:index], *args[index + 1 :])
        flag = token.partition("=")[0]
        if flag in VALUE_FLAGS or flag in SWITCHES:
            given = token
            if flag == token and flag in VALUE_FLAGS and index + 1 < len(args):
                given = f"{token} {args[index + 1]}"
            raise UsageError(
                f"{flag} after {target} would go to the agent, not to agent-run: put "
                f"agent-run's options before the target (agent-run {given} {target}); if "
                f"{target} takes {flag} itself, pass it after `--` "
                f"(agent-run {target} -- {given})"
            )
    return tuple(args)


def _load_toml(path: str, explicit: bool) -> dict[str, Any]:
    if not os.path.isfile(path):
        if explicit:
            raise InvalidInput(f"config file {path} does not exist")
        return {}
    import tomllib

    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"{path} is not valid TOML: {error}") from None
    if "secrets" in data and "secret_set" not in data:
        data["secret_set"] = data.pop("secrets")
    known = {o.dest for o in OPTIONS} | {"mask", "watch", "env"}
    for key in sorted(set(data) - known):
        _warn(f"{path}: unknown key {key!r} ignored", key, known, repr)
    return data


def _warn(message: str, word: str, known: Iterable[str], show: Callable[[str], str]) -> None:
    """One warning line on stderr, with the closest known spelling when there is one."""
    import difflib

    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {show(close[0])}?)" if close else ""
    sys.stderr.write(f"agent-run: warning: {message}{hint}\n")


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """An AGENT_RUN_* variable that nothing reads is a typo until proven otherwise."""
    known = {_env_name(option) for option in OPTIONS} | OTHER_VARIABLES
    for name in sorted(environ):
        if name.startswith("AGENT_RUN_") and name not in known:
            _warn(f"unknown variable {name} ignored", name, known, str)


def _chosen(option: Option, given: dict[str, Any], toml: dict[str, Any]) -> bool:
    """True when the user set this option: flag, variable or agent-run.toml."""
    return option.dest in given or bool(os.environ.get(_env_name(option))) or option.dest in toml


def env_table(toml: dict[str, Any], path: str) -> tuple[tuple[str, str], ...]:
    """The `[env]` table of agent-run.toml: NAME = "value" (numbers are written as text)."""
    table = toml.get("env", {})
    if not isinstance(table, dict):
        raise InvalidInput(f'{path}: env must be a table ([env] NAME = "value")')
    entries = []
    for name, value in table.items():
        if not name or "=" in name or "\x00" in name:
            raise InvalidInput(f"{path}: [env] {name!r} is not a variable name")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInput(f"{path}: [env] {name} must be a string, a number or a boolean")
        entries.append((name, value))
    return tuple(entries)


def parse_render(spec: str) -> tuple[str, str]:
    """`--render TEMPLATE:DEST` -> (TEMPLATE, DEST); DEST is a plain file name."""
    from launcher.process.private_files import file_name_problem

    template, sep, dest = spec.rpartition(":")
    if not sep or not template:
        raise UsageError(f"--render {spec}: write TEMPLATE:DEST (e.g. config.tmpl:config.json)")
    problem = file_name_problem(dest)
    if problem:
        raise UsageError(f"--render {spec}: {problem}")
    return template, dest


def resolve(
    given: dict[str, Any],
    environ: dict[str, str] | os._Environ[str],
    toml: dict[str, Any],
    path: str,
) -> dict[str, Any]:
    """Each option's value: flag, else AGENT_RUN_* variable, else agent-run.toml, else default."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        source = None
        if option.dest in given:
            raw, source = given[option.dest], option.flag
        elif environ.get(_env_name(option)) and option.dest != "store":
            raw, source = environ[_env_name(option)], _env_name(option)
            if option.dest in LIST_OPTIONS:
                separator = os.pathsep if option.dest == "env_files" else ","
                raw = [p for p in raw.split(separator) if p]
        elif option.dest in toml:
            raw, source = toml[option.dest], f"{path}: {option.dest}"
        else:
            values[option.dest] = option.default
            continue
        try:
            if option.convert is None:
                values[option.dest] = raw if isinstance(raw, bool) else _bool(str(raw))
            elif option.dest in LIST_OPTIONS:
                items = raw if isinstance(raw, list) else [raw]
                values[option.dest] = tuple(str(p) for p in items)
            else:
                values[option.dest] = option.convert(str(raw))
        except (ValueError, TypeError):
            raise UsageError(
                f"{source}: invalid value {raw!r} ({option.help.split(';')[0]})"
            ) from None
    if "store" in given:
        values["store"] = str(given["store"])
    return values


def parse_options(tokens: Sequence[str], prog: str) -> dict[str, Any]:
    """The given options, by destination; argparse only for --help and for errors.

    argparse costs ~10 ms to import and build (it also pulls in shutil), and this is the
    launch critical path; `split_target` has already isolated the option tokens, so reading
    `--flag VALUE` / `--flag=VALUE` / switches from OPTIONS is all that is left.
    """
    by_flag = {option.flag: option for option in OPTIONS}
    given: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        flag, has_value, attached = token.partition("=")
        option = by_flag.get(flag)
        if flag == "--config":
            option = Option("--config", "config", str, None, "")
        if option is None or (option.convert is None and has_value):
            build_parser(prog).parse_args(list(tokens))  # prints help, or the usage error
            raise UsageError(f"unrecognized option {token}")
        if option.convert is None:
            given[option.dest] = True
            index += 1
            continue
        if has_value:
            value = attached
            index += 1
        elif index + 1 < len(tokens):
            value = tokens[index + 1]
            index += 2
        else:
            raise UsageError(f"{flag} needs a value ({option.metavar or 'VALUE'})")
        if option.dest in LIST_OPTIONS:
            given.setdefault(option.dest, []).append(value)
        else:
            given[option.dest] = value
    return given


def build_config(argv: Sequence[str], dev: bool) -> RunConfig:
    prog = "agent-run dev" if dev else "agent-run"
    options, target = split_target(argv)
    given = parse_options(options, prog)
    if target is None:
        build_parser(prog).print_usage(sys.stderr)
        raise UsageError("no agent to run: give bot.py, -m MODULE or -- COMMAND")
    config_path = given.pop("config", None)
    path = config_path or os.path.join(os.getcwd(), CONFIG_FILE)
    toml = _load_toml(path, explicit=config_path is not None)
    warn_unknown_variables(os.environ)
    values = resolve(given, os.environ, toml, path)
    from launcher.process.readiness import parse_ready

    ready = parse_ready(values["ready"])
    if "{port}" in ready.target and values["port_base"] is None:
        raise UsageError("--ready uses {port}, which needs --port-base")
    if target.kind is TargetKind.SCRIPT and not os.path.isfile(target.value):
        raise InvalidInput(f"agent script {target.value} does not exist")
    if dev:
        unset = [o for o in OPTIONS if not _chosen(o, given, toml)]
        dev_defaults = {
            "log_format": LogFormat.CONSOLE,
            "drain_timeout": 5.0,  # a code change should not wait an hour
            "max_restarts": None,  # a crash waits for the fix (which restarts the workers)
        }
        for option in unset:
            if option.dest in dev_defaults:
                values[option.dest] = dev_defaults[option.dest]
    destinations = [parse_render(spec)[1] for spec in values["render"]]
    repeated = sorted({d for d in destinations if destinations.count(d) > 1})
    if repeated:
        raise UsageError(f"--render: {', '.join(repeated)} is the DEST of more than one template")
    _check_limits(values)
    no_mask = values.pop("no_mask")
    no_watch = values.pop("no_watch")
    return RunConfig(
        target=target,
        mask=not no_mask,
        watch=not no_watch,
        dev=dev,
        env=env_table(toml, path),
        config_file=path if toml else None,
        **values,
    )


def _check_limits(values: dict[str, Any]) -> None:
    """Names and counts that must not reach the store, a socket path or fork (issue #15)."""
    from launcher import limits

    if values["secret_set"] is not None:
        from launcher.store.names import check_set_name

        check_set_name(values["secret_set"])
    if values["name"] is not None:
        from launcher.ops.runtime_dir import check_name

        check_name(values["name"])
    figures = limits.machine()
    limits.check_workers("--workers", values["workers"], figures)
    limits.check_workers("--idle", values["idle"], figures)
    port_base = values["port_base"]
    if port_base is not None and port_base + values["workers"] - 1 > 65535:
        raise UsageError(
            f"--port-base {port_base} with --workers {values['workers']} goes past port 65535"
        )


def _check_env_file(path: str, values: dict[str, str]) -> None:
    """`--env-file` values obey the value rules of `secrets set` (NUL, size): exit 65."""
    from launcher.store.names import check_value

    for key, value in values.items():
        if "\x00" in key or "=" in key:
            raise InvalidInput(f"{path}: a variable name cannot contain NUL or '='")
        try:
            check_value(key, value)
        except InvalidInput as error:
            raise InvalidInput(f"{path}: {error.message}") from None


def build_plan(config: RunConfig) -> Any:
    from launcher.plan import Plan
    from launcher.privilege import key_environ, worker_identity
    from launcher.store.sets import Store
    from launcher.store.source import Extras, SecretsSource

    store = Store.open(config.store)

    def env_files(secrets: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """The toml `env` table, then each env file, references resolved: (values, the
        composed values that hold a secret, to be masked)."""
        if not config.env and not config.env_files:
            return {}, []
        from launcher.references import resolve_all

        values, composed = resolve_all(
            dict(config.env),
            dict(secrets),
            origin=f"{config.config_file or CONFIG_FILE} [env]",
            set_name=config.secret_set,
        )
        for path in config.env_files:
            from pathlib import Path

            from launcher.store.parse import read_dotenv

            resolved, more = resolve_all(
                read_dotenv(Path(path)).values,
                dict(secrets),
                origin=f"--env-file {path}",
                set_name=config.secret_set,
            )
            _check_env_file(path, resolved)
            values.update(resolved)
            composed += more
        return values, composed

    def rendered(secrets: Mapping[str, str]) -> dict[str, bytes]:
        from launcher.references import render

        files: dict[str, bytes] = {}
        for spec in config.render:
            template, dest = parse_render(spec)
            files[dest] = render(
                f"--render {template}",
                _read_template(template),
                dict(secrets),
                set_name=config.secret_set,
            ).encode("utf-8")
        return files

    def extras(secrets: Mapping[str, str]) -> Extras:
        """What this configuration builds on each snapshot's secrets (references, files)."""
        plain, composed = env_files(secrets)
        return Extras(plain, composed, rendered(secrets) if config.render else {})

    if config.secret_set and not store.exists(config.secret_set):
        raise store._not_found(config.secret_set)
    run_dir = store.runtime_dir()
    name = config.name or config.secret_set or "agent-run"
    _check_runtime_dir(run_dir, name, named=config.name is not None)
    source = SecretsSource(
        store,
        config.secret_set,
        key_file=config.key_file,
        extras=extras,
        python_target=config.target.is_python or config.target.interpreted() is not None,
        # The key the launcher took out of its environment (launcher/privilege.py) is still
        # where the keyring looks; compose() keeps it from every worker (PRIVATE_VARIABLES).
        # Under --user the workers' HOME, USER and LOGNAME are that user's.
        environ={**key_environ(), **worker_identity()},
        # Every snapshot, the first and each reload's: an environment execve would refuse
        # is bad input at launch (65) and a skipped rollout at a reload.
        check=lambda layers: _check_exec_size(config, layers),
    )
    initial = source.snapshot()
    from launcher.process import private_files

    # Trees left by launchers that were killed; and ours made now, so an unusable base
    # directory is reported here rather than at the first spawn.
    private_files.sweep_stale()
    if config.render or initial.layers.files:
        private_files.for_this_launcher().prepare()
    watch_dir = source.watch_dir
    target_dir = None
    if config.dev:
        from pathlib import Path

        target_dir = (
            Path(config.target.value).resolve().parent
            if config.target.kind is TargetKind.SCRIPT
            else Path.cwd()
        )
    return Plan(
        config=config,
        source=source,
        initial=initial,
        name=name,
        secret_set=config.secret_set,
        watch_dir=watch_dir,
        run_dir=run_dir,
        code_dir=target_dir,
    )


def _read_template(path: str) -> str:
    from launcher.cli.text_input import read_text
    from launcher.process.private_files import MAX_FILE_BYTES

    return read_text(path, f"--render: template {path}", MAX_FILE_BYTES)


def _check_runtime_dir(run_dir: str, name: str, named: bool) -> None:
    """The control socket can be made safely, checked before any worker exists (issue #15).

    Refused: a directory another user owns or can write (77), and a `--name` the socket
    path cannot hold (78). Not refused, as before: a directory that cannot be created (a
    read-only store mount), and a default name in a directory too deep for AF_UNIX; the
    agent runs, and the launcher logs why it has no control socket (`control_unavailable`).
    """
    from launcher.ops import runtime_dir

    if named:
        runtime_dir.socket_file(run_dir, name)
    with contextlib.suppress(OSError):
        runtime_dir.make_private(run_dir)


def _check_exec_size(config: RunConfig, layers: Any) -> None:
    """The largest worker environment fits what `execve` accepts (else exit 65 at launch;
    at a reload the rollout is skipped and the old workers keep serving)."""
    from launcher import limits
    from launcher.environment import compose

    last = max(config.workers, 1) - 1
    env = compose(
        layers,
        worker=last,
        port=None if config.port_base is None else config.port_base + last,
        notify_socket="/" * 107 if config.ready == "notify" else None,  # longest AF_UNIX path
    )
    limits.check_exec_size(config.target.argv(), env, limits.machine())


def main(argv: list[str]) -> int:
    from launcher.privilege import protect_launcher

    protect_launcher()  # before anything is spawned or read (launcher/privilege.py)
    dev = bool(argv) and argv[0] == "dev"
    config = build_config(argv[1:] if dev else argv, dev)
    if config.user is not None:
        from launcher.privilege import parse_user
        from launcher.process.worker import set_worker_user

        set_worker_user(parse_user(config.user))
    entry = None
    if (
        config.target.is_python
        or config.entrypoint
        or config.mode == "session"
        or config.target.interpreted() is not None
    ):
        from launcher.sessions.entrypoint import find_entrypoint

        entry = find_entrypoint(config.target, config.entrypoint, config.mode)
    plan = build_plan(config)
    if entry is not None:
        from launcher.sessions.server import serve

        if config.mode == "auto" and config.entrypoint is None:
            # The switch changes what the target is, so it is said, with the way out.
            sys.stderr.write(
                f"agent-run: session mode: {entry.target} defines async def "
                f"bot(runner_args); serving sessions on {config.listen} "
                "(--mode worker runs it as a plain script)\n"
            )
        return serve(plan, entry)
    from launcher.supervisor import run

    return run(plan)
