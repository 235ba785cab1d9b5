"""Rolling restarts with real workers (SPEC §4)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import CLI, PROBE, Launcher, alive, read_reports

NOTIFY = {"PROBE_NOTIFY": "1"}


def _ready_pids(launcher: Launcher, count: int, **match: object) -> list[int]:
    return [int(launcher.wait_event("worker_ready", **match)["pid"]) for _ in range(count)]  # type: ignore[call-overload]


def _roll_one_worker(
    cli: CLI, launch: Callable[..., Launcher], drain_s: float
) -> tuple[Launcher, int]:
    """One notify worker that drains for `drain_s` after TERM, then an update: the launcher
    and the old worker's pid (its replacement is starting)."""
    cli("secrets", "set", "prod", "N=1")
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", str(PROBE), env={**NOTIFY, "PROBE_DRAIN": str(drain_s)}
    )  # fmt: skip
    (old,) = _ready_pids(launcher, 1)
    cli("secrets", "set", "prod", "N=2")
    return launcher, old


def test_update_rolls_every_worker_and_stops_old_only_after_new_is_ready(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """3 notify workers move to the new version; each old one gets TERM after its replacement is ready."""
    cli("secrets", "set", "prod", "VALUE=one")
    launcher = launch(
        "--secrets", "prod", "--workers", "3", "--ready", "notify", str(PROBE), env=NOTIFY
    )
    old = _ready_pids(launcher, 3, version=1)
    cli("secrets", "set", "prod", "VALUE=two")
    launcher.wait_event("rollout_succeeded", to_version=2)
    reports = read_reports(probe_dir)
    new = [pid for pid, r in reports.items() if r["env"]["AGENT_RUN_SECRETS_VERSION"] == "2"]  # type: ignore[index]
    assert len(new) == 3
    assert all(reports[p]["env"]["VALUE"] == "two" for p in new)  # type: ignore[index]
    ready_times = sorted(float(reports[p]["ready_sent"]) for p in new)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while any(alive(p) for p in old) and time.monotonic() < deadline:
        time.sleep(0.05)
    reports = read_reports(probe_dir)
    term_times = sorted(reports[p]["terms"][0] for p in old)  # type: ignore[index]
    # Capacity never drops: the k-th old worker is stopped after the k-th replacement was ready.
    for ready_at, term_at in zip(ready_times, term_times, strict=True):
        assert term_at >= ready_at
    assert all(len(reports[p]["terms"]) == 1 for p in old)  # type: ignore[arg-type]


def test_bad_update_aborts_and_old_workers_keep_serving(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """New workers that exit at start abort the rollout; the old pids never get a stop signal."""
    cli("secrets", "set", "prod", "PROBE_MODE=serve")
    launcher = launch(
        "--secrets", "prod", "--workers", "2", "--ready", "notify", str(PROBE), env=NOTIFY
    )
    old = _ready_pids(launcher, 2, version=1)
    cli("secrets", "set", "prod", "PROBE_MODE=exit:3")
    aborted = launcher.wait_event("rollout_aborted", to_version=2)
    assert "did not become ready" in str(aborted["reason"])
    reports = read_reports(probe_dir)
    assert all(alive(p) and not reports[p]["terms"] for p in old)
    # A good update after the bad one succeeds.
    cli("secrets", "set", "prod", "PROBE_MODE=serve", "FIXED=yes")
    launcher.wait_event("rollout_succeeded", to_version=3)


def test_never_ready_replacement_aborts_at_ready_timeout(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A replacement that never reports ready is stopped at --ready-timeout; the old one stays."""
    cli("secrets", "set", "prod", "PROBE_NOTIFY=1")
    launcher = launch("--secrets", "prod", "--ready", "notify", "--ready-timeout", "1", str(PROBE))
    (old,) = _ready_pids(launcher, 1)
    cli("secrets", "set", "prod", "PROBE_NOTIFY=0")  # the next version never sends READY=1
    launcher.wait_event("rollout_aborted")
    assert alive(old) and not read_reports(probe_dir)[old]["terms"]


def test_sighup_rolls(cli: CLI, launch: Callable[..., Launcher]) -> None:
    """SIGHUP replaces every worker even without a new version."""
    launcher = launch("--workers", "2", "--ready", "notify", str(PROBE), env=NOTIFY)
    old = set(_ready_pids(launcher, 2))
    launcher.signal(signal.SIGHUP)
    launcher.wait_event("rollout_succeeded")
    replaced = {int(e["pid"]) for e in launcher.events if e.get("event") == "replacement_started"}  # type: ignore[call-overload]
    assert len(replaced) == 2 and not replaced & old


def test_fast_updates_collapse_to_the_newest(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Updates arriving during a rollout end with every worker on the newest version."""
    cli("secrets", "set", "prod", "N=0")
    launcher = launch(
        "--secrets", "prod", "--workers", "2", "--ready", "notify", str(PROBE), env=NOTIFY
    )
    _ready_pids(launcher, 2)
    for n in range(1, 6):
        cli("secrets", "set", "prod", f"N={n}")
    launcher.wait_event("rollout_succeeded", to_version=6, timeout=60)
    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    import json

    workers = json.loads(status.stdout)["workers"]
    assert [w["version"] for w in workers] == [6, 6]
    rollouts = [e for e in launcher.events if e.get("event") == "rollout_started"]
    assert len(rollouts) < 6  # requests collapsed


def test_singleton_handover_never_runs_two(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """--max-surge 0: the old worker has exited before its replacement starts."""
    cli("secrets", "set", "prod", "N=1")
    launcher = launch(
        "--secrets", "prod", "--max-surge", "0", "--ready", "notify", str(PROBE), env=NOTIFY
    )
    (old,) = _ready_pids(launcher, 1)
    cli("secrets", "set", "prod", "N=2")
    launcher.wait_event("rollout_succeeded", to_version=2)
    reports = read_reports(probe_dir)
    (new,) = [p for p, r in reports.items() if r["env"]["N"] == "2"]  # type: ignore[index]
    assert float(reports[old]["exiting"]) <= float(reports[new]["started"])  # type: ignore[arg-type]


def test_kubelet_symlink_swap_triggers_a_rollout(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, tmp_path: Path
) -> None:
    """A store mounted like a ConfigMap (..data symlink) is rolled out when the kubelet swaps it."""
    cli("secrets", "set", "prod", "N=1")
    cli("secrets", "set", "prod", "N=2")
    source = Path(cli.env["AGENT_RUN_HOME"])
    v2 = (source / "prod.set").read_bytes()
    cli("secrets", "rollback", "prod", "1")  # v3 holds N=1 again; keep v2's bytes for later
    mount = tmp_path / "mount"
    first = mount / "..2026_11_23_06_00_00.1"
    first.mkdir(parents=True)
    shutil.copy(source / "prod.set", first / "prod.set")
    os.symlink(first.name, mount / "..data")
    os.symlink("..data/prod.set", mount / "prod.set")
    # The mounted store is read-only in a pod; the control socket lives elsewhere.
    env = {"AGENT_RUN_HOME": str(mount), "AGENT_RUN_RUNTIME_DIR": str(tmp_path / "run")}
    launcher = launch("--secrets", "prod", "--ready", "notify", str(PROBE), env={**NOTIFY, **env})
    launcher.wait_event("worker_ready", version=3)
    # What the kubelet does: write the new payload to a new folder, swap ..data atomically.
    second = mount / "..2026_11_23_06_01_00.2"
    second.mkdir()
    cli("secrets", "set", "prod", "N=4")
    shutil.copy(source / "prod.set", second / "prod.set")
    os.symlink(second.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    shutil.rmtree(first)
    launcher.wait_event("rollout_succeeded", to_version=4)
    assert v2  # (the older payload was only kept to show versions are not reused)


def test_reload_command_reports_success_and_abort(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """`agent-run reload` waits for the rollout: exit 0 on success, 1 when it aborted."""
    cli("secrets", "set", "prod", "PROBE_NOTIFY=1")
    launcher = launch("--secrets", "prod", "--ready", "notify", "--no-watch", str(PROBE))
    _ready_pids(launcher, 1)
    ok = cli("reload")
    assert ok.returncode == 0 and "rolled 1 worker(s) to v1" in ok.stdout
    cli("secrets", "set", "prod", "PROBE_MODE=exit:1", "PROBE_NOTIFY=1")
    failed = cli("reload")
    assert failed.returncode == 1
    assert "did not become ready" in failed.stderr


def test_shutdown_during_drain_never_sends_a_second_term(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A worker still draining from a rollout gets no second TERM when the launcher stops."""
    launcher, old = _roll_one_worker(cli, launch, drain_s=1.5)
    launcher.wait_event("worker_stopping", pid=old)
    launcher.signal(signal.SIGTERM)  # while the old worker is still draining
    assert launcher.wait() == 0
    assert len(read_reports(probe_dir)[old]["terms"]) == 1  # type: ignore[arg-type]


def test_drained_old_worker_is_reported_with_its_drain_time(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """An old worker's exit after its stop signal is logged: pid, exit code, drain seconds."""
    launcher, old = _roll_one_worker(cli, launch, drain_s=0.4)
    drained = launcher.wait_event("worker_drained", pid=old)
    assert drained["code"] == 0
    assert 0.4 <= float(drained["seconds"]) < 10  # the probe sleeps 0.4 s after its TERM
