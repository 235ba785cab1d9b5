"""Relay of worker output, with every secret value masked.

Each worker's stdout and stderr (or its pseudo-terminal) are read by one relay thread that
writes complete lines to the launcher's own stdout/stderr with every secret value — and its
base64, URL-encoded, JSON-escaped and Python-repr forms — replaced by `***`. (An agent that
logs a config dict or a JSON body prints `"sk-\"x\"\\y"`, not the value as stored; a
multi-line PEM key appears on one line as `-----BEGIN...\nMII...`.)

Why threads and not the event loop: the relay is on the launch critical path. Workers are
spawned before the launcher imports anyio (asyncio alone costs ~25 ms), and a thread doing
blocking reads relays an agent's first line while the main thread is still importing. A
blocking read/write loop is also the fastest relay Python has: no event-loop hop per chunk.

Masking uses Aho-Corasick (ahocorasick-rs): one pass over each chunk whatever the number of
patterns, where a regex alternation of a few hundred literals relays only a few MB/s.
A line is only written once it is complete, so a value split across two reads is still
caught; a partial line (a prompt) is written after PARTIAL_FLUSH_S of silence.
"""

from __future__ import annotations

import _thread
import binascii
import contextlib
import os
import select
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

MASK = b"***"
# Values shorter than this are not masked: "1" or "true" would mangle every line of output.
MIN_MASKED_LENGTH = 4
PARTIAL_FLUSH_S = 0.05
HOLD_MAX_S = 1.0  # longest wait for the rest of a value split across writes
MAX_LINE = 64 * 1024
LONG_PATTERNS = 32 * 1024  # total bytes of forms beyond which the automaton is an NFA
READ_SIZE = 64 * 1024
# The last lines each worker printed, masked, kept for the report of a worker that failed (a
# rollout's replacement that exited): a small bounded ring, each line cut to RECENT_LINE_MAX.
RECENT_LINES = 20
RECENT_LINE_MAX = 2000


# The masker is built while the agent's interpreter starts, so the encodings are written
# out here: `base64` imports re and `urllib.parse` costs ~3 ms to import (with ipaddress).
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # base64 -> base64.urlsafe_b64encode
# RFC 3986 unreserved characters: what urllib.parse.quote(value, safe="") leaves as is.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


_PERCENT = [bytes((c,)) if c in _UNRESERVED else b"%%%02X" % c for c in range(256)]


def percent_encoded(raw: bytes, space: bytes = b"%20") -> bytes:
    """`urllib.parse.quote(value, safe="")` of a value's UTF-8 bytes; with `space=b"+"`,
    `urllib.parse.quote_plus(value, safe="")`."""
    table = _PERCENT if space == b"%20" else [*_PERCENT[:0x20], space, *_PERCENT[0x21:]]
    return b"".join(map(table.__getitem__, raw))  # one table lookup per byte, in C


def _escaped(text: str) -> list[str]:
    """How programs commonly print a string inside quotes: JSON (ASCII-only or not) and
    Python's repr of the str and of its UTF-8 bytes; the quotes themselves left out."""
    import json  # already imported on the launch path (the store reads JSON)

    return [
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(text)[1:-1],
        repr(text.encode("utf-8"))[2:-1],
    ]


def _forms(value: str) -> set[bytes]:
    """The spellings of a value that must not appear in output."""
    found: set[bytes] = set()
    pieces = [value] + ([line.strip() for line in value.splitlines()] if "\n" in value else [])
    for piece in pieces:
        raw = piece.encode("utf-8")
        if len(raw) < MIN_MASKED_LENGTH:
            continue
        encoded = binascii.b2a_base64(raw, newline=False)
        found.add(raw)
        found.add(encoded)
        found.add(encoded.translate(_URLSAFE))
        found.add(encoded.rstrip(b"="))
        found.add(percent_encoded(raw))
        found.add(percent_encoded(raw, space=b"+"))
        found.update(text.encode("utf-8", "backslashreplace") for text in _escaped(piece))
    return {form for form in found if len(form) >= MIN_MASKED_LENGTH}


# An unfinished line is held back when it ends with the start of a form; the starts are
# indexed by their first HEAD bytes, never all enumerated: every prefix of every form is
# quadratic in the value's length (a 16 KiB value cost 2.8 s and 756 MiB at the first prompt).
HEAD = 8


