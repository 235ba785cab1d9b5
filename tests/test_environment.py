"""The five environment layers of a worker and their precedence (SPEC §3.1)."""

from __future__ import annotations

import pytest

from launcher.environment import PRIVATE_VARIABLES, EnvironmentLayers, compose


def test_later_layers_win_over_earlier_ones() -> None:
    """env-file beats the inherited environment; the secret set beats the env-file."""
    layers = EnvironmentLayers(
        inherited={"A": "inherited", "B": "inherited", "C": "inherited"},
        env_files={"B": "file", "C": "file"},
        secrets={"C": "secret"},
    )
    env = compose(layers, worker=0)
    assert (env["A"], env["B"], env["C"]) == ("inherited", "file", "secret")


@pytest.mark.parametrize("name", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"])
def test_platform_credentials_cannot_be_overridden(name: str) -> None:
    """A stored platform credential wins over env-file and secret set alike."""
    layers = EnvironmentLayers(
        inherited={name: "inherited"},
        env_files={name: "file"},
        secrets={name: "secret"},
        platform={name: "platform"},
    )
    assert compose(layers, worker=0)[name] == "platform"


def test_inherited_platform_credentials_beat_env_files() -> None:
    """Without `platform set`, the launcher's own credentials still cannot be overridden."""
    layers = EnvironmentLayers(
        inherited={"LIVEKIT_URL": "wss://real"}, env_files={"LIVEKIT_URL": "wss://dev"}
    )
    assert compose(layers, worker=0)["LIVEKIT_URL"] == "wss://real"


def test_stored_platform_credentials_fall_back_per_name() -> None:
    """A credential not stored with `platform set` comes from the launcher's environment."""
    layers = EnvironmentLayers(
        inherited={"LIVEKIT_API_KEY": "from-env"}, platform={"LIVEKIT_URL": "wss://stored"}
    )
    env = compose(layers, worker=0)
    assert env["LIVEKIT_URL"] == "wss://stored"
    assert env["LIVEKIT_API_KEY"] == "from-env"


def test_private_variables_never_reach_a_worker() -> None:
    """The master key, key file, credentials directory and systemd variables are stripped."""
    layers = EnvironmentLayers(inherited={name: "x" for name in PRIVATE_VARIABLES} | {"K": "v"})
    env = compose(layers, worker=0)
    assert not PRIVATE_VARIABLES & env.keys()
    assert env["K"] == "v"


def test_runtime_layer_is_set_last() -> None:
    """Slot, secrets version, port and our NOTIFY_SOCKET override anything below."""
    layers = EnvironmentLayers(
        inherited={"NOTIFY_SOCKET": "/run/systemd/notify"},
        env_files={"AGENT_RUN_WORKER": "99", "AGENT_RUN_PORT": "1"},
        secrets_version=7,
    )
    env = compose(layers, worker=2, port=8002, notify_socket="/tmp/ours.sock")
    assert env["AGENT_RUN_WORKER"] == "2"
    assert env["AGENT_RUN_SECRETS_VERSION"] == "7"
    assert env["AGENT_RUN_PORT"] == "8002"
    assert env["NOTIFY_SOCKET"] == "/tmp/ours.sock"


def test_python_targets_are_unbuffered_unless_set() -> None:
    """PYTHONUNBUFFERED=1 for Python targets, but an explicit setting is respected."""
    assert (
        compose(EnvironmentLayers(inherited={}, python_target=True), worker=0)["PYTHONUNBUFFERED"]
        == "1"
    )
    kept = EnvironmentLayers(inherited={"PYTHONUNBUFFERED": "0"}, python_target=True)
    assert compose(kept, worker=0)["PYTHONUNBUFFERED"] == "0"
    assert "PYTHONUNBUFFERED" not in compose(EnvironmentLayers(inherited={}), worker=0)


def test_repr_never_shows_values() -> None:
    """Printing the layers (a log, a traceback) shows key names, never values."""
    layers = EnvironmentLayers(
        inherited={},
        secrets={"API_KEY": "sk-should-not-show"},
        platform={"LIVEKIT_API_SECRET": "p-x"},
    )
    text = repr(layers)
    assert "API_KEY" in text and "sk-should-not-show" not in text and "p-x" not in text
