"""The control socket: one JSON line in, one out, 0600, removed on exit, one per name."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from launcher.errors import ConfigError, UsageError
from launcher.ops import control
from launcher.ops.status import PoolStatus, WorkerState, WorkerStatus, as_dict

pytestmark = pytest.mark.anyio


def _status() -> PoolStatus:
    return PoolStatus(
        name="prod",
        pid=1,
        secret_set="prod",
        version=3,
        workers=(WorkerStatus(slot=0, pid=42, state=WorkerState.READY, version=3),),
    )


def _handlers(reloads: list[int] | None = None) -> control.Handlers:
    async def reload() -> dict[str, Any]:
        if reloads is not None:
            reloads.append(1)
        return {"ok": True, "result": "succeeded"}

    return control.Handlers(status=lambda: as_dict(_status()), reload=reload)


async def test_status_round_trip(tmp_path: Path) -> None:
    """A client gets the published status as JSON over a real Unix socket."""
    async with control.serving(tmp_path / "run", "prod", _handlers()) as path:
        answer = await anyio.to_thread.run_sync(control.request, path, "status")
    assert answer["ok"] is True
    assert answer["status"]["workers"][0]["state"] == "ready"
    assert answer["status"]["ready_on_current"] == 1


async def test_reload_is_awaited(tmp_path: Path) -> None:
    """`reload` runs the supervisor's reload handler and returns its result."""
    reloads: list[int] = []
    async with control.serving(tmp_path / "run", "prod", _handlers(reloads)) as path:
        answer = await anyio.to_thread.run_sync(control.request, path, "reload")
    assert answer == {"ok": True, "result": "succeeded"}
    assert reloads == [1]


async def test_socket_is_private_and_removed_on_exit(tmp_path: Path) -> None:
    """The socket is 0600 in a 0700 directory, and gone after the launcher stops serving."""
    run_dir = tmp_path / "run"
    async with control.serving(run_dir, "prod", _handlers()) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert not path.exists()


async def test_second_launcher_with_same_name_is_refused(tmp_path: Path) -> None:
    """Two launchers cannot share a name; the error says to pick another --name."""
    async with control.serving(tmp_path / "run", "prod", _handlers()):
        with pytest.raises(ConfigError, match="--name"):
            async with control.serving(tmp_path / "run", "prod", _handlers()):
                pass


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    """A socket file left by a killed launcher does not block the next one."""
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run_dir / "prod.sock"))
    stale.close()  # bound, never listening: connecting is refused, like a dead launcher's
    async with control.serving(run_dir, "prod", _handlers()) as path:
        answer = await anyio.to_thread.run_sync(control.request, path, "status")
    assert answer["ok"] is True


async def test_unknown_command_and_garbage_get_an_error(tmp_path: Path) -> None:
    """An unknown command or a non-JSON line is answered with ok=false, not a dropped socket."""
    import socket

    async with control.serving(tmp_path / "run", "prod", _handlers()) as path:
        answer = await anyio.to_thread.run_sync(control.request, path, "frobnicate")

        def garbage() -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(b"not json\n")
                return sock.recv(4096)

        raw = await anyio.to_thread.run_sync(garbage)
    assert answer["ok"] is False and "frobnicate" in answer["error"]
    assert b"not one line of JSON" in raw


def test_choose_needs_a_name_when_several_run(tmp_path: Path) -> None:
    """With several launchers the client asks for --name; with none it says none runs."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="no launcher is running"):
        control.choose(run_dir, None)
    run_dir.mkdir()
    (run_dir / "a.sock").touch()
    assert control.choose(run_dir, None) == run_dir / "a.sock"
    (run_dir / "b.sock").touch()
    with pytest.raises(UsageError, match="a, b"):
        control.choose(run_dir, None)


def test_request_to_missing_launcher_is_a_clear_error(tmp_path: Path) -> None:
    """Asking a launcher that is not running names it and exits 78."""
    with pytest.raises(ConfigError, match="no launcher named 'ghost'") as caught:
        control.request(tmp_path / "ghost.sock", "status")
    assert caught.value.exit_code == 78
