"""The template interpreter, child side: preload, freeze, fork on request (#18).

The launcher starts `python -c BOOTSTRAP /path/to/template_runtime.py LAUNCHER_PID ENTRY...`
with a secret-free environment and one end of a SOCK_SEQPACKET socketpair on the fd named by
AGENT_RUN_TEMPLATE_FD. Each ENTRY is a module to import (`MODULE`), a file of ours to load as
a module (`NAME=PATH`: the session runtime), or a file of the agent's to compile, never run
(`@PATH`). It does so, freezes the heap (`gc.freeze()`: the objects stay out of later
collections, so the garbage collector does not dirty the pages every child shares
copy-on-write), reports, and serves fork requests until the socket closes:

    template -> launcher   {"ready": ..., "env_read": [...], ...}   once, after preloading
    launcher -> template   {"fds": N} + N fds (SCM_RIGHTS): the setup channel first, then
                           stdin, stdout, stderr and the fds the process keeps
    template -> launcher   {"pid": PID}

Each request forks twice: the middle process forks the real one and exits at once, so the
real one is re-parented to the launcher (a child subreaper): the launcher reaps its exit
status and signals its group as it does a spawned worker's. The template answers only after
it has collected the middle process, so by then the pid is the launcher's child; the new
process waits on its setup channel for the launcher, which registers the pid with its reaper
before it sends anything. Only then does the process receive its environment (secrets
included), over that private channel: never through the template, argv or a file. It then
sets what `fork_exec` sets for a spawned worker (parent-death signal, process group, signal
dispositions, stdio, terminal) and what a fresh interpreter would have (`sys.argv`,
`sys.path[0]`, `__main__`, the working directory, new `sys.std*` over its own fds), and
runs the target.

Like the session runtime, this file is loaded by its path and imports only the standard
library: the agent's own modules must never be imported here. They are compiled here,
though: a process imports them from the template's code objects when their source is
unchanged (`_CompiledSources`), so a deployment without bytecode files (a read-only image,
PYTHONDONTWRITEBYTECODE, an agent user that cannot write `__pycache__`) does not parse and
compile the agent in every process: ~10 ms of CPU per process for the session runtime alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
from typing import Any, ClassVar

CHANNEL_VARIABLE = "AGENT_RUN_TEMPLATE_FD"
PING = b"ping"  # asked and answered as is: the template is serving

MODULE_NAME = "_agent_run_template_runtime"
MAX_MESSAGE = 1 << 16
PR_SET_PDEATHSIG = 1

# Run by `python -c`; argv[1] is this file. `serve` returns only in a forked process, which
# then becomes the target: its exceptions and SystemExit reach the interpreter as a fresh
# one's would.
BOOTSTRAP = f"""\
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
from importlib.util import module_from_spec, spec_from_file_location
spec = spec_from_file_location({MODULE_NAME!r}, sys.argv[1])
template = module_from_spec(spec)
sys.modules[spec.name] = template
spec.loader.exec_module(template)
del spec, module_from_spec, spec_from_file_location
template.become(template.serve(sys.argv[2:]))
"""

# Signals a spawned worker gets with their default disposition (as in worker.fork_exec);
# SIGINT, SIGPIPE and SIGXFSZ get what a fresh interpreter sets.
_DEFAULT_SIGNALS = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
    signal.SIGQUIT,
    signal.SIGALRM,
)


class _RecordingEnviron(os._Environ):  # type: ignore[type-arg]
    """os.environ that notes every name read while the modules are preloaded."""

    read: ClassVar[set[str]] = set()

    def __getitem__(self, key: str) -> str:
        type(self).read.add(key)
        return super().__getitem__(key)  # type: ignore[no-any-return]


class _CompiledSources:
    """Code objects compiled here, handed to the importer of each forked process.

    A process's import still reads the file; when its bytes are the ones compiled here, the
    code object is the same one compiling them would give (same bytes, path and flags), so
    it is used instead. Changed source compiles as usual.
    """

    code: ClassVar[dict[str, tuple[bytes, Any]]] = {}

    @classmethod
    def add(cls, path: str) -> None:
        with open(path, "rb") as source:
            data = source.read()
        cls.code[path] = (data, compile(data, path, "exec", dont_inherit=True))

    @classmethod
    def get(cls, data: bytes, path: str) -> Any:
        """The code for `data` from `path`: ours when unchanged, else compiled now."""
        known = cls.code.get(path)
        if known is not None and known[0] == data:
            return known[1]
        return compile(data, path, "exec", dont_inherit=True)

    @classmethod
    def install(cls) -> None:
        """Make the importer use them (the source loader's one compile step)."""
        from importlib.machinery import SourceFileLoader

        compile_source = SourceFileLoader.source_to_code

        def source_to_code(loader: Any, data: Any, path: Any, *args: Any, **options: Any) -> Any:
            known = cls.code.get(path) if isinstance(path, str) else None
            plain = not args and options.get("_optimize", -1) == -1 and len(options) <= 1
            if known is not None and plain and bytes(data) == known[0]:
                return known[1]
            return compile_source(loader, data, path, *args, **options)

        SourceFileLoader.source_to_code = source_to_code  # type: ignore[assignment, method-assign]


def _load_file(name: str, path: str) -> None:
    """Import the file at `path` as module `name` (ours: the session runtime)."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _preload(entries: list[str]) -> dict[str, Any]:
    """Import, load or compile `entries`; the report: which failed, which variables they
    read, threads."""
    import importlib

    failed: dict[str, str] = {}
    environ_class = os.environ.__class__
    os.environ.__class__ = _RecordingEnviron
    try:
        for entry in entries:
            if entry.startswith("@"):
                # Unreadable or not Python: the process reads and compiles it itself, and
                # fails as a fresh interpreter would.
                with contextlib.suppress(Exception):
                    _CompiledSources.add(entry[1:])
                continue
            try:
                if "=" in entry:
                    _load_file(*entry.split("=", 1))
                else:
                    importlib.import_module(entry)
            except BaseException as error:  # a module that fails here is imported by the child
                failed[entry] = f"{type(error).__name__}: {error}"[:300]
    finally:
        os.environ.__class__ = environ_class
    if _CompiledSources.code:
        _CompiledSources.install()
    import threading

    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        native = 1
    return {
        "ready": True,
        "failed": failed,
        "env_read": sorted(_RecordingEnviron.read),
        # Python threads hold Python locks a forked child could inherit held: the launcher
        # then stops using us. Native ones (OpenBLAS's pool) handle fork themselves.
        "threads": threading.active_count(),
        "native_threads": native,
        # After start-up (our bootstrap's PYTHONPATH edit) and preloading: the launcher
        # carries these changes into each child's environment (template.merge_environment).
        "environ": dict(os.environ),
    }


def serve(argv: list[str]) -> dict[str, Any]:
    """The template's life: preload, then fork on each request. Returns only in a child."""
    launcher = int(argv[0])
    control = socket.socket(fileno=int(os.environ.pop(CHANNEL_VARIABLE)))
    _libc()
    report = _preload(argv[1:])
    gc.collect()
    gc.freeze()
    control.sendall(json.dumps(report).encode())
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, MAX_MESSAGE, 64)
        except OSError:
            os._exit(0)
        if not message:
            os._exit(0)  # the launcher closed its end: it is gone or stopping us
        if message == PING:  # the launcher checks we answer before it waits for a fork
            control.sendall(PING)
            continue
        for stream in (sys.stdout, sys.stderr):  # nothing of ours may reach a child's fds
            if stream is not None:
                stream.flush()
        pid = _fork(control, fds, launcher)
        if pid == 0:
            return {"channel": fds[0], "fds": fds[1:], "launcher": launcher}
        for fd in fds:
            os.close(fd)
        control.sendall(json.dumps({"pid": pid}).encode())


