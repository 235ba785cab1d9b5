"""Masking of quoted forms (JSON, repr) and the cost of holding back a value's start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.process.output import Masker

QUOTED = 'pa"ss\\word-42'  # a value with a quote and a backslash
PEM = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----\n"
UNICODE = "clé-secrète-ü-42"


@pytest.mark.parametrize(
    "printed",
    [
        json.dumps({"password": QUOTED}),  # a JSON body or a structured log line
        json.dumps(QUOTED),
        repr({"password": QUOTED}),  # print(config) of a dict
        repr(QUOTED.encode()),
        json.dumps({"key": PEM}),  # a PEM key on one line: \n escaped
        repr(PEM),
        json.dumps(UNICODE),  # \u00e9 escapes
        json.dumps(UNICODE, ensure_ascii=False),
        repr(UNICODE.encode()),  # \xc3\xa9 escapes
    ],
)
def test_quoted_forms_are_masked(printed: str) -> None:
    """JSON-escaped and repr-escaped spellings of a value are masked like the value."""
    masker = Masker([QUOTED, PEM, UNICODE])
    masked = masker.mask_text(printed)
    assert "***" in masked
    for value in (QUOTED, PEM, UNICODE):
        for form in (json.dumps(value)[1:-1], repr(value)[1:-1], value):
            assert form not in masked


def test_quoted_forms_are_masked_end_to_end() -> None:
    """An agent printing json.dumps of its secret shows *** through the relay."""
    script = (
        "import json, os\n"
        "print(json.dumps({'password': os.environ['PROBE_SECRET_1']}))\n"
        "print(repr(os.environ['PROBE_SECRET_1']))\n"
    )
    import os

    from launcher.process.output import Relay

    read_end, write_end = os.pipe()
    out_read, out_write = os.pipe()
    masker = Masker([QUOTED])
    relay = Relay({read_end: out_write}, masker).start()
    child = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROBE_SECRET_1": QUOTED},
        stdout=write_end,
        check=True,
    )
    assert child.returncode == 0
    os.close(write_end)
    assert relay.wait(60)
    os.close(out_write)
    with os.fdopen(out_read, "rb") as stream:
        shown = stream.read().decode()
    assert shown == '{"password": "***"}\n\'***\'\n'


def _naive_first(patterns: set[bytes], data: bytes) -> int:
    """The definition: start of the longest tail of data that is a proper prefix of a form."""
    for start in range(len(data)):
        tail = data[start:]
        if any(len(p) > len(tail) and p.startswith(tail) for p in patterns):
            return start
    return len(data)


@given(
    st.sets(st.binary(min_size=4, max_size=30), min_size=1, max_size=5),
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=29),
)
@settings(max_examples=300)
def test_held_back_tail_matches_the_definition(patterns: set[bytes], data: bytes, cut: int) -> None:
    """The indexed search finds the same tail as trying every prefix of every form."""
    from launcher.process.output import _Starts

    pattern = sorted(patterns)[0]
    data = data + pattern[:cut]  # often end with the start of a form
    assert _Starts(patterns).first(data) == _naive_first(patterns, data)


def test_long_value_start_is_held_back() -> None:
    """The first half of a 16 KiB value at the end of an unfinished line waits for the rest."""
    value = "v" + "0123456789abcdef" * 1024
    masker = Masker([value])
    line = b"token: " + value[:8000].encode()
    assert masker.safe_length(line) == len(b"token: ")
    assert masker.safe_length(b"Enter the code: ") == len(b"Enter the code: ")
