"""`Plan`: what the run command hands a mode, resolved and validated.

Its own module so that the host, worker mode and session mode share it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, NamedTuple

from launcher.config import RunConfig
from launcher.environment import EnvironmentLayers

if TYPE_CHECKING:
    from pathlib import Path

    from launcher.store.source import SecretsSource, Snapshot


class Plan(NamedTuple):
    """What the run command hands a mode, resolved and validated.

    `source` is the one way to the secrets (store/source.py): `source.snapshot()` for a new
    generation of workers, `source.fingerprint()` to tell whether the store moved on.
    `initial` is the snapshot the first workers start with. The other names below are views
    of these two, kept for the modes that read them.
    """

    config: RunConfig
    source: SecretsSource
    initial: Snapshot
    name: str
    secret_set: str | None
    watch_dir: str | None = None  # the store directory, watched for new versions
    run_dir: str | None = None  # control socket directory
    code_dir: Path | None = None  # `agent-run dev`: restart when a .py file here changes

    @property
    def layers(self) -> EnvironmentLayers:
        return self.initial.layers

    @property
    def masked_values(self) -> list[str]:
        return self.initial.masked

    @property
    def initial_fingerprint(self) -> Hashable:
        """The initial snapshot's fingerprint; None when nothing is watched (as `fingerprint`)."""
        return self.initial.fingerprint if self.watch_dir is not None else None

    @property
    def fingerprint(self) -> Callable[[], Hashable] | None:
        return self.source.fingerprint if self.watch_dir is not None else None

    def reload(self) -> tuple[EnvironmentLayers, list[str]]:
        """A new snapshot's layers and values to mask; LauncherError when not usable."""
        snapshot = self.source.snapshot()
        return snapshot.layers, snapshot.masked

    def __repr__(self) -> str:
        return f"Plan(name={self.name!r}, secret_set={self.secret_set!r}, layers={self.layers!r})"
