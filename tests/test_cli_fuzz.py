"""Property-based fuzzing of the whole CLI against SPEC §7's promise (issue #15).

Command lines are built from the real option tables (the argparse parsers of the store and
control commands, `run_command.OPTIONS` for launches) with mutated values, and run against a
store whose files hypothesis damages. The oracle, for every command line:
- the exit code is one of SPEC §7's (0, 1, 2, 65, 77, 78);
- no traceback: no exception escapes `main`, no `Traceback` on stderr, and a failure says
  `error:` on exactly one line;
- no partial state: a failed command leaves every file of the store as it was (lock files
  and the control-socket directory aside), and leaves no temporary file behind;
- it finishes within a bound: a blocking open (the FIFO of issue #15) is a failure, not a
  stuck suite.

Store and control commands run in-process through `launcher.cli.main` with captured stdio
(fast enough for hundreds of examples); the bound is a watchdog signal that interrupts a
blocked system call. Launches run as real subprocesses with a timeout (`--restart never`,
target `true`), since they fork, exec and install signal handlers.

The in-suite budget is small. A larger run: `AGENT_RUN_FUZZ_SCALE=20 pytest
tests/test_cli_fuzz.py` (AGENT_RUN_FUZZ_REPORT=FILE appends one JSON line per command line).

Not fuzzed, on purpose: a FIFO named by `--env-file`, `--secrets-file` or `--config`. Those
name the user's own input, and reading one waits for its writer, as `cat` does (it is how
`--secrets-file <(vault read ...)` works); only files inside the store must never block.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.cli import control_commands, store_commands
from launcher.cli.run_command import OPTIONS
from launcher.store.keys import MasterKey
from launcher.store.sets import PLATFORM, Store

EXIT_CODES = {0, 1, 2, 65, 77, 78}
SCALE = float(os.environ.get("AGENT_RUN_FUZZ_SCALE", "1"))
BOUND = 20.0  # seconds for one in-process command; real work takes milliseconds
LAUNCH_BOUND = 60.0  # seconds for one launch of `true`, on a loaded machine
KEY = base64.b64encode(b"k" * 32).decode()

# --- the store under test ------------------------------------------------------------------


def _template(root: Path) -> None:
    """Two sets (one with history) and platform credentials, written by the real store."""
    store = Store(root)
    key = MasterKey(base64.b64decode(KEY), "test")
    store.update("s", key, lambda v: {"K": "1", "PEM": "line1\nline2"})
    store.update("s", key, lambda v: {**v, "K": "2"})
    store.update("t", key, lambda v: {"A": "x"})
    store.update(PLATFORM, key, lambda v: {"LIVEKIT_URL": "wss://example"})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ["format", "set", "version", "status", "updated", "key_id", "count", "data_key"]


@st.composite
def damages(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """A few things done to the store: which file, what, and with what."""
    kinds = st.sampled_from(
        [
            "field",
            "drop-field",
            "line",
            "truncate",
            "flip",
            "append",
            "directory",
            "fifo",
            "symlink-loop",
            "device",
            "empty",
            "deep-json",
        ]
    )
    targets = st.sampled_from(["s.set", "t.set", "_platform.set", "x.set", ".s.lock", "run"])
    return draw(
        st.lists(
            st.tuples(
                targets, kinds, st.tuples(st.sampled_from(FIELDS), JSON, st.integers(0, 4096))
            ),
            max_size=3,
        )
    )


def _damage(root: Path, name: str, kind: str, detail: Any) -> None:
    path = root / name
    field, value, offset = detail
    data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    lines = data.split(b"\n")
    if kind in ("directory", "fifo", "symlink-loop", "device", "empty"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        if kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink-loop":
            path.symlink_to(path.name)
        elif kind == "device":
            path.symlink_to("/dev/zero")
        else:
            path.write_bytes(b"")
        return
    if not data:
        return
    if kind in ("field", "drop-field"):
        with contextlib.suppress(ValueError, RecursionError):
            header = json.loads(lines[0])
            if isinstance(header, dict):
                if kind == "field":
                    header[field] = value
                else:
                    header.pop(field, None)
                lines[0] = json.dumps(header).encode()
        data = b"\n".join(lines)
    elif kind == "line":
        lines[offset % len(lines)] = json.dumps(value).encode()
        data = b"\n".join(lines)
    elif kind == "truncate":
        data = data[: offset % len(data)]
    elif kind == "flip":
        index = offset % len(data)
        data = data[:index] + bytes([data[index] ^ 0x20]) + data[index + 1 :]
    elif kind == "append":
        data += json.dumps(value).encode()
    elif kind == "deep-json":
        data = b"[" * 50_000 + b"\n" + data
    path.write_bytes(data)


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry of the store but lock files and the socket directory, with its content."""
    seen: dict[str, str] = {}
    if not root.is_dir():
        return seen
    for entry in sorted(os.listdir(root)):
        if entry == "run" or entry.endswith(".lock"):
            continue
        path = root / entry
        if path.is_symlink():
            seen[entry] = "-> " + os.readlink(path)
        elif path.is_file():
            seen[entry] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            seen[entry] = "special"
    return seen


