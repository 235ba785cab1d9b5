"""One worker process: spawn, stop timeline, exit status.

- Each worker gets its own process group, so its own sub-processes can be stopped with it.
- It dies with the launcher: PR_SET_PDEATHSIG in the child. The signal is tied to the
  *thread* that forked the child, so every spawn happens on the main thread.
- Stopping: the stop signal goes once, to the main process only; the process group is
  SIGKILLed when the drain deadline passes or once the main process has exited. Never a
  second TERM, never the whole group first: a LiveKit worker takes a second SIGTERM as "exit
  now", and its job processes do not ignore a group-wide one.
- Exit statuses are collected by the one reaper (`launcher.process.reaper`: the only
  `waitpid(-1)`, with a registry of whose pid is whose), never by a per-child wait, so no
  status is ever stolen or lost. `spawn` registers each worker there at once, on the
  spawning thread; an owner (the pool, the warm pool) may register its own callback later.

Why our own fork/exec and not `subprocess.Popen`: measured here, `Popen(preexec_fn=...)`
costs ~1.6 ms per spawn (the child re-initialises Python's after-fork state and the parent
waits for it) on top of ~2-3 ms to import `subprocess` and `threading`, all on the launch
critical path; `os.fork` + prctl + `os.execve` costs ~0.15 ms. `os.posix_spawn` is faster
still but cannot set the parent-death signal, which the child must set on itself. The child
runs only a few C calls between fork and exec (no imports, no locks); every fd the launcher
opens is close-on-exec (PEP 446), and inheritable fds we inherited ourselves are closed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from launcher.process import reaper
from launcher.process.output import Masker, Relay
from launcher.process.readiness import Latch
from launcher.process.reaper import exit_code, exited_children

__all__ = [
    "INSTANCE_VARIABLE",
    "Worker",
    "WorkerFactory",
    "become_subreaper",
    "exit_code",
    "exited_children",
    "fork_exec",
    "instance_mark",
    "marked_environment",
    "set_worker_user",
    "spawn",
    "spawn_hooks",
    "worker_user",
]

if TYPE_CHECKING:
    import anyio

    from launcher.environment import EnvironmentLayers

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_DEFAULT_IN_CHILD = (signal.SIGPIPE, signal.SIGXFSZ)
_RESET_SIGNALS = (
    *_DEFAULT_IN_CHILD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
    signal.SIGQUIT,
    signal.SIGALRM,
)

_libc: object | None = None

# Told the pid of every child fork_exec starts (containment tells its guardian).
spawn_hooks: list[Callable[[int], None]] = []

# Every child carries this launcher's mark in its environment, and passes it on to its own
# descendants unless it clears its environment: the guardian finds escaped daemons by it
# when no cgroup is available (launcher.process.containment).
INSTANCE_VARIABLE = "AGENT_RUN_INSTANCE"
_instance: str | None = None


def instance_mark() -> str:
    """This launcher's mark: its pid and a random part, the same for all its children."""
    global _instance
    if _instance is None:
        _instance = f"{os.getpid()}.{os.urandom(6).hex()}"
    return _instance


def marked_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this launcher's mark added (a launcher run by another keeps the outer mark
    too: the outer one's guardian must still find our workers' descendants)."""
    environment = dict(env)
    mark, outer = instance_mark(), environment.get(INSTANCE_VARIABLE)
    environment[INSTANCE_VARIABLE] = f"{outer} {mark}" if outer and mark not in outer else mark
    return environment


# (uid, gid) every worker runs as (--user), or None: the launcher's own user.
_worker_user: tuple[int, int] | None = None


def set_worker_user(user: tuple[int, int] | None) -> None:
    """Start every later worker as `user` (launcher.privilege checked we are root)."""
    global _worker_user
    _worker_user = user


def worker_user() -> tuple[int, int] | None:
    """The (uid, gid) workers run as when it is not the launcher's own; owner of their files."""
    return _worker_user


def libc_prctl() -> Callable[..., int]:
    """libc's prctl, loaded once (the launcher's own protection uses it too)."""
    return _prctl()


