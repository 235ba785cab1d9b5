"""The command-line pair grammar and dotenv input (SPEC §2.4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.cli.store_commands import split_tokens
from launcher.errors import InvalidInput, UsageError
from launcher.store.parse import parse_dotenv, parse_pairs, read_dotenv

values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
)
keys = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)


@given(keys, values)
def test_key_value_pair_round_trips(key: str, value: str) -> None:
    """KEY VALUE (two tokens) stores any value exactly, including a leading '='."""
    assert parse_pairs([key, value]) == [(key, value)]


@given(keys, values.filter(lambda v: not v.startswith("=")))
def test_key_equals_value_round_trips(key: str, value: str) -> None:
    """KEY=VALUE keeps everything after the first '=' verbatim."""
    assert parse_pairs([f"{key}={value}"]) == [(key, value)]


@given(keys, values)
def test_double_equals_round_trips(key: str, value: str) -> None:
    """KEY==VALUE is KEY=VALUE, whatever VALUE holds."""
    assert parse_pairs([f"{key}=={value}"]) == [(key, value)]


@given(keys, values.filter(lambda v: v != "--stdin"))
def test_split_tokens_keeps_values_that_look_like_options(key: str, value: str) -> None:
    """After a bare key the next token is its value, even `--json` or `-x` (not `--stdin`)."""
    options, pairs = split_tokens(["prod", key, value, "--json"])
    assert options == ["prod", "--json"]
    assert pairs == [key, value]


def test_key_then_stdin_reads_that_key_from_stdin() -> None:
    """`KEY --stdin` is `--stdin KEY`; two --stdin are a usage error, not a silent choice."""
    options, pairs = split_tokens(["prod", "A=1", "OPENAI_API_KEY", "--stdin", "--tag", "t=v"])
    assert options == ["prod", "--stdin", "OPENAI_API_KEY", "--tag", "t=v"]
    assert pairs == ["A=1"]
    with pytest.raises(UsageError, match="--stdin"):
        split_tokens(["prod", "A", "--stdin", "--stdin", "B"])


def test_key_without_value_is_a_usage_error() -> None:
    """A trailing bare key says how to give it a value."""
    with pytest.raises(UsageError, match="B=VALUE"):
        parse_pairs(["A=1", "B"])


def test_dotenv_file_features(tmp_path: Path) -> None:
    """Quotes, escapes, `export`, multi-line values, no interpolation."""
    env = tmp_path / "secrets.env"
    env.write_text(
        'export A="x y"\n'
        "B='single $HOME'\n"
        'C="line1\nline2"\n'
        "D=${HOME}\n"
        'E="with \\"quotes\\""\n'
        "# comment\n"
        "F=plain # trailing comment\n"
    )
    entries = read_dotenv(env)
    assert entries.values == {
        "A": "x y",
        "B": "single $HOME",
        "C": "line1\nline2",
        "D": "${HOME}",
        "E": 'with "quotes"',
        "F": "plain",
    }


def test_dotenv_empty_entries_are_listed(tmp_path: Path) -> None:
    """Empty values are reported by name, for --ignore-empty or an error."""
    env = tmp_path / "e.env"
    env.write_text("A=1\nB=\nC\n")
    entries = read_dotenv(env)
    assert entries.values == {"A": "1"}
    assert sorted(entries.empty) == ["B", "C"]


def test_dotenv_unparsable_line_names_the_line_not_the_text(tmp_path: Path) -> None:
    """A broken line is reported by number; its text (maybe a value) is not echoed."""
    env = tmp_path / "e.env"
    env.write_text("A=1\nthis is sk-secret-ish garbage\n")
    with pytest.raises(InvalidInput, match="line 2") as caught:
        read_dotenv(env)
    assert "sk-secret" not in str(caught.value)


def _dotenv_quoted(value: str) -> str:
    """How a tool writing a dotenv file quotes a value (double quotes, \\ and " escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(keys, values)
def test_dotenv_double_quoted_value_round_trips(key: str, value: str) -> None:
    """Any value, double-quoted and escaped in a dotenv file, is read back exactly (CR too)."""
    entries = parse_dotenv(f"{key}={_dotenv_quoted(value)}\n", "test.env")
    assert entries.values == {key: value}


@given(keys, values.filter(lambda v: "'" not in v and "\\" not in v))
def test_dotenv_single_quoted_value_round_trips(key: str, value: str) -> None:
    """A single-quoted value without ' or \\ is read back exactly: no escapes, no ${} expansion."""
    entries = parse_dotenv(f"export {key}='{value}'\n", "test.env")
    assert entries.values == {key: value}


def test_dotenv_file_keeps_carriage_returns_and_drops_a_bom(tmp_path: Path) -> None:
    """A CR inside a quoted value survives the file round-trip; a UTF-8 BOM is not part of a key."""
    env = tmp_path / "crlf.env"
    env.write_bytes(b'\xef\xbb\xbfA="x\ry"\r\nB=plain\r\n')
    assert read_dotenv(env).values == {"A": "x\ry", "B": "plain"}


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"A=\xff\n", "not UTF-8"), (None, "does not exist")],
)
def test_dotenv_unreadable_files_are_bad_input(
    tmp_path: Path, content: bytes | None, error: str
) -> None:
    """A missing or non-UTF-8 file is InvalidInput naming the file."""
    env = tmp_path / "bad.env"
    if content is not None:
        env.write_bytes(content)
    with pytest.raises(InvalidInput, match=error):
        read_dotenv(env)