# --- command lines from the real option tables ---------------------------------------------

PATHS = ["{store}", "{dir}", "{fifo}", "{loop}", "{missing}", "{file}", "{long}", "/dev/null"]
INPUT_PATHS = ["{dir}", "{loop}", "{missing}", "{file}", "{long}", "{nul_env}", "{big_env}"]
SET_NAMES = ["s", "t", "x", "new", "_platform", "..", "a/b", "-s", "x" * 65, "x" * 300, ""]
KEYS = ["K", "PEM", "A", "NEW", "k-1", "1K", "AGENT_RUN_X", "LIVEKIT_API_KEY", "K" * 70, ""]
WORDS = ["", "-", "--", "=", "==", "-1", "0", "1", "99999999999999999999", "nan", "1e309"]


def _text() -> st.SearchStrategy[str]:
    # What a real argv can hold: any text without NUL (and no lone surrogates).
    return st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
    )


def _value(dest: str, metavar: str | None) -> st.SearchStrategy[str]:
    if dest in ("store", "key_file", "new_key_file"):
        specific = st.sampled_from(PATHS)
    elif dest == "secrets_file":
        specific = st.sampled_from(INPUT_PATHS)
    elif dest in ("set", "name"):
        specific = st.sampled_from(SET_NAMES)
    elif metavar == "KEY=VALUE" or dest == "pairs":
        specific = st.builds(
            lambda k, sep, v: f"{k}{sep}{v}",
            st.sampled_from(KEYS),
            st.sampled_from(["=", "==", ""]),
            _text(),
        )
    elif metavar == "KEY" or dest == "keys":
        specific = st.sampled_from(KEYS)
    elif metavar == "JSON":
        specific = st.sampled_from(["{}", "[", '{"a": 1}', "[" * 5000 + "]" * 5000, "[" * 50_000])
    else:
        specific = st.sampled_from(WORDS)
    return st.one_of(specific, specific, _text(), st.sampled_from(WORDS))