def _prctl() -> Callable[..., int]:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl  # type: ignore[attr-defined, no-any-return]


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to us (as they are to PID 1), so we can reap them."""
    try:
        return _prctl()(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Worker:
    """A spawned worker and what the supervisor knows about it."""

    def __init__(
        self,
        slot: int,
        pid: int,
        version: int | None,
        relay: Relay | None,
        log_match: Latch | None = None,
    ) -> None:
        self.slot = slot
        self.pid = pid
        self.version = version
        self.relay = relay
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.exit_code: int | None = None
        self.stop_sent = False
        self.stopped_at: float | None = None  # monotonic time of the stop signal
        self.status_text: str | None = None
        self.last_watchdog = time.monotonic()
        # Raised by the relay thread when a line matched --ready log:REGEX. Created before
        # the spawn, so a match read before anyone subscribed is kept (see Latch).
        self.log_match = log_match if log_match is not None else Latch()
        self.port: int | None = None  # AGENT_RUN_PORT given to it (--port-base)
        self.generation = 0  # the engine's generation (environment) it runs
        # Set by the relay thread when the worker printed "address already in use" (the
        # port, 0 if the line did not name it): see launcher/process/port_conflict.py.
        self.port_collision: int | None = None
        # Set by the supervisor once its event loop runs (anyio events are loop-bound).
        self.exited: anyio.Event | None = None
        self.ready_event: anyio.Event | None = None
        self.foreground = False  # holds the terminal's foreground (launcher.process.terminal)
        # Died of the terminal's Ctrl-C while in the foreground: the owner must shut down
        # rather than restart it (the launcher's own SIGINT follows, a loop iteration later).
        self.interrupted = False
        self.private_dir: str | None = None  # its private files (AGENT_RUN_FILES), if any

    def __repr__(self) -> str:
        return f"Worker(slot={self.slot}, pid={self.pid}, alive={self.alive})"

    @property
    def log_ready(self) -> bool:
        return self.log_match.is_set

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def last_lines(self, count: int = 10) -> list[str]:
        """The last lines the worker printed, masked (none with --no-mask: not relayed)."""
        return self.relay.recent_lines()[-count:] if self.relay is not None else []

    def send(self, sig: int) -> None:
        """Send a signal to the main process (not the group)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, sig: int) -> None:
        """The stop signal, once: a second one would make a LiveKit worker drop its calls."""
        if not self.stop_sent and self.alive:
            self.stop_sent = True
            self.send(sig)
            if self.foreground:
                # Stopped by SIGTTIN after a newer worker took the terminal, it would hold
                # the stop signal pending until its drain deadline.
                self.send(signal.SIGCONT)

    def kill_group(self) -> None:
        """SIGKILL everything left in the worker's process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def remove_private_files(self) -> None:
        """The process is gone: so are the files only it could read (call after reaping)."""
        if self.private_dir is not None:
            from launcher.process.private_files import remove

            remove(self.private_dir)
            self.private_dir = None

    def reaped(self, status: int) -> None:
        self.exit_code = exit_code(status)
        if self.foreground:
            from launcher.process import terminal

            terminal.take_back(self.pid)
            if not self.stop_sent:
                self.interrupted = terminal.pass_on_interrupt(status)


def _inherited_fds(keep: Sequence[int]) -> list[int]:
    """Inheritable fds >= 3 that the launcher got from its own parent (a shell, systemd)."""
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for name in names:
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the listing's own fd, already closed
                pass
    return found


def _executable(name: str, env: Mapping[str, str]) -> str:
    """The file `name` runs, searched on the worker's PATH; OSError as exec would raise it.

    Checked here rather than reported back from the child: the parent then need not wait
    for the child to reach exec (~1 ms on the launch critical path).
    """
    candidates = (
        [name] if os.sep in name else [os.path.join(d, name) for d in os.get_exec_path(env)]
    )
    denied = False
    for path in candidates:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = True
    errno = 13 if denied else 2  # EACCES, ENOENT
    raise OSError(errno, os.strerror(errno), name)


def fork_exec(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: int,
    stdout: int | None,
    stderr: int | None,
    pass_fds: Sequence[int] = (),
    foreground: bool = False,
) -> int:
    """Start `argv` in its own process group, with the parent-death signal; return its pid.

    Raises OSError (ENOENT, EACCES) when the command cannot be found or run.
    `stdout`/`stderr` None: the child writes to the launcher's own fds. `foreground`: the
    child makes its group the foreground of the terminal `stdin` (launcher.process.terminal).
    """
    prctl = _prctl()  # libc is loaded in the parent: the child imports nothing
    path = _executable(argv[0], env)
    environment = marked_environment(env)
    close = _inherited_fds(pass_fds)
    parent = os.getpid()
    user = _worker_user
    # Signals are blocked across fork: until exec, the child still has our Python signal
    # handlers and our event loop's wakeup fd, and a signal caught there (a Ctrl-C sent to
    # the terminal's process group) would be written into *our* wakeup pipe, a phantom
    # second SIGINT. The child restores default dispositions before unblocking.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in a threaded process (our relay threads):
            # the child here runs no Python that could need a lock another thread holds.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid == 0:  # the child: a few C calls until execve, no imports, no locks
        try:
            if user is not None:
                # Groups first, the uid last (it takes the right to change the others);
                # before the death signal, which a change of credentials clears.
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the launcher died before prctl took effect
                os._exit(1)
            os.setpgid(0, 0)
            if foreground:
                # Before exec and with every signal blocked: the kernel would stop a
                # background caller with SIGTTOU, and the agent must not read first.
                try:  # noqa: SIM105 -- the child runs plain statements only until exec
                    os.tcsetpgrp(stdin, os.getpid())
                except OSError:
                    pass
            try:  # noqa: SIM105 -- the child runs plain statements only until exec
                signal.set_wakeup_fd(-1)
            except ValueError:  # not the main thread: no wakeup fd
                pass
            for sig in _RESET_SIGNALS:
                # Python ignores SIGPIPE and SIGXFSZ, and an ignored disposition survives
                # exec; our own handlers would not, but must not run before it either.
                if sig in _DEFAULT_IN_CHILD or callable(signal.getsignal(sig)):
                    signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.dup2(stdin, 0)
            if stdout is not None:
                os.dup2(stdout, 1)
            if stderr is not None:
                os.dup2(stderr, 2)
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            for fd in close:
                os.close(fd)
            os.execve(path, list(argv), environment)
        except BaseException as error:
            # The command was checked in the parent; this is a late failure (ENOEXEC, a
            # file replaced meanwhile). Say so where the worker's own errors go; 127 as a
            # shell does for a command it cannot run.
            try:  # noqa: SIM105 -- the child runs plain statements only until exec
                os.write(2, f"agent-run: cannot execute {path}: {error}\n".encode())
            except BaseException:
                pass
        finally:
            os._exit(127)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for hook in spawn_hooks:
        hook(pid)
    # Also from this side, so a stop or kill_group() sent right after the fork reaches the
    # new group even if the child has not run yet (EACCES once it has exec'd: already done).
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return pid


def _copy_window_size(source_fd: int, target_fd: int) -> None:
    try:
        import fcntl
        import termios

        size = fcntl.ioctl(source_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _plain_newlines(replica: int) -> None:
    """The worker's "\n" stays "\n" on its way to us: our own terminal adds the "\r".

    A pseudo-terminal translates output "\n" to "\r\n" (ONLCR); the lines then reach our
    terminal, which translates again: "\r\r\n". Only output post-processing is changed: the
    worker still sees a terminal (isatty, colours, window size).
    """
    try:
        import termios

        attributes = termios.tcgetattr(replica)
        attributes[1] &= ~termios.ONLCR
        termios.tcsetattr(replica, termios.TCSANOW, attributes)
    except (OSError, ImportError):
        pass


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    slot: int,
    version: int | None,
    masker: Masker | None,
    use_pty: bool = False,
    inherit_stdin: bool = False,
    on_line: Callable[[bytes], None] | None = None,
    pass_fds: Sequence[int] = (),
    log_match: Latch | None = None,
    files: Mapping[str, bytes] | None = None,
    file_variables: Sequence[str] = (),
    watch: Callable[[bytes], None] | None = None,
    launch: Callable[..., int] = fork_exec,
) -> Worker:
    """Start one worker. With a masker, its output is relayed masked; without, it is inherited.

    `pass_fds` stay open in the child (session mode's private channel). With `inherit_stdin`
    on a terminal the launcher holds, the worker gets the terminal's foreground, so it can
    read it (launcher.process.terminal). `log_match` is the
    latch `on_line` raises; it becomes the worker's, so nothing it records can be lost.
    `files` are written to a private directory of this process, named by AGENT_RUN_FILES in
    its environment; the caller removes it with `Worker.remove_private_files()` once the
    process is reaped. Each of `file_variables` (a file secret) is set to its file's path.
    `watch` sees each relayed chunk of output before masking (in the relay thread).
    `launch` starts the process (`fork_exec`'s signature: a template's, launcher/process/
    template.py, forks it warm).
    """
    private_dir = None
    if files:
        from launcher.process import private_files

        private_dir = private_files.for_this_launcher().create(files, owner=_worker_user)
        env = {**env, private_files.VARIABLE: private_dir}
        env.update((name, os.path.join(private_dir, name)) for name in file_variables)
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if not inherit_stdin else 0
    foreground = False
    if inherit_stdin:
        from launcher.process.terminal import can_hand_over

        foreground = can_hand_over(stdin)
    routes: dict[int, int] = {}
    stdout: int | None
    stderr: int | None
    if masker is None and on_line is None:
        stdout = stderr = None  # --no-mask: the worker writes to our fds directly
        child_fds: list[int] = []
    elif use_pty:
        master, replica = os.openpty()
        _copy_window_size(sys.stdout.fileno(), replica)
        if _worker_user is not None:  # its terminal is its own: ttyname, /dev/tty reopen
            os.fchown(replica, *_worker_user)
        _plain_newlines(replica)
        stdout = stderr = replica
        child_fds = [replica]
        routes = {master: 1}
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdout, stderr = out_w, err_w
        child_fds = [out_w, err_w]
        routes = {out_r: 1, err_r: 2}
    if not inherit_stdin:
        child_fds.append(stdin)
    try:
        pid = launch(
            argv,
            env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            foreground=foreground,
        )
    except OSError:
        for fd in [*child_fds, *routes]:
            os.close(fd)
        if private_dir is not None:
            from launcher.process.private_files import remove

            remove(private_dir)
        raise
    for fd in child_fds:
        os.close(fd)
    relay = None
    if routes:
        relay = Relay(
            routes, masker or Masker(()), on_line=on_line, watch=watch, name=f"relay-{slot}"
        ).start()
    worker = Worker(slot, pid, version, relay, log_match)
    worker.foreground = foreground
    worker.private_dir = private_dir
    reaper.register(pid, worker.reaped)  # before any reap can run: same (main) thread
    return worker


class WorkerFactory:
    """Spawns the workers of one pool: command, environment layer, output and readiness hooks.

    Kept free of anyio so the launcher can spawn its first workers before the event loop's
    imports (the launch critical path); the pool adopts them afterwards.
    """

    def __init__(
        self,
        argv: Sequence[str],
        notify_path: str,
        masker: Masker | None,
        *,
        port_base: int | None,
        use_pty: bool,
        inherit_stdin: bool,
        log_pattern: str | None,
    ) -> None:
        self.argv = list(argv)
        self.notify_path = notify_path
        self.masker = masker
        self.port_base = port_base
        self.use_pty = use_pty
        self.inherit_stdin = inherit_stdin
        self.log_pattern = log_pattern
        # How a process is started: fork_exec, or a template's warm fork (#18).
        self.launch: Callable[..., int] = fork_exec
        # Called from a relay thread when a worker printed that its port was taken.
        # Until the engine takes over, collisions wait here: a worker forked warm can fail
        # to bind before the event loop exists (#18).
        self.early_collisions: list[tuple[Worker, int]] = []
        self.on_port_collision: Callable[[Worker, int], None] = lambda worker, port: (
            self.early_collisions.append((worker, port))
        )

    def spawn(self, index: int, layers: EnvironmentLayers, port: int | None = None) -> Worker:
        """Start worker `index`; `port` is its AGENT_RUN_PORT (the engine picks the lane)."""
        from launcher.environment import compose
        from launcher.process.output import log_matcher

        if port is None and self.port_base is not None:
            port = self.port_base + index  # the launch: every slot in lane 0
        env = compose(layers, worker=index, port=port, notify_socket=self.notify_path)
        # The latch exists before the process does: the relay may match the first line
        # before this function returns, and the match must stay recorded (#11, item 4).
        log_match = Latch()
        on_line = None
        if self.log_pattern is not None:
            on_line = log_matcher(self.log_pattern, log_match.set)
        holder: list[Worker] = []  # the worker, for the relay thread's collision report
        worker = spawn(
            self.argv,
            env,
            slot=index,
            version=layers.secrets_version,
            masker=self.masker,
            use_pty=self.use_pty,
            inherit_stdin=self.inherit_stdin,
            on_line=on_line,
            log_match=log_match,
            files=layers.files,
            file_variables=layers.file_variables,
            watch=self._collision_watch(holder),
            launch=self.launch,
        )
        worker.port = port
        holder.append(worker)
        return worker

    def _collision_watch(self, holder: list[Worker]) -> Callable[[bytes], None]:
        """A chunk callback: the first "address already in use" line is reported."""

        tail = [b""]  # the end of the previous chunk: a long line may come in two pieces

        def check(chunk: bytes) -> None:
            previous, tail[0] = tail[0], chunk[-200:]
            if b"in use" not in chunk and b"EADDRINUSE" not in chunk:
                return  # one scan of the chunk: the common case costs almost nothing
            if not holder or holder[0].port_collision is not None:
                return
            from launcher.process.port_conflict import collision_port

            for line in (previous + chunk).splitlines():
                port = collision_port(line)
                if port is not None:
                    holder[0].port_collision = port
                    self.on_port_collision(holder[0], port)
                    return

        return check
