"""Metadata of a secret: a description and tags, the way Julep lets secrets be organised.

Metadata is stored in plaintext like the key names (`secrets list` shows it without the master
key), and it is authenticated like them: it lives in the set file's second line, which is part
of the associated data of the sealed values, so an edited description or tag makes the set fail
to open. Because it is plaintext it must never hold a value: it is checked like a name
(characters, sizes), and metadata that contains one of the set's values is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from launcher.errors import InvalidInput

MAX_DESCRIPTION = 256  # characters: a sentence, not a document
MAX_TAGS = 16
TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{0,128}")
# A value at least this long found inside metadata is taken to be that value, not a
# coincidence ("prod" may well appear in a description; an API key will not by chance).
MIN_LEAK_LENGTH = 8
# The tag that makes a secret a file (`secrets set --file`): each process gets a private copy
# and the variable of the secret's name holds its path (launcher/file_secrets.py).
FILE_DELIVERY = ("delivery", "file")


class Metadata(NamedTuple):
    """What a secret says about itself; empty by default."""

    description: str = ""
    tags: tuple[tuple[str, str], ...] = ()  # sorted by tag name

    def __bool__(self) -> bool:
        return bool(self.description or self.tags)

    def tag_dict(self) -> dict[str, str]:
        return dict(self.tags)

    @property
    def is_file(self) -> bool:
        """Delivered as a file (`secrets set --file`), not as a value in the environment."""
        return FILE_DELIVERY in self.tags

    def stored(self) -> dict[str, object]:
        """The fields written to the set file (only the non-empty ones)."""
        data: dict[str, object] = {}
        if self.description:
            data["description"] = self.description
        if self.tags:
            data["tags"] = dict(self.tags)
        return data

    def matches(self, wanted: Iterable[tuple[str, str | None]]) -> bool:
        """Every (name, value) is a tag of this secret; value None: any value."""
        tags = self.tag_dict()
        return all(n in tags and (v is None or tags[n] == v) for n, v in wanted)


def from_stored(key: str, data: Mapping[str, object]) -> Metadata:
    """Metadata read back from a set file; ValueError when it breaks the rules (tampering)."""
    description = data.get("description", "")
    tags = data.get("tags", {})
    if not isinstance(description, str) or not isinstance(tags, dict):
        raise ValueError(key)
    try:
        check_description(key, description)
        checked = {str(n): str(v) for n, v in tags.items()}
        for name, value in checked.items():
            check_tag(key, name, value)
        if len(checked) > MAX_TAGS:
            raise ValueError(key)
    except InvalidInput:
        raise ValueError(key) from None
    return Metadata(description, tuple(sorted(checked.items())))


class MetadataEdit(NamedTuple):
    """A change to one secret's metadata: None/empty fields leave that part as it is."""

    description: str | None = None  # "" clears it
    tags: tuple[tuple[str, str], ...] = ()  # added or replaced
    untag: tuple[str, ...] = ()  # removed
    clear: bool = False  # drop everything first

    def __bool__(self) -> bool:
        return self.description is not None or bool(self.tags or self.untag) or self.clear

    def apply(self, key: str, old: Metadata) -> Metadata:
        base = Metadata() if self.clear else old
        tags = base.tag_dict()
        for name in self.untag:
            tags.pop(name, None)
        tags.update(self.tags)
        if len(tags) > MAX_TAGS:
            raise InvalidInput(f"{key}: at most {MAX_TAGS} tags per secret ({len(tags)} given)")
        description = base.description if self.description is None else self.description
        return Metadata(description, tuple(sorted(tags.items())))


def check_description(key: str, text: str) -> None:
    if len(text) > MAX_DESCRIPTION:
        raise InvalidInput(
            f"{key}: the description is {len(text)} characters long (at most {MAX_DESCRIPTION})"
        )
    if not text.isprintable():
        raise InvalidInput(
            f"{key}: the description must be one line of printable text (no newlines, tabs "
            "or control characters)"
        )


def check_tag(key: str, name: str, value: str) -> None:
    if not TAG_NAME.fullmatch(name):
        raise InvalidInput(
            f"{key}: tag name {name!r} is invalid: 1-64 characters, letters, digits, '_', '.', "
            "'-', starting with a letter"
        )
    if not TAG_VALUE.fullmatch(value):
        raise InvalidInput(
            f"{key}: the value of tag {name!r} is invalid: at most 128 characters, letters, "
            "digits and _ . : / @ + - (no spaces)"
        )


def parse_tag(text: str, *, value_required: bool = True) -> tuple[str, str | None]:
    """`team=voice` -> ("team", "voice"); without `=`, ("team", None) when allowed."""
    name, sep, value = text.partition("=")
    if not sep and value_required:
        raise InvalidInput(f"--tag {text}: write NAME=VALUE (e.g. --tag team=voice)")
    check_tag("--tag", name, value)
    return name, (value if sep else None)


def check_not_a_value(key: str, metadata: Metadata, values: Mapping[str, str]) -> None:
    """Refuse metadata that contains a secret value: it would be stored in plaintext."""
    texts = [metadata.description, *(v for _, v in metadata.tags)]
    for other, value in values.items():
        for text in texts:
            if len(value) >= MIN_LEAK_LENGTH and value in text:
                raise InvalidInput(
                    f"{key}: the metadata contains the value of {other}; metadata is stored "
                    "in plaintext, so it cannot hold a secret value (nothing was changed)"
                )
