"""Name and value rules at their boundaries (SPEC §2.3)."""

from __future__ import annotations

import pytest

from launcher.errors import InvalidInput
from launcher.store.names import (
    MAX_SET_BYTES,
    MAX_VALUE_BYTES,
    check_secret_name,
    check_set_name,
    check_set_size,
    check_value,
)


@pytest.mark.parametrize("name", ["A", "a", "A" * 64, "OPENAI_API_KEY", "k9_", "Z_1"])
def test_valid_secret_names(name: str) -> None:
    """Names that every target cloud accepts pass."""
    check_secret_name(name)


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("", "empty"),
        ("A" * 65, "at most 64"),
        ("1KEY", "start with a letter"),
        ("_KEY", "start with a letter"),
        ("MY-KEY", "did you mean MY_KEY?"),
        ("MY.KEY", "did you mean MY_KEY?"),
        ("KEY WITH SPACE", "letters, digits and _"),
        ("CLÉ", "letters, digits and _"),
    ],
)
def test_invalid_secret_names_explain_the_rule(name: str, hint: str) -> None:
    """Each broken rule is named in the error, with a suggested fix where one exists."""
    with pytest.raises(InvalidInput, match=hint):
        check_secret_name(name)


@pytest.mark.parametrize(
    "name", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "AGENT_RUN_X", "AGENT_RUN_"]
)
def test_reserved_names_are_refused(name: str) -> None:
    """Platform credentials and the AGENT_RUN_ prefix cannot be secrets."""
    with pytest.raises(InvalidInput, match=r"platform|reserved"):
        check_secret_name(name)


@pytest.mark.parametrize(
    "value", ["x", " padded ", "a=b", 'q"uote', "back\\slash", "-----BEGIN\nK\n"]
)
def test_valid_values(value: str) -> None:
    """Any non-empty text without NUL is a value."""
    check_value("K", value)


def test_value_size_boundary() -> None:
    """16 KiB encoded is allowed; one byte more is not (multi-byte characters count as bytes)."""
    check_value("K", "x" * MAX_VALUE_BYTES)
    with pytest.raises(InvalidInput, match="at most"):
        check_value("K", "x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(InvalidInput, match="at most"):
        check_value("K", "é" * (MAX_VALUE_BYTES // 2 + 1))


@pytest.mark.parametrize(("value", "hint"), [("", "empty"), ("a\x00b", "NUL"), ("\udcff", "UTF-8")])
def test_invalid_values(value: str, hint: str) -> None:
    """Empty, NUL and undecodable values are refused without showing the value."""
    with pytest.raises(InvalidInput, match=hint) as caught:
        check_value("K", value)
    if value:
        assert value not in str(caught.value)


@pytest.mark.parametrize("name", ["prod", "a", "my-secrets", "v1.2_x", "9" * 64])
def test_valid_set_names(name: str) -> None:
    """Set names: letters, digits, _ . - and at most 64 characters."""
    check_set_name(name)


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "..", "x" * 65, "a b", "_platform"])
def test_set_names_cannot_escape_the_store(name: str) -> None:
    """No path separators, no leading dot/underscore, no overlong names."""
    with pytest.raises(InvalidInput):
        check_set_name(name)


def test_set_size_bound() -> None:
    """A set that would not fit beside a process environment is refused when written."""
    check_set_size("s", {"K": "x" * 1000})
    big = {f"K{i}": "x" * MAX_VALUE_BYTES for i in range(MAX_SET_BYTES // MAX_VALUE_BYTES + 1)}
    with pytest.raises(InvalidInput, match="smaller sets"):
        check_set_size("s", big)
