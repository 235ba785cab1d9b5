"""The environment of a worker, built from five layers (SPEC §3.1); later layers win.

1. the launcher's own environment, minus its private variables;
2. `--env-file` files (plain development values);
3. the bound secret set;
4. platform credentials, which nothing above can override;
5. runtime variables set by the launcher for this worker.

This module is pure: it takes mappings and returns a new dict, so every precedence rule can
be tested without a process, and the supervisor can rebuild an environment for a new
secrets version without touching the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from launcher.store.names import PLATFORM_CREDENTIALS

# Never inherited by a worker: the master key and where it comes from, and the systemd
# handshake variables that address the launcher itself (a worker that used the launcher's
# NOTIFY_SOCKET would tell systemd the whole service is ready, or stopping).
PRIVATE_VARIABLES: frozenset[str] = frozenset(
    {
        "AGENT_RUN_MASTER_KEY",
        "AGENT_RUN_API_TOKEN",  # the session API's bearer token: for callers, not the agent
        "AGENT_RUN_KEY_FILE",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "AGENT_RUN_FILES",  # set per process when it has private files (process/private_files)
    }
)


PYTHON_BOOTSTRAP = os.path.join(os.path.dirname(__file__), "process", "python_bootstrap")


class EnvironmentLayers(NamedTuple):
    """Everything a worker's environment is made of, except the per-worker runtime layer.

    Never log or print one: it holds secret values (a NamedTuple keeps the launch path free
    of `dataclasses`; the values are only ever read by `compose`).
    """

    inherited: Mapping[str, str]
    env_files: Mapping[str, str] = {}
    secrets: Mapping[str, str] = {}
    platform: Mapping[str, str] = {}
    secrets_version: int | None = None
    python_target: bool = False
    # `--render` output, DEST -> content: written per process to its private directory.
    files: Mapping[str, bytes] = {}
    # File secrets (`secrets set --file`): their content is in `files` under their name, and
    # each names a variable that holds the path of the process's private copy.
    file_variables: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # A NamedTuple's default repr would print every secret value.
        return (
            f"EnvironmentLayers(secrets_version={self.secrets_version}, "
            f"secrets={sorted(self.secrets)}, platform={sorted(self.platform)}, "
            f"files={sorted(self.files)})"
        )


def platform_layer(stored: Mapping[str, str], inherited: Mapping[str, str]) -> dict[str, str]:
    """Platform credentials, each from `agent-run platform set`, else the launcher's own."""
    layer: dict[str, str] = {}
    for name in PLATFORM_CREDENTIALS:
        value = stored.get(name, inherited.get(name))
        if value is not None:
            layer[name] = value
    return layer


def compose(
    layers: EnvironmentLayers,
    *,
    worker: int,
    port: int | None = None,
    notify_socket: str | None = None,
) -> dict[str, str]:
    """Build the environment of worker slot `worker`."""
    env = {k: v for k, v in layers.inherited.items() if k not in PRIVATE_VARIABLES}
    env.update(layers.env_files)
    env.update((k, v) for k, v in layers.secrets.items() if k not in PRIVATE_VARIABLES)
    env.update(platform_layer(layers.platform, layers.inherited))
    if layers.python_target:
        # Lines must reach the relay as they are written, not when a 8 KiB buffer fills.
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Our start-up hook (launcher/process/python_bootstrap): LiveKit's default health port
        # becomes this worker's own, so pool members and replacements never collide on 8081.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (PYTHON_BOOTSTRAP, env.get("PYTHONPATH"))))
    env["AGENT_RUN_WORKER"] = str(worker)
    if layers.secrets_version is not None:
        env["AGENT_RUN_SECRETS_VERSION"] = str(layers.secrets_version)
    if port is not None:
        env["AGENT_RUN_PORT"] = str(port)
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    return env
