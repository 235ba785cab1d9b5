"""Relay and masking of worker output: every form of every value, whatever the read sizes."""

from __future__ import annotations

import base64
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.process.output import (
    HOLD_MAX_S,
    MAX_LINE,
    Masker,
    Relay,
    log_matcher,
    percent_encoded,
)

SECRET = "sk-live/very+secret=value-0042"


def _forms(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
    ]


@pytest.mark.parametrize("form", _forms(SECRET))
def test_every_form_is_masked(form: str) -> None:
    """The value, its base64 (standard, URL-safe, unpadded) and URL-encoded forms become ***."""
    masker = Masker([SECRET])
    assert masker.mask(f"token={form};".encode()) == b"token=***;"


def test_short_values_are_left_alone() -> None:
    """Values under 4 bytes are not masked: "1" would mangle every line."""
    masker = Masker(["1", "abc"])
    assert masker.mask(b"a1bc abc 1") == b"a1bc abc 1"
    assert not Masker([])


def test_multiline_value_is_masked_line_by_line() -> None:
    """A PEM-like value is masked whole, and each of its lines on its own."""
    pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----"
    masker = Masker([pem])
    assert masker.mask(pem.encode()) == b"***"
    assert masker.mask(b"line: MIIBOgIBAAJBAKj34GkxFhD9\n") == b"line: ***\n"


def test_overlapping_values_mask_the_longest() -> None:
    """When one value contains another, the longer one is replaced whole."""
    masker = Masker(["secret-one", "secret-one-and-more"])
    assert masker.mask(b"x secret-one-and-more y secret-one") == b"x *** y ***"


def test_added_values_are_masked_and_old_ones_stay() -> None:
    """add() (a rollout's new values) extends the mask; earlier values remain masked."""
    masker = Masker(["old-value-1"])
    masker.add(["new-value-2"])
    assert masker.mask(b"old-value-1 new-value-2") == b"*** ***"


@given(st.text(min_size=0, max_size=40), st.text(min_size=0, max_size=40))
@settings(max_examples=200, deadline=None)
def test_mask_never_leaves_the_value(before: str, after: str) -> None:
    """Whatever surrounds it, the value is gone after masking."""
    masker = Masker([SECRET])
    out = masker.mask(f"{before}{SECRET}{after}".encode())
    assert SECRET.encode() not in out


def test_safe_length_holds_back_the_start_of_a_value() -> None:
    """A buffer ending with the start of a value can only be written up to that start."""
    masker = Masker([SECRET])
    assert masker.safe_length(b"hello sk-live/ve") == len(b"hello ")
    assert masker.safe_length(b"hello world") == len(b"hello world")


class Pipes:
    """A relay between real pipes: the test writes as the worker, reads as the terminal."""

    def __init__(self, masker: Masker, on_line: object = None) -> None:
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        self.dst_out_r, self.dst_out_w = os.pipe()
        self.dst_err_r, self.dst_err_w = os.pipe()
        self.relay = Relay(
            {self.out_r: self.dst_out_w, self.err_r: self.dst_err_w},
            masker,
            on_line=on_line,  # type: ignore[arg-type]
        ).start()

    def close_worker(self) -> None:
        for fd in (self.out_w, self.err_w):
            os.close(fd)
        assert self.relay.wait(30), "the relay did not finish"
        for fd in (self.dst_out_w, self.dst_err_w):
            os.close(fd)

    def read_all(self, fd: int) -> bytes:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        os.close(fd)
        return data

    def read_until(self, fd: int, wanted: bytes, timeout: float = 30) -> bytes:
        import select

        data = b""
        deadline = time.monotonic() + timeout
        while wanted not in data:
            left = deadline - time.monotonic()
            assert left > 0, data
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data += os.read(fd, 65536)
        return data


@pytest.fixture
def pipes() -> Iterator[Pipes]:
    """A running relay with a 20-byte secret to mask."""
    yield Pipes(Masker([SECRET]))


def test_stdout_and_stderr_are_relayed_masked_to_their_own_targets(pipes: Pipes) -> None:
    """stdout goes to stdout, stderr to stderr, both masked, lines intact."""
    os.write(pipes.out_w, f"out {SECRET}\nsecond line\n".encode())
    os.write(pipes.err_w, f"err {base64.b64encode(SECRET.encode()).decode()}\n".encode())
    pipes.close_worker()
    assert pipes.read_all(pipes.dst_out_r) == b"out ***\nsecond line\n"
    assert pipes.read_all(pipes.dst_err_r) == b"err ***\n"


