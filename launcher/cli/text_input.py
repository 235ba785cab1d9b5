"""A text file an option names (`--file NAME=PATH`, `--render TEMPLATE:DEST`), read whole.

One reader, so both options refuse the same inputs with the same lines: missing (65), a
directory (65), unreadable (77), over the option's size bound (65), not UTF-8 (65).
"""

from __future__ import annotations

from launcher.errors import InvalidInput, PermissionProblem


def read_text(path: str, label: str, limit: int, *, hint: str = "") -> str:
    """The file's text; `label` names it in every error line (e.g. "--file KEY: ./sa.json")."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(limit + 1)  # one byte more tells "too large" without reading it all
    except FileNotFoundError:
        raise InvalidInput(f"{label} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput(f"{label} is a directory") from None
    except PermissionError:
        raise PermissionProblem(f"{label}: cannot read it: permission denied") from None
    if len(data) > limit:
        raise InvalidInput(f"{label} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{label} is not UTF-8 text{hint}") from None