class _Starts:
    """Answers "which tail of this data begins some form?" in time linear in the tail."""

    def __init__(self, patterns: set[bytes]) -> None:
        self.patterns = patterns
        self.longest = max(map(len, patterns), default=0)
        # Proper prefixes up to HEAD bytes long, for short tails.
        self.short = {p[:k] for p in patterns for k in range(1, min(len(p), HEAD + 1))}
        # Longer tails: the forms longer than HEAD, by their first HEAD bytes.
        self.by_head: dict[bytes, list[bytes]] = {}
        for pattern in patterns:
            if len(pattern) > HEAD:
                self.by_head.setdefault(pattern[:HEAD], []).append(pattern)

    def first(self, data: bytes) -> int:
        """The start of the longest tail of `data` that is a proper prefix of a form, or
        len(data) when there is none."""
        size = len(data)
        view = memoryview(data)
        for start in range(max(0, size - (self.longest - 1)), size):
            tail = size - start
            if tail <= HEAD:
                if data[start:] in self.short:
                    return start
                continue
            for pattern in self.by_head.get(data[start : start + HEAD], ()):
                if len(pattern) > tail and memoryview(pattern)[:tail] == view[start:]:
                    return start
        return size


class Masker:
    """Replaces every form of every secret value in a byte string.

    Building the automaton (the encoded forms, the ahocorasick import) costs ~2.5 ms for 20
    values: it is deferred to the first `prepare()` or `mask()`, which the supervisor calls
    right after spawning its first workers (and a relay thread as it starts), so the
    automaton is built while the agent's interpreter starts. Nothing is relayed before it
    exists.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self._patterns: set[bytes] = set()
        self._automaton: Any = None
        self._pending: list[str] = list(values)
        self._lock = _thread.allocate_lock()
        # Built on first need (only unfinished lines need it).
        self._starts: _Starts | None = None

    def prepare(self) -> None:
        """Build the automaton now, if values are waiting (thread-safe, idempotent)."""
        if self._pending:
            self.add(())

    def add(self, values: Iterable[str]) -> None:
        """Mask these values too (a rollout's new values; the old ones stay masked, since
        draining workers still hold them). Relay threads see the new automaton at once."""
        with self._lock:
            # The values stay pending until their automaton is in place: a relay thread that
            # saw none pending would mask with the old automaton (or none at all, the first
            # time) while this one is still being built, and print a value in clear.
            pending = self._pending = [*self._pending, *values]
            patterns = set(self._patterns)
            for value in pending:
                patterns |= _forms(value)
            if patterns == self._patterns:
                self._pending = []
                return
            import ahocorasick_rs

            # The library's default picks a DFA for a few patterns, whose construction grows
            # with their length: 0.3 s for the forms of one 16 KiB value, against 28 ms for a
            # contiguous NFA that scans about as fast (119 vs 122 MB/s, bench/masking.py).
            options: dict[str, Any] = {}
            if sum(map(len, patterns)) > LONG_PATTERNS:
                options["implementation"] = ahocorasick_rs.Implementation.ContiguousNFA
            automaton = ahocorasick_rs.BytesAhoCorasick(
                sorted(patterns), matchkind=ahocorasick_rs.MatchKind.LeftmostLongest, **options
            )
            self._patterns, self._automaton = patterns, automaton
            self._pending = []

    def __bool__(self) -> bool:
        return self._automaton is not None or bool(self._pending)

    def safe_length(self, data: bytes) -> int:
        """How much of `data` can be written now: all of it, unless it ends with the start
        of a form of a secret (the rest may be in the next read)."""
        self.prepare()
        patterns = self._patterns
        if self._starts is None or self._starts.patterns is not patterns:
            self._starts = _Starts(patterns)
        return self._starts.first(data)

    def mask(self, data: bytes) -> bytes:
        if self._pending:
            self.prepare()
        automaton = self._automaton  # one read: add() may swap it from another thread
        if automaton is None:
            return data
        pieces: list[bytes] = []
        last = 0
        for _index, start, end in automaton.find_matches_as_indexes(data):
            pieces.append(data[last:start])
            pieces.append(MASK)
            last = end
        if not pieces:
            return data
        pieces.append(data[last:])
        return b"".join(pieces)

    def finds(self, data: bytes) -> bool:
        """Whether `data` holds any form of any value (what `mask` would replace)."""
        if self._pending:
            self.prepare()
        automaton = self._automaton
        return automaton is not None and bool(automaton.find_matches_as_indexes(data))

    def mask_text(self, text: str) -> str:
        return self.mask(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")


_write_locks: dict[int, _thread.LockType] = {}


def write_whole(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` in one piece with respect to every other writer here."""
    lock = _write_locks.setdefault(fd, _thread.allocate_lock())
    with lock:  # whole chunks: lines of two workers never interleave mid-line
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                select.select([], [fd], [])
                continue
            except (BrokenPipeError, OSError):
                return  # our own output is gone (closed terminal): keep supervising
            view = view[written:]


