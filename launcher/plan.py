"""`Plan`: what the run command hands a mode, resolved and validated.

Its own module so that the host, worker mode and session mode share it without importing
each other. On the launch critical path: no `typing` (see record.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from launcher.config import RunConfig
from launcher.environment import EnvironmentLayers
from launcher.record import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (launch path)
if TYPE_CHECKING:
    from pathlib import Path


class Plan(NamedTuple):
    """What the run command hands the supervisor, resolved and validated."""

    config: RunConfig
    layers: EnvironmentLayers
    masked_values: list[str]
    # Re-reads the store (and env files) for a rollout: returns the new layers and the
    # values to mask; raises LauncherError when the new version is not usable.
    reload: Callable[[], tuple[EnvironmentLayers, list[str]]]
    name: str
    secret_set: str | None
    watch_dir: str | None = None  # the store directory, watched for new versions
    fingerprint: Callable[[], Hashable] | None = None
    initial_fingerprint: Hashable = None
    run_dir: str | None = None  # control socket directory
    code_dir: Path | None = None  # `agent-run dev`: restart when a .py file here changes

    def __repr__(self) -> str:
        return f"Plan(name={self.name!r}, secret_set={self.secret_set!r}, layers={self.layers!r})"
