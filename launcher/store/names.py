"""Rules for secret names, set names and values (SPEC §2.3), checked on every write.

The secret-name rule is the intersection of what LiveKit Cloud, Pipecat Cloud and Julep
accept, so a set can move to any of them. Errors name the key and the broken rule and, where
one exists, suggest the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from launcher.errors import InvalidInput

PLATFORM_CREDENTIALS: tuple[str, ...] = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
RESERVED_PREFIX = "AGENT_RUN_"

SECRET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_VALUE_BYTES = 16 * 1024
# Linux caps argv + environment at a quarter of the stack limit (2 MiB with the usual 8 MiB
# stack) and each "KEY=VALUE" string at 128 KiB (MAX_ARG_STRLEN). A set may use half of the
# 2 MiB so the inherited environment and argv always fit beside it; checked when writing, so
# a launch never discovers E2BIG at spawn time.
MAX_SET_BYTES = 1024 * 1024


def _suggest(name: str) -> str | None:
    fixed = re.sub(r"[^A-Za-z0-9_]", "_", name)
    fixed = re.sub(r"^[^A-Za-z]+", "", fixed)[:64]
    if fixed and fixed != name and SECRET_NAME.fullmatch(fixed):
        return fixed
    return None


def secret_name_problem(name: str) -> str | None:
    """Why `name` is not a valid secret name, or None when it is."""
    if SECRET_NAME.fullmatch(name):
        return None
    if not name:
        rule = "a secret name cannot be empty"
    elif len(name) > 64:
        rule = f"secret name {name[:20]}... is {len(name)} characters long (at most 64)"
    elif not name[0].isascii() or not name[0].isalpha():
        rule = f"secret name {name!r} must start with a letter"
    else:
        rule = f"secret name {name!r} may only contain letters, digits and _"
    suggestion = _suggest(name)
    return f"{rule}; did you mean {suggestion}?" if suggestion else rule


# agent-run's own credentials kept in a set: sealed like the agent's, never given to it.
AGENT_RUN_SECRETS = frozenset({"AGENT_RUN_API_TOKEN"})  # session mode's bearer token


def is_reserved(name: str) -> bool:
    if name in AGENT_RUN_SECRETS:
        return False
    return name in PLATFORM_CREDENTIALS or name.startswith(RESERVED_PREFIX)


def reserved_message(name: str) -> str:
    if name in PLATFORM_CREDENTIALS:
        return f"{name} is provided by the platform and cannot be set as a secret"
    return f"{name} starts with {RESERVED_PREFIX}, which is reserved for agent-run itself"


def check_secret_name(name: str) -> None:
    problem = secret_name_problem(name)
    if problem:
        raise InvalidInput(problem)
    if is_reserved(name):
        raise InvalidInput(reserved_message(name))


def check_value(name: str, value: str) -> None:
    """Non-empty UTF-8 text without NUL, at most 16 KiB encoded. Never shows the value."""
    if value == "":
        raise InvalidInput(f"{name} has an empty value; a secret cannot be empty")
    if "\x00" in value:
        raise InvalidInput(f"{name}: values cannot contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"{name}: the value is not valid UTF-8 text") from None
    if size > MAX_VALUE_BYTES:
        raise InvalidInput(f"{name}: the value is {size} bytes long (at most {MAX_VALUE_BYTES})")


def check_set_name(name: str) -> None:
    if not SET_NAME.fullmatch(name):
        raise InvalidInput(
            f"set name {name!r} is invalid: 1-64 characters, letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )


def environment_size(values: Mapping[str, str]) -> int:
    """Bytes the values take in a process environment ("KEY=VALUE\\0" each)."""
    return sum(len(k.encode()) + len(v.encode()) + 2 for k, v in values.items())


def check_set_size(set_name: str, values: Mapping[str, str]) -> None:
    size = environment_size(values)
    if size > MAX_SET_BYTES:
        raise InvalidInput(
            f"set {set_name!r} would take {size} bytes of environment (at most {MAX_SET_BYTES}, "
            "so that it always fits in a process environment); split it into smaller sets"
        )