def _leaves(
    parser: argparse.ArgumentParser, prefix: list[str]
) -> Iterator[tuple[list[str], list[Any]]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        return
    for name, sub in subparsers[0].choices.items():
        yield from _leaves(sub, [*prefix, name])


COMMANDS = list(_leaves(store_commands.build_parser(), [])) + list(
    _leaves(control_commands._parser(), [])
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A store or control command line: real subcommands and options, mutated values."""
    prefix, actions = draw(st.sampled_from(COMMANDS))
    argv = list(prefix)
    for action in actions:
        value = _value(action.dest, action.metavar)
        if action.choices:
            value = st.one_of(st.sampled_from(sorted(action.choices)), value)
        if not action.option_strings:
            count = {None: 1, "?": draw(st.integers(0, 1)), "*": draw(st.integers(0, 3))}.get(
                action.nargs, draw(st.integers(1, 3))
            )
            if draw(st.integers(0, 9)) == 0:
                count = max(0, count - 1)  # a missing positional: a usage error
            argv += [draw(value) for _ in range(count)]
        elif draw(st.booleans()):
            flag = draw(st.sampled_from(action.option_strings))
            if action.nargs == 0:
                argv.append(flag)
            else:
                values = [
                    draw(value)
                    for _ in range(1 if action.nargs is None else draw(st.integers(1, 2)))
                ]
                argv += [flag, *values]
    if draw(st.integers(0, 9)) == 0:
        # Never first: a line not starting with a store or control command is a launch, which
        # must not run in this process (it takes the master key out of the process for good).
        argv.insert(
            draw(st.integers(1, len(argv))),
            draw(st.sampled_from(["--bogus", "-x", "--", "--help"])),
        )
    return argv


LAUNCH_VALUES: dict[str, list[str]] = {
    "health": ["127.0.0.1:0", "nonsense", ":", "127.0.0.1:99999", "[::1]:0"],
    "listen": ["127.0.0.1:0", "nonsense", ":", "127.0.0.1:99999"],
    "ready": ["started", "notify", "tcp:1", "http://127.0.0.1:1/", "log:x", "log:[", "tcp:x"],
    "entrypoint": ["", ":", "bot", "x.py:bot", "no_such_module_x:bot"],
    "env_files": INPUT_PATHS,
    "store": PATHS,
    "key_file": PATHS,
    "secret_set": SET_NAMES,
    "name": SET_NAMES,
    "workers": ["1", "2", "0", "-1", "65", "100000", "x"],
    "idle": ["0", "1", "100000", "x"],
}
# Values that could reach the network or another program are only ever the listed ones.
FIXED = {"health", "listen", "ready", "entrypoint"}


@st.composite
def launch_lines(draw: st.DrawFn) -> list[str]:
    """A launch: options from `OPTIONS` with mutated values, then `--restart never -- true`."""
    argv: list[str] = []
    for option in draw(st.lists(st.sampled_from(OPTIONS), max_size=4, unique_by=lambda o: o.flag)):
        if option.convert is None:
            argv.append(option.flag)
            continue
        listed = st.sampled_from(LAUNCH_VALUES.get(option.dest, WORDS))
        value = listed if option.dest in FIXED else st.one_of(listed, _text())
        argv += [option.flag, draw(value)]
    return [*argv, "--restart", "never", "--", "true"]


# --- running and judging -------------------------------------------------------------------


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Interrupt the main thread after `seconds` (SIGUSR2; pytest-timeout owns SIGALRM)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise _Hang()

    previous = signal.signal(signal.SIGUSR2, interrupt)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGUSR2))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)


def _expand(argv: list[str], paths: dict[str, str]) -> list[str]:
    return [paths.get(token, token) for token in argv]


@contextlib.contextmanager
def _world(
    tmp: Path, changes: list[tuple[str, str, Any]], template: Path
) -> Iterator[dict[str, str]]:
    """A fresh copy of the template store, damaged, and the special paths around it."""
    work = Path(tempfile.mkdtemp(dir=tmp))
    try:
        store = work / "store"
        shutil.copytree(template, store, symlinks=True)
        for name, kind, detail in changes:
            _damage(store, name, kind, detail)
        (work / "dir").mkdir()
        os.mkfifo(work / "fifo")
        (work / "loop").symlink_to("loop")
        (work / "file").write_text("K=1\n")
        (work / "nul.env").write_bytes(b"A=x\x00y\n")
        (work / "big.env").write_text("A=" + "x" * 20_000 + "\n")
        (work / "cwd").mkdir()
        yield {
            "{store}": str(store),
            "{dir}": str(work / "dir"),
            "{fifo}": str(work / "fifo"),
            "{loop}": str(work / "loop"),
            "{missing}": str(work / "missing" / "x"),
            "{file}": str(work / "file"),
            "{long}": str(work / ("l" * 300)),
            "{nul_env}": str(work / "nul.env"),
            "{big_env}": str(work / "big.env"),
            "cwd": str(work / "cwd"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _environment(paths: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_RUN_", "LIVEKIT_", "PYTEST_", "NOTIFY_SOCKET"))
    }
    env.update(AGENT_RUN_HOME=paths["{store}"], AGENT_RUN_MASTER_KEY=KEY, K="from-env")
    return env


def _run_in_process(argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, str, str]:
    """`launcher.cli.main(argv)` with this environment, cwd and captured stdio."""
    from launcher.cli import CONTROL_COMMANDS, STORE_COMMANDS, main

    assert argv and argv[0] in STORE_COMMANDS | CONTROL_COMMANDS, argv  # never a launch here
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.stdin = io.TextIOWrapper(io.BytesIO(b"from-stdin\n"))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _watchdog(BOUND):
            try:
                code = main(argv)
            except SystemExit as done:  # argparse: --help, usage errors
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except _Hang:
                pytest.fail(f"did not finish within {BOUND}s: agent-run {argv!r}")
            except BaseException:
                pytest.fail(f"exception from agent-run {argv!r}:\n{traceback.format_exc()}")
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.stdin = saved_stdin
    return code, out.getvalue(), err.getvalue()


def _report(kind: str, argv: list[str], changes: list[Any], code: int) -> None:
    target = os.environ.get("AGENT_RUN_FUZZ_REPORT")
    if target:
        with open(target, "a") as stream:
            stream.write(
                json.dumps({"kind": kind, "code": code, "damaged": bool(changes), "argv": argv})
                + "\n"
            )


def _judge(
    argv: list[str], code: int, stderr: str, before: dict[str, str], store: Path, launch: bool
) -> None:
    assert code in EXIT_CODES, f"exit {code} from agent-run {argv!r}: {stderr}"
    assert "Traceback" not in stderr, f"agent-run {argv!r}:\n{stderr}"
    if code not in (0, 2) and not launch:
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, f"agent-run {argv!r}: {stderr}"
    if code != 0 or launch:  # a launcher never writes the store
        assert _snapshot(store) == before, f"agent-run {argv!r} (exit {code}) changed the store"
    leftovers = [e for e in os.listdir(store) if e.endswith(".tmp")] if store.is_dir() else []
    assert not leftovers, f"agent-run {argv!r} left {leftovers}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undamaged store every example starts from."""
    root = tmp_path_factory.mktemp("template") / "store"
    _template(root)
    return root


def _budget(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


@_budget(150)
@given(argv=command_lines(), changes=damages())
def test_store_and_control_commands(
    tmp_path: Path, template: Path, argv: list[str], changes: list[Any]
) -> None:
    """Any store or control command line, on a damaged store: a §7 code, one line, no trace."""
    with _world(tmp_path, changes, template) as paths:
        store = Path(paths["{store}"])
        before = _snapshot(store)
        full = _expand(argv, paths)
        code, _out, err = _run_in_process(full, _environment(paths), paths["cwd"])
        _report("command", full, changes, code)
        _judge(full, code, err, before, store, launch=False)


@_budget(100)
@given(
    command=st.sampled_from(
        [
            ["secrets", "list"],
            ["secrets", "list", "s"],
            ["secrets", "history", "s"],
            ["secrets", "rollback", "s"],
            ["secrets", "set", "s", "K=3"],
            ["secrets", "unset", "t", "A"],
            ["secrets", "delete", "s", "--yes"],
            ["platform", "show"],
            ["platform", "set", "livekit", "LIVEKIT_API_KEY=k"],
            ["key", "rotate", "--new-key-file", "{missing}"],
            ["status"],
        ]
    ),
    changes=damages().filter(bool),
)
def test_every_command_on_damaged_stores(
    tmp_path: Path, template: Path, command: list[str], changes: list[Any]
) -> None:
    """The everyday commands, unmutated, on stores damaged in every way hypothesis finds."""
    with _world(tmp_path, changes, template) as paths:
        store = Path(paths["{store}"])
        before = _snapshot(store)
        full = _expand(command, paths)
        code, _out, err = _run_in_process(full, _environment(paths), paths["cwd"])
        _report("damaged", full, changes, code)
        _judge(full, code, err, before, store, launch=False)


@_budget(12)
@given(argv=launch_lines(), changes=damages())
def test_launches(tmp_path: Path, template: Path, argv: list[str], changes: list[Any]) -> None:
    """A launch with mutated options ends within the bound with a §7 code (or `true`'s 0)."""
    with _world(tmp_path, changes, template) as paths:
        store = Path(paths["{store}"])
        before = _snapshot(store)
        full = _expand(argv, paths)
        env = {**_environment(paths), "AGENT_RUN_LOG_FORMAT": "json"}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "launcher", *full],
                env=env,
                cwd=paths["cwd"],
                capture_output=True,
                text=True,
                timeout=LAUNCH_BOUND,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"launch did not end within {LAUNCH_BOUND}s: agent-run {full!r}")
        _report("launch", full, changes, done.returncode)
        _judge(full, done.returncode, done.stderr, before, store, launch=True)


def test_the_oracle_catches_what_it_should(tmp_path: Path, template: Path) -> None:
    """The harness itself: a FIFO read blocks until the watchdog fires; exceptions are failures."""
    fifo = tmp_path / "blocking"
    os.mkfifo(fifo)
    with pytest.raises(_Hang), _watchdog(0.5):
        fifo.read_bytes()  # a blocking open, as the store did on fd8353d
    _check: Callable[[], None] = lambda: _judge(["x"], 127, "", {}, tmp_path, launch=False)  # noqa: E731
    with pytest.raises(AssertionError, match="exit 127"):
        _check()
