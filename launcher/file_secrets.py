"""File secrets: secrets delivered as a private file per process, not as a value.

`agent-run secrets set SET --file NAME=PATH` stores the file's content as secret NAME with
the tag `delivery=file` (store/metadata.FILE_DELIVERY). At each snapshot the bound set's file
secrets leave the environment layer: their content goes to the process's private files
(process/private_files: 0600, owned by the worker's user, removed at reap, swept after a
SIGKILLed launcher) under the secret's name, and the variable NAME holds that file's path
(process/worker.spawn sets it once the directory exists).

Decision: a tag, not a new field of the set format: sets written by older versions open
unchanged, `secrets list` and `--tag delivery=file` show and filter file secrets with no
new code, and `secrets describe SET NAME --untag delivery` turns one back into a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from launcher.errors import UsageError
from launcher.store.metadata import Metadata

# A line of a file at least this long is masked on its own: a JSON field or a PEM line
# printed by the agent, not only the whole file (shorter lines are structure: braces, keys).
MIN_MASKED_LINE = 24


class Delivery(NamedTuple):
    """How a snapshot's secrets reach a process."""

    variables: dict[str, str]  # delivered as values in the environment
    files: dict[str, bytes]  # rendered files and file secrets, by file name
    file_variables: tuple[str, ...]  # file secrets: each variable holds its file's path
    masked: list[str]  # extra values to hide in output (lines of file secrets)


def deliver(
    secrets: Mapping[str, str], metadata: Mapping[str, Metadata], rendered: Mapping[str, bytes]
) -> Delivery:
    """Split `secrets` into values and files; UsageError when a file name is taken twice."""
    names = tuple(sorted(k for k in secrets if k in metadata and metadata[k].is_file))
    files = dict(rendered)
    masked: list[str] = []
    for name in names:
        if name in files:
            raise UsageError(f"--render: {name} is also the name of a file secret")
        content = secrets[name]
        files[name] = content.encode("utf-8")
        masked += [line.strip() for line in content.splitlines() if len(line) >= MIN_MASKED_LINE]
    variables = {k: v for k, v in secrets.items() if k not in names}
    return Delivery(variables, files, names, masked)
