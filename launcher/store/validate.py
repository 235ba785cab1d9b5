"""The shape of a set file's plaintext lines, checked before any field is used.

Authenticated decryption proves a whole set file is the one agent-run wrote, but listing,
history and the first steps of every read parse the plaintext header, metadata and history
lines before (or without) that check. A damaged field of the wrong type (`"version": "x"`,
`null`, missing, `"change": 5`) then surfaced as ValueError, TypeError, KeyError or
AttributeError tracebacks from `history` and `rollback` (issue #15). Each line goes through
one function here, which returns it unchanged when every field the store reads has the type
it expects and raises `Malformed` otherwise; the store turns that into its one "damaged"
error (exit 78). Unknown extra fields are allowed: a newer format may add some.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

CHANGE_LISTS = ("added", "changed", "removed", "described")


class Malformed(ValueError):
    """A set file's line lacks a field or holds one of the wrong type (says which)."""


def _int(data: dict[str, Any], field: str, minimum: int) -> None:
    value = data.get(field)
    # bool is an int subclass: `"version": true` is as damaged as `"version": "x"`.
    if type(value) is not int or value < minimum:
        raise Malformed(f"{field} is not an integer >= {minimum}")


def _str(data: dict[str, Any], field: str) -> None:
    if not isinstance(data.get(field), str):
        raise Malformed(f"{field} is not a string")


def header(data: Any) -> dict[str, Any]:
    """Line 1: what `secrets list`, `current_version()` and every read use."""
    if not isinstance(data, dict):
        raise Malformed("the header is not an object")
    _int(data, "format", 1)
    _int(data, "version", 1)
    _int(data, "count", 0)
    if "values_version" in data:  # the last version that changed values (absent: `version`)
        _int(data, "values_version", 1)
    for field in ("set", "status", "updated", "key_id", "data_key"):
        _str(data, field)
    return data


def change(data: Any) -> dict[str, list[str]]:
    """What one version changed: lists of key names under added/changed/removed/described."""
    if not isinstance(data, dict) or not set(data) <= set(CHANGE_LISTS):
        raise Malformed("a change is not an object of added/changed/removed")
    for names in data.values():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise Malformed("a change does not list key names")
    return data


def meta(data: Any) -> dict[str, Any]:
    """Line 2: key names with their times, the creation time, what the last change did.

    A key's description and tags are checked by `metadata.from_stored`, which knows their rules.
    """
    if not isinstance(data, dict):
        raise Malformed("the metadata is not an object")
    keys = data.get("keys")
    if not isinstance(keys, dict):
        raise Malformed("keys is not an object")
    for entry in keys.values():
        if not isinstance(entry, dict):
            raise Malformed("a key's entry is not an object")
        _str(entry, "created")
        _str(entry, "updated")
    if "created" in data:
        _str(data, "created")
    change(data.get("change"))
    return data


def history(data: Any) -> list[dict[str, Any]]:
    """Line 3: the kept earlier versions, each with its time, change and sealed values."""
    if not isinstance(data, list):
        raise Malformed("the history is not a list")
    for entry in data:
        if not isinstance(entry, dict):
            raise Malformed("a history entry is not an object")
        _int(entry, "version", 1)
        _str(entry, "updated")
        _str(entry, "sealed")
        change(entry.get("change"))
    return data
