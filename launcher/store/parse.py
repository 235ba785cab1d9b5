"""Secret input: the command-line pair grammar and dotenv files (SPEC §2.4).

The shell has already removed its own quotes, so the grammar takes tokens verbatim:
- `KEY=VALUE`: the key is what precedes the first `=`, the value everything after it;
- `KEY==VALUE` is `KEY=VALUE` (Pipecat documents `KEY1==value=with=equals`);
- a token without `=` is a key and the next token is its value, verbatim — which is also how
  a value that begins with `=` is stored.
Names and values are checked by the caller (names.py); this module only splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from launcher.errors import InvalidInput, UsageError

# pathlib only in annotations: callers hand in Path objects, and `secrets set KEY=VALUE`
# never needs pathlib (~4 ms to import).
if TYPE_CHECKING:
    from pathlib import Path


def parse_pairs(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """Split command-line tokens into (key, value) pairs, in order."""
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        key, sep, value = token.partition("=")
        if sep:
            if value.startswith("="):
                value = value[1:]
            pairs.append((key, value))
            index += 1
            continue
        if index + 1 >= len(tokens):
            raise UsageError(
                f"{token} has no value: write {token}=VALUE, or {token} VALUE (two words)"
            )
        pairs.append((token, tokens[index + 1]))
        index += 2
    return pairs


class FileEntries(NamedTuple):  # not a dataclass: `dataclasses` costs `secrets set` ~6 ms
    """What a dotenv file holds, split by what is to be done with each entry."""

    values: dict[str, str]
    empty: list[str]  # keys with an empty value (an error unless --ignore-empty)


def read_dotenv(path: Path) -> FileEntries:
    """Parse a dotenv file with python-dotenv: quotes, escapes, `export`, multi-line values.

    Interpolation is off: `${VAR}` must not pull values from the launcher's own environment.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a directory, not a dotenv file") from None
    except PermissionError:
        from launcher.errors import PermissionProblem

        raise PermissionProblem(f"cannot read {path}: permission denied") from None
    except OSError as error:  # a symlink loop, a name too long, not a directory...
        raise InvalidInput(f"cannot read {path}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not part of a key
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None
    return parse_dotenv(text, str(path))


def parse_dotenv(text: str, origin: str) -> FileEntries:
    """Parse dotenv text (see `read_dotenv`); `origin` names the source in errors.

    The text goes to python-dotenv as a stream we decoded ourselves rather than as a path:
    python-dotenv opens paths with universal newlines, which turns a `\r` inside a quoted
    value into `\n` — the value would not be preserved exactly.
    """
    import io
    import logging

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    # python-dotenv reports unparsable lines through `logging` with the line's text, which
    # may hold a value; we report them ourselves by line number instead.
    for binding in parse_stream(io.StringIO(text, newline="")):
        if binding.error:
            raise InvalidInput(
                f"{origin}: line {binding.original.line} is not KEY=VALUE (fix or remove it)"
            )
    dotenv_logger = logging.getLogger("dotenv.main")
    saved = dotenv_logger.disabled
    dotenv_logger.disabled = True
    try:
        parsed = dotenv_values(stream=io.StringIO(text, newline=""), interpolate=False)
    finally:
        dotenv_logger.disabled = saved
    values: dict[str, str] = {}
    empty: list[str] = []
    for key, value in parsed.items():
        if value is None or value == "":
            empty.append(key)
        else:
            values[key] = value
    return FileEntries(values=values, empty=empty)


DISCOVERED_FILES: tuple[str, ...] = (".env", ".env.local", ".env.production")


def discover(directory: Path) -> list[Path]:
    """The dotenv files `secrets set` looks for when given nothing to set."""
    return [directory / name for name in DISCOVERED_FILES if (directory / name).is_file()]


def duplicates(keys: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for key in keys:
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    return repeated
