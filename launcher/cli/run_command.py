"""`agent-run [OPTIONS] TARGET` and `agent-run dev TARGET`: resolve options, build the plan.

Options come from flags, then `AGENT_RUN_*` environment variables, then `agent-run.toml`
(keys as in Pipecat's pcc-deploy.toml: `secret_set = "my-secrets"`), then the defaults. This
module only resolves and validates; the supervisor does the work. It stays light: the launch
critical path runs through it: paths stay `str` here (no pathlib), and `typing` is only
imported by the type checker.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Hashable, Sequence

from launcher.config import LogFormat, RestartPolicy, RunConfig, Target, TargetKind
from launcher.errors import InvalidInput, UsageError
from launcher.record import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (launch path)
if TYPE_CHECKING:
    from typing import Any

CONFIG_FILE = "agent-run.toml"


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


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
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
        "master key file (see `agent-run secrets --help` for the search order)",
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
    Option("--workers", "workers", _positive_int, 1, "number of worker processes", "N"),
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
        _positive_int,
        None,
        "give up on a slot after N restarts within --restart-window (default: never give up)",
        "N",
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
        3600.0,
        "seconds a stopped worker may drain before its process group is SIGKILLed",
        "S",
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
        "give worker i AGENT_RUN_PORT = PORT + i",
        "PORT",
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
        "127.0.0.1:7860",
        "session mode: serve the session API (POST /sessions ...) on HOST:PORT",
        "HOST:PORT",
    ),
    Option(
        "--idle",
        "idle",
        _non_negative_int,
        1,
        "session mode: processes kept pre-warmed (agent imported) waiting for a session",
        "N",
    ),
    Option(
        "--max-sessions",
        "max_sessions",
        _positive_int,
        None,
        "session mode: sessions at once; more are answered 429 with Retry-After",
        "N",
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


def _env_name(option: Option) -> str:
    return option.env or "AGENT_RUN_" + option.dest.upper()


def build_parser(prog: str = "agent-run") -> Any:
    """The argparse parser: used for --help and error messages only (see parse_options)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [OPTIONS] bot.py [ARGS...] | -m MODULE [ARGS...] | -- COMMAND [ARGS...]",
        description=(
            "Run an agent with its secret set and the platform credentials in its environment, "
            "as a supervised pool of workers that rolls onto new secret versions without "
            "dropping work. Each option can also be set as an AGENT_RUN_* variable or in "
            "agent-run.toml; flags win, then variables, then the file."
        ),
        epilog=(
            "other commands: agent-run dev TARGET (development: console logs, restart on code "
            "change), agent-run secrets|key|platform ... (the store), agent-run status|reload "
            "(a running launcher). Each has --help."
        ),
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
        elif option.dest == "env_files":
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
    """Our options come first; the target starts at the first non-option, `-m` or `--`."""
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
            return options, Target(TargetKind.MODULE, argv[index + 1], tuple(argv[index + 2 :]))
        if token.startswith("-") and token != "-":
            options.append(token)
            if token in VALUE_FLAGS and index + 1 < len(argv):
                options.append(argv[index + 1])
                index += 1
            index += 1
            continue
        kind = TargetKind.SCRIPT if token.endswith(".py") else TargetKind.COMMAND
        return options, Target(kind, token, tuple(argv[index + 1 :]))
    return options, None


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
    known = {o.dest for o in OPTIONS} | {"mask", "watch"}
    for key in sorted(set(data) - known):
        sys.stderr.write(f"agent-run: warning: {path}: unknown key {key!r} ignored\n")
    return data


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
            if option.dest == "env_files":
                raw = [p for p in raw.split(os.pathsep) if p]
        elif option.dest in toml:
            raw, source = toml[option.dest], f"{path}: {option.dest}"
        else:
            values[option.dest] = option.default
            continue
        try:
            if option.convert is None:
                values[option.dest] = raw if isinstance(raw, bool) else _bool(str(raw))
            elif option.dest == "env_files":
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
        if option.dest == "env_files":
            given.setdefault("env_files", []).append(value)
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
    values = resolve(given, os.environ, toml, path)
    from launcher.process.readiness import parse_ready

    ready = parse_ready(values["ready"])
    if "{port}" in ready.target and values["port_base"] is None:
        raise UsageError("--ready uses {port}, which needs --port-base")
    if target.kind is TargetKind.SCRIPT and not os.path.isfile(target.value):
        raise InvalidInput(f"agent script {target.value} does not exist")
    if dev:
        if "log_format" not in given and not os.environ.get("AGENT_RUN_LOG_FORMAT"):
            values["log_format"] = LogFormat.CONSOLE
        if (
            "drain_timeout" not in given
            and not os.environ.get("AGENT_RUN_DRAIN_TIMEOUT")
            and "drain_timeout" not in toml
        ):
            values["drain_timeout"] = 5.0  # a code change should not wait an hour
    no_mask = values.pop("no_mask")
    no_watch = values.pop("no_watch")
    return RunConfig(target=target, mask=not no_mask, watch=not no_watch, dev=dev, **values)


