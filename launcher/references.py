"""References to secrets by name: `${secret:NAME}` inside env-file values, the toml `env`
table and `--render` templates (as Julep's named references, 1Password's `op inject`).

A reference is resolved against the bound set each time a worker environment is built — at
launch and at every rollout — and the result only ever lives in memory and in the worker's
environment (or its private rendered file): nothing is written back to disk. A reference to a
secret the set does not have is an error, never an empty string: a connection string with a
blank password fails much later and much less clearly. `$${secret:NAME}` is the literal text
`${secret:NAME}`.

The syntax is deliberately not python-dotenv's `${VAR}` interpolation (off: it would read the
launcher's own environment) and cannot be confused with it: `secret:` is not a variable name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from launcher.errors import InvalidInput
from launcher.store.names import SECRET_NAME

OPENING = "${secret:"
# An escaped or a real reference; the name is checked separately, for a precise error.
_REFERENCE = re.compile(r"(\$?)\$\{secret:([^}\n]*)(\}?)")


def has_references(text: str) -> bool:
    return OPENING in text


def resolve(
    text: str,
    secrets: Mapping[str, str],
    *,
    variable: str,
    origin: str,
    set_name: str | None,
) -> str:
    """`text` with every `${secret:NAME}` replaced by the value of NAME in `secrets`.

    `variable` and `origin` name the place in errors ("DATABASE_URL", "--env-file .env").
    InvalidInput (65) for a malformed reference or one to a secret the set does not have.
    """
    if OPENING not in text:
        return text

    def substitute(match: re.Match[str]) -> str:
        escaped, name, closed = match.groups()
        if escaped:
            return match.group(0)[1:]
        if not closed or not SECRET_NAME.fullmatch(name):
            raise InvalidInput(
                f"{origin}: {variable} has a malformed reference {match.group(0)!r} "
                "(write ${secret:NAME} with a secret name, or $${secret:...} for the literal text)"
            )
        if set_name is None or name not in secrets:
            raise InvalidInput(_missing(name, variable, origin, set_name, secrets))
        return secrets[name]

    return _REFERENCE.sub(substitute, text)


def _missing(
    name: str, variable: str, origin: str, set_name: str | None, secrets: Mapping[str, str]
) -> str:
    if set_name is None:
        return (
            f"{origin}: {variable} references secret {name}, but no secret set is bound "
            "(give --secrets SET, or secret_set in agent-run.toml)"
        )
    keys = ", ".join(sorted(secrets)) or "none"
    return (
        f"{origin}: {variable} references secret {name}, which set {set_name!r} does not have "
        f"(its keys: {keys}); add it with `agent-run secrets set {set_name} {name} ...`"
    )


def resolve_all(
    values: Mapping[str, str],
    secrets: Mapping[str, str],
    *,
    origin: str,
    set_name: str | None,
) -> tuple[dict[str, str], list[str]]:
    """Resolve every value: (the resolved values, those that held a reference — to mask)."""
    resolved: dict[str, str] = {}
    composed: list[str] = []
    for variable, value in values.items():
        resolved[variable] = resolve(
            value, secrets, variable=variable, origin=origin, set_name=set_name
        )
        if any(not match.group(1) for match in _REFERENCE.finditer(value)):
            composed.append(resolved[variable])
    return resolved, composed


def render(
    template: str,
    text: str,
    secrets: Mapping[str, str],
    *,
    set_name: str | None,
) -> str:
    """A `--render` template with its references resolved; errors name the template line."""
    if OPENING not in text:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(
        resolve(line, secrets, variable=f"line {n}", origin=template, set_name=set_name)
        for n, line in enumerate(lines, 1)
    )