def _fork(control: socket.socket, fds: list[int], launcher: int) -> int:
    """Fork a process that is the launcher's child; 0 in that process, its pid here."""
    reader, writer = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(reader)
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)
        if pid == 0:
            os.close(writer)
            control.close()
            return 0
        os.write(writer, str(pid).encode())
        os._exit(0)  # re-parents `pid` to the launcher, the nearest subreaper
    os.close(writer)
    data = b""
    while chunk := os.read(reader, 32):
        data += chunk
    os.close(reader)
    os.waitpid(middle, 0)
    return int(data) if data else -1


def _receive(channel: int) -> dict[str, Any]:
    """The setup message from the launcher: 4-byte length, then JSON; closes the channel."""
    data = b""
    while True:
        chunk = os.read(channel, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.close(channel)
    if len(data) < 4 or len(data) - 4 != int.from_bytes(data[:4], "big"):
        os._exit(1)  # the launcher went away before it finished
    result: dict[str, Any] = json.loads(data[4:])
    return result


_loaded: list[Any] = []


def _libc() -> Any:
    """libc, loaded once in the template (ctypes costs a child nothing then)."""
    if not _loaded:
        import ctypes

        _loaded.append(ctypes.CDLL(None, use_errno=True))
    return _loaded[0]


def _parent_death_signal(launcher: int) -> None:
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != launcher:  # the launcher died first, or we were never its child
        os._exit(1)


def _stdio() -> None:
    """New sys.std* over fds 0-2, made as the interpreter makes them at start-up."""
    import io

    # PYTHONUNBUFFERED (-u is an interpreter option: such a child is spawned the old way).
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name, write in ((0, "stdin", False), (1, "stdout", True), (2, "stderr", True)):
        old = getattr(sys, name)
        try:
            binary: Any = open(  # noqa: SIM115 -- lives as long as the process
                fd,
                "wb" if write else "rb",
                buffering=0 if unbuffered and write else -1,
                closefd=False,
            )
        except OSError:
            setattr(sys, name, None)
            setattr(sys, f"__{name}__", None)
            continue
        raw = binary if isinstance(binary, io.FileIO) else binary.raw
        raw.name = f"<{name}>"
        tty = raw.isatty()
        stream = io.TextIOWrapper(
            binary,
            encoding=getattr(old, "encoding", None),
            errors="backslashreplace" if name == "stderr" else getattr(old, "errors", None),
            newline="\n",
            line_buffering=not unbuffered and (tty or name == "stderr"),
            write_through=bool(unbuffered),
        )
        stream.mode = "w" if write else "r"  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _place_fds(received: list[int], targets: list[int]) -> None:
    """Put each received fd on the number the launcher asked for (stdio, kept fds)."""
    top = max([*received, *targets, 2]) + 1
    staged = [_dup_above(fd, top) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, target in zip(staged, targets, strict=True):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def _dup_above(fd: int, floor: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)


def _signals(foreground: bool) -> None:
    """Dispositions as a fresh interpreter has them, whatever a preloaded module set."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    for sig in _DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    if foreground:
        # With every signal blocked: a background group's tcsetpgrp would stop us (SIGTTOU),
        # and the agent must not read the terminal before it has it (as in fork_exec).
        try:  # noqa: SIM105
            os.tcsetpgrp(0, os.getpid())
        except OSError:
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def become(job: dict[str, Any]) -> None:
    """In the forked process: take the launcher's setup, then run the target."""
    os.setpgid(0, 0)
    setup = _receive(job["channel"])
    _parent_death_signal(job["launcher"])
    _place_fds(job["fds"], setup["targets"])
    _signals(setup["foreground"])
    os.chdir(setup["cwd"])
    os.environ.clear()
    os.environ.update(setup["env"])
    import time

    time.tzset()
    # agent-run's start-up hook (python_bootstrap) set LiveKit's port default from the
    # template's environment, which has no AGENT_RUN_PORT: this process's port now.
    rebind = getattr(sys.modules.get("_agent_run_bootstrap"), "rebind", None)
    if callable(rebind):
        rebind()
    _stdio()
    _run(setup["argv"])


def _fresh_main() -> Any:
    """A new, empty `__main__`, shaped as the interpreter made ours (`python -c`'s)."""
    import builtins
    import types

    ours = sys.modules["__main__"]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    if "__annotations__" in vars(ours):
        main.__annotations__ = {}
    sys.modules["__main__"] = main
    return main


def _run(argv: list[str]) -> None:
    """Run argv[1:] (`SCRIPT ARGS`, `-m MODULE ARGS`, `-c CODE ARGS`) as `python` would."""
    sys.orig_argv = list(argv)
    arguments = argv[1:]
    main = _fresh_main()
    if arguments[0] == "-m":
        if not sys.flags.safe_path:
            sys.path.insert(0, os.getcwd())
        sys.argv = ["-m", *arguments[2:]]  # runpy puts the module's file in argv[0]
        import runpy

        # What `python -m` itself runs: __main__ stays the module, argv[0] its file.
        _guarded(lambda: runpy._run_module_as_main(arguments[1], alter_argv=True))  # type: ignore[attr-defined]
        return
    if arguments[0] == "-c":
        if not sys.flags.safe_path:
            sys.path.insert(0, "")
        sys.argv = ["-c", *arguments[2:]]
        code = compile(arguments[1], "<string>", "exec", dont_inherit=True)
        _guarded(lambda: exec(code, main.__dict__))
        return
    script = arguments[0]
    if not sys.flags.safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    sys.argv = list(arguments)
    path = os.path.abspath(script)
    from importlib.machinery import SourceFileLoader

    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = SourceFileLoader("__main__", path)
    main.__spec__ = None
    main.__package__ = None
    try:
        with open(script, "rb") as source:
            code = _CompiledSources.get(source.read(), path)
    except OSError as error:
        sys.stderr.write(
            f"{sys.executable}: can't open file {path!r}: [Errno {error.errno}] {error.strerror}\n"
        )
        raise SystemExit(2) from None
    _guarded(lambda: exec(code, main.__dict__))


def _guarded(run: Any) -> None:
    """Run, and report an uncaught exception as the interpreter would, without our frames."""
    try:
        run()
    except SystemExit:
        raise
    except BaseException as error:
        import runpy

        tb = error.__traceback__
        own = (__file__, runpy.__file__)
        # Our own frames (this function, the lambda, runpy's) come first: skip to the
        # agent's, so the traceback reads as a fresh interpreter's.
        while tb is not None and tb.tb_frame.f_code.co_filename in own:
            tb = tb.tb_next
        # The default hook prints the exception's own __traceback__, not its argument.
        sys.excepthook(type(error), error.with_traceback(tb), tb)
        if isinstance(error, KeyboardInterrupt):
            _exit_by_interrupt()
        raise SystemExit(1) from None


def _exit_by_interrupt() -> None:
    """As Python ends after an uncaught KeyboardInterrupt: killed by SIGINT (the shell sees
    130), after the usual clean-up."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