class Relay:
    """Copies masked lines from a worker's output fds to ours, in a daemon thread."""

    def __init__(
        self,
        routes: dict[int, int],  # worker fd (read end) -> our fd (1 or 2)
        masker: Masker,
        on_line: Callable[[bytes], None] | None = None,
        name: str = "relay",
        watch: Callable[[bytes], None] | None = None,
    ) -> None:
        self._routes = routes
        self._masker = masker
        self.on_line = on_line  # sees each complete line before masking (log: readiness)
        self.watch = watch  # sees each chunk of lines before masking (port collisions)
        # Rewrites each masked line before it is written (session mode: the session's id).
        self.tag: Callable[[bytes, int], bytes] | None = None
        self.name = name
        self._running = _thread.allocate_lock()  # held while the relay runs
        # Appended by the relay thread only; a deque's append and list() are atomic.
        self._recent: deque[str] = deque(maxlen=RECENT_LINES)

    def recent_lines(self) -> list[str]:
        """The last lines this worker printed (stdout and stderr), masked, oldest first."""
        return list(self._recent)

    def start(self) -> Relay:
        # `_thread`, not `threading`: importing threading costs ~1 ms on the launch critical
        # path, and a relay needs nothing of it (it is never joined: it ends when the
        # worker's fds close, and must not keep the launcher alive on its own).
        self._running.acquire()
        _thread.start_new_thread(self._run, ())
        return self

    def wait(self, timeout: float = -1) -> bool:
        """True once every fd of the worker has closed and its last line was written."""
        if self._running.acquire(True, timeout):
            self._running.release()
            return True
        return False

    def _emit(self, target: int, data: bytes) -> None:
        if self.on_line is not None:
            for line in data.splitlines():
                self.on_line(line)
        if self.watch is not None:
            self.watch(data)
        masked = self._masker.mask(data)
        for line in masked.splitlines():
            if line.strip():
                self._recent.append(line.rstrip(b"\r")[:RECENT_LINE_MAX].decode("utf-8", "replace"))
        tag = self.tag
        if tag is not None:
            masked = b"".join(tag(line, target) for line in masked.splitlines(keepends=True))
        write_whole(target, masked)

    def _flush_partial(self, fd: int, tail: bytes, held_since: dict[int, float]) -> bytes:
        """Write an unfinished line after a silence, holding back a possible secret's start.

        A worker may write a value in two pieces; a tail that could begin a secret waits for
        the rest (or for HOLD_MAX_S more silence, or the end of output). Returns what stays.
        """
        cut = self._masker.safe_length(tail)
        if cut == 0:
            now = time.monotonic()
            if now - held_since.setdefault(fd, now) < HOLD_MAX_S:
                return tail
            cut = len(tail)
        held_since.pop(fd, None)
        self._emit(self._routes[fd], tail[:cut])
        return tail[cut:]

    def _run(self) -> None:
        poller = select.poll()
        pending: dict[int, bytes] = {}
        for fd in self._routes:
            poller.register(fd, select.POLLIN)
            pending[fd] = b""
        open_fds = set(self._routes)
        held_since: dict[int, float] = {}
        try:
            # Off the spawn path, while the worker's interpreter starts. If the masker cannot
            # be built, nothing is relayed unmasked: the fds close (the worker gets EPIPE).
            self._masker.prepare()
            while open_fds:
                timeout = PARTIAL_FLUSH_S * 1000 if any(pending.values()) else None
                events = poller.poll(timeout)
                if not events:
                    for fd, tail in pending.items():  # silence: show the prompt as it is
                        if tail:
                            pending[fd] = self._flush_partial(fd, tail, held_since)
                    continue
                for fd, _event in events:
                    try:
                        chunk = os.read(fd, READ_SIZE)
                    except OSError:  # EIO: a pty whose worker has exited
                        chunk = b""
                    if not chunk:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                        if pending[fd]:
                            self._emit(self._routes[fd], pending[fd])
                            pending[fd] = b""
                        continue
                    held_since.pop(fd, None)
                    data = pending[fd] + chunk
                    cut = data.rfind(b"\n") + 1
                    if cut == 0 and len(data) < MAX_LINE:
                        pending[fd] = data
                        continue
                    if cut == 0:  # an endless line: write it, but never half a secret
                        cut = self._masker.safe_length(data) or len(data)
                    pending[fd] = data[cut:]
                    self._emit(self._routes[fd], data[:cut])
        finally:
            for fd in self._routes:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._running.release()


def log_matcher(pattern: str, on_match: Callable[[], None]) -> Callable[[bytes], None]:
    """A line callback that calls `on_match` once, on the first line matching `pattern`."""
    import re

    regex = re.compile(pattern.encode())
    fired: list[bool] = []  # one relay thread per worker calls this: no lock needed

    def check(line: bytes) -> None:
        if not fired and regex.search(line):
            fired.append(True)
            on_match()

    return check