def test_a_value_split_across_writes_is_still_masked(pipes: Pipes) -> None:
    """A value written in two pieces, with a pause between, never appears in the output."""
    half = len(SECRET) // 2
    os.write(pipes.out_w, f"key={SECRET[:half]}".encode())
    # After the silence the relay writes what cannot be part of a value, and holds the rest.
    first = pipes.read_until(pipes.dst_out_r, b"key=")
    os.write(pipes.out_w, f"{SECRET[half:]} done\n".encode())
    pipes.close_worker()
    assert first + pipes.read_all(pipes.dst_out_r) == b"key=*** done\n"


@pytest.mark.parametrize("piece", [1, 3, 7, 64])
def test_byte_by_byte_writes_are_masked(pipes: Pipes, piece: int) -> None:
    """However small the writes, the value is masked and the text preserved."""
    text = f"a {SECRET} b\nc {SECRET}\n".encode()
    for start in range(0, len(text), piece):
        os.write(pipes.out_w, text[start : start + piece])
    pipes.close_worker()
    assert pipes.read_all(pipes.dst_out_r) == b"a *** b\nc ***\n"


def test_a_prompt_without_newline_is_shown_after_a_short_silence(pipes: Pipes) -> None:
    """An unfinished line (a prompt) is written once the worker goes quiet."""
    os.write(pipes.out_w, b"Continue? [y/N] ")
    assert pipes.read_until(pipes.dst_out_r, b"[y/N] ") == b"Continue? [y/N] "
    pipes.close_worker()


def test_a_held_back_prefix_is_written_after_the_hold_time(pipes: Pipes) -> None:
    """A tail that looks like the start of a value is held, but not forever."""
    os.write(pipes.out_w, b"prompt sk-")
    start = time.monotonic()
    assert pipes.read_until(pipes.dst_out_r, b"sk-") == b"prompt sk-"
    assert time.monotonic() - start >= HOLD_MAX_S * 0.9
    pipes.close_worker()


def test_an_endless_line_is_written_in_pieces_without_leaking(pipes: Pipes) -> None:
    """A line longer than MAX_LINE is flushed in pieces, and a value on a cut is masked."""
    filler = b"x" * (MAX_LINE - 10)
    os.write(pipes.out_w, filler + SECRET.encode() + b"y" * 100)
    # The worker still holds the line open: the first piece must arrive anyway.
    pipes.read_until(pipes.dst_out_r, b"x" * 1000)
    os.write(pipes.out_w, b"\n")
    pipes.close_worker()
    rest = pipes.read_all(pipes.dst_out_r)
    assert SECRET.encode() not in rest
    assert rest.endswith(b"***" + b"y" * 100 + b"\n")


def test_log_matcher_fires_once_on_the_first_matching_line(pipes: Pipes) -> None:
    """log:REGEX readiness sees complete lines (before masking) and fires once."""
    fired: list[bool] = []
    matcher = log_matcher(r"registered worker", lambda: fired.append(True))
    relay_pipes = Pipes(Masker([SECRET]), on_line=matcher)
    os.write(relay_pipes.out_w, b"starting\n")
    os.write(relay_pipes.out_w, b"INFO registered worker id=AW_1\nregistered worker again\n")
    relay_pipes.close_worker()
    assert fired == [True]
    pipes.close_worker()


@given(st.text(st.characters(exclude_categories=("Cs",))))  # UTF-8 text, as values are
def test_percent_encoding_is_urllib_quote(value: str) -> None:
    """The masker's URL forms are exactly urllib.parse.quote / quote_plus with safe=""."""
    raw = value.encode("utf-8")
    assert percent_encoded(raw).decode() == urllib.parse.quote(value, safe="")
    assert percent_encoded(raw, space=b"+").decode() == urllib.parse.quote_plus(value, safe="")


def test_relay_keeps_the_last_lines_masked(pipes: Pipes) -> None:
    """The relay remembers only the last RECENT_LINES lines, each masked, blank lines skipped."""
    from launcher.process.output import RECENT_LINES

    body = "".join(f"line {i} {SECRET}\n\n" for i in range(RECENT_LINES + 5))
    os.write(pipes.out_w, body.encode())
    os.write(pipes.err_w, b"last words\r\n")
    pipes.close_worker()
    recent = pipes.relay.recent_lines()
    assert len(recent) == RECENT_LINES
    assert recent[-1] == "last words"
    assert f"line {RECENT_LINES + 4} ***" in recent
    assert "line 0 ***" not in recent
    assert not any(SECRET in line for line in recent)


def test_a_mask_during_the_build_waits_for_the_automaton() -> None:
    """A thread masking while another builds the automaton (the first time) masks the value."""
    values = [f"value-{i:04d}-" + "x" * 200 for i in range(400)]  # a build that takes a while
    masker = Masker(values)
    builder = threading.Thread(target=masker.prepare)
    builder.start()
    deadline = time.monotonic() + 30
    while not masker._lock.locked() and builder.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0001)
    masked = masker.mask(f"token {values[123]}\n".encode())
    builder.join()
    assert masked == b"token ***\n"
