"""Plain data passed between the layers: secret values, secret sets, set summaries.

They have no behaviour beyond what keeps a value from leaking:
`Secret` never shows its value in a repr or str, so an accidental log or f-string prints
`***` instead.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Secret:
    """A secret value. `reveal()` is the one way to read it; everything else shows `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the value somewhere we do not control.
        raise TypeError("Secret values cannot be pickled")


class SetStatus(enum.Enum):
    """A set is `ready` once written and read back; `failed` if that verification failed."""

    READY = "ready"
    FAILED = "failed"


class SecretSet:
    """One decrypted version of a named secret set (its repr shows names, never values)."""

    __slots__ = ("name", "status", "values", "version")

    def __init__(
        self,
        name: str,
        version: int,
        values: Mapping[str, Secret],
        status: SetStatus = SetStatus.READY,
    ) -> None:
        self.name = name
        self.version = version
        self.values = values
        self.status = status

    def __repr__(self) -> str:
        return f"SecretSet(name={self.name!r}, version={self.version}, keys={sorted(self.values)})"

    def plain(self) -> dict[str, str]:
        """The values as plain strings, for building a child environment."""
        return {key: secret.reveal() for key, secret in self.values.items()}