def build_plan(config: RunConfig) -> Any:
    from launcher.environment import EnvironmentLayers
    from launcher.store.names import PLATFORM_CREDENTIALS
    from launcher.store.sets import PLATFORM, Store
    from launcher.supervisor import Plan

    store = Store.open(config.store)
    key_holder: list[Any] = []

    def key() -> Any:
        if not key_holder:
            from launcher.store.keys import load_master_key

            key_holder.append(load_master_key(store.directory, config.key_file))
        return key_holder[0]

    def env_files() -> dict[str, str]:
        values: dict[str, str] = {}
        for path in config.env_files:
            from pathlib import Path

            from launcher.store.parse import read_dotenv

            values.update(read_dotenv(Path(path)).values)
        return values

    def read() -> tuple[EnvironmentLayers, list[str]]:
        secrets: dict[str, str] = {}
        version = None
        if config.secret_set:
            secret_set = store.read(config.secret_set, key())
            secrets, version = secret_set.plain(), secret_set.version
        platform = store.read_platform(key()) if store.has_platform() else {}
        layers = EnvironmentLayers(
            inherited=dict(os.environ),
            env_files=env_files(),
            secrets=secrets,
            platform=platform,
            secrets_version=version,
            python_target=config.target.is_python,
        )
        masked = list(secrets.values())
        for name in PLATFORM_CREDENTIALS[1:]:  # the URL is not a secret; key and secret are
            value = platform.get(name) or os.environ.get(name)
            if value:
                masked.append(value)
        return layers, masked

    if config.secret_set and not store.exists(config.secret_set):
        raise store._not_found(config.secret_set)
    layers, masked = read()

    def fingerprint() -> Hashable:
        from launcher.errors import LauncherError

        try:
            return (
                store.current_version(config.secret_set) if config.secret_set else None,
                store.current_version(PLATFORM),
            )
        except LauncherError:
            return "unreadable"

    watched = bool(config.secret_set) or store.has_platform()
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
        layers=layers,
        masked_values=masked,
        reload=read,
        name=config.name or config.secret_set or "agent-run",
        secret_set=config.secret_set,
        watch_dir=store.directory if watched else None,
        fingerprint=fingerprint if watched else None,
        initial_fingerprint=fingerprint() if watched else None,
        run_dir=store.runtime_dir(),
        code_dir=target_dir,
    )


def main(argv: list[str]) -> int:
    dev = bool(argv) and argv[0] == "dev"
    config = build_config(argv[1:] if dev else argv, dev)
    entry = None
    if config.target.is_python or config.entrypoint:
        from launcher.sessions.entrypoint import find_entrypoint

        entry = find_entrypoint(config.target, config.entrypoint)
    plan = build_plan(config)
    if entry is not None:
        from launcher.sessions.service import serve

        return serve(plan, entry)
    from launcher.supervisor import run

    return run(plan)
