"""LiveKit rollout benchmark: real livekit-agents workers rolled by agent-run.

Run: python bench/livekit_rollout.py [--updates 3] [--pools 1,4]
For each pool size it starts `agent-run --workers N --ready 'log:registered worker'
sample_agents/livekit_agent.py start` (a default AgentServer()) against the tests' stand-in
LiveKit server (tests/livekit_server.py), waits until N workers are registered, then runs
`agent-run secrets set` UPDATES times. Measured at the server, from the moment `secrets set`
returned:
- first: the first replacement registered (it can take jobs from then on);
- rolled: the whole pool rolled: N replacements registered and every old worker gone;
- min available: the fewest registered, not draining workers at any moment of the rollout.
Baseline from the same run: a cold start of one worker without agent-run (`python
livekit_agent.py start` to registered), the floor of any rollout step.
Also the cost of agent-run's start-up hook for Python targets (launcher/process/
python_bootstrap): `python -c pass` with and without it on PYTHONPATH, interleaved rounds.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.livekit_server import StandInServer  # noqa: E402

AGENT = ROOT / "sample_agents" / "livekit_agent.py"
KEY = "APIbench"
SECRET = base64.b64encode(os.urandom(24)).decode()


def hook_cost(rounds: int = 40) -> tuple[float, float]:
    """Median ms of `python -c pass` without and with the start-up hook, interleaved."""
    from launcher.environment import PYTHON_BOOTSTRAP

    plain_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    hooked_env = {**plain_env, "PYTHONPATH": PYTHON_BOOTSTRAP}
    timings: dict[str, list[float]] = {"plain": [], "hooked": []}
    for _ in range(rounds):
        for name, env in (("plain", plain_env), ("hooked", hooked_env)):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            timings[name].append((time.perf_counter() - started) * 1000)
    return statistics.median(timings["plain"]), statistics.median(timings["hooked"])


def cold_start(server: StandInServer, env: dict[str, str]) -> float:
    """Seconds from `python livekit_agent.py start` to registered, without agent-run."""
    before = set(server.workers)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(AGENT), "start"],
        env={
            **env,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server.wait_until(lambda: bool(set(server.workers) - before), 120, "cold start")
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(60)


def _measure(
    server: StandInServer, workers: int, old: set[str], known: set[str]
) -> tuple[float, float]:
    """When the first replacement registered, and when the pool had rolled (monotonic)."""

    def new() -> list[float]:
        return sorted(w.registered_at for w in list(server.workers.values()) if w.id not in known)

    server.wait_until(lambda: len(new()) >= 1, 300, "first replacement")
    first = new()[0]
    server.wait_until(
        lambda: len(new()) >= workers and not any(server.workers[i].connected for i in old),
        600,
        "pool rolled",
    )
    return first, time.monotonic()


def roll(
    server: StandInServer, env: dict[str, str], workers: int, updates: int
) -> list[tuple[float, float, int]]:
    """(first, rolled, min available) per update."""
    agent_run = [sys.executable, "-m", "launcher"]
    subprocess.run(
        [*agent_run, "secrets", "set", "demo", "DEMO_API_KEY=value-0"],
        env=env,
        check=True,
        capture_output=True,
    )
    launcher = subprocess.Popen(
        [
            *agent_run,
            "--secrets",
            "demo",
            "--workers",
            str(workers),
            "--ready",
            "log:registered worker",
            str(AGENT),
            "start",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        server.wait_available(workers, timeout=300)
        for update in range(1, updates + 1):
            old = {w.id for w in server.available()}
            known = set(server.workers)
            subprocess.run(
                [*agent_run, "secrets", "set", "demo", f"DEMO_API_KEY=value-{update}"],
                env=env,
                check=True,
                capture_output=True,
            )
            returned = time.monotonic()

            first, rolled_at = _measure(server, workers, old, known)
            first -= returned
            rolled = rolled_at - returned
            results.append((first, rolled, server.min_available(returned, time.monotonic())))
    finally:
        launcher.terminate()
        launcher.wait(120)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--pools", default="1,4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home, StandInServer(KEY, SECRET) as server:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AGENT_RUN_", "LIVEKIT_"))},
            "AGENT_RUN_HOME": home,
            "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": KEY,
            "LIVEKIT_API_SECRET": SECRET,
        }
        plain, hooked = hook_cost()
        print(
            f"start-up hook: python -c pass {plain:.1f} ms, with the hook {hooked:.1f} ms (medians)"
        )
        cold = [cold_start(server, env) for _ in range(2)]
        print(
            f"baseline: cold start of one worker without agent-run, median {statistics.median(cold):.2f}s (max {max(cold):.2f}s)"
        )
        print(
            f"{'workers':>7}{'updates':>8}{'first p50/max s':>18}{'rolled p50/max s':>19}{'min available':>15}"
        )
        for workers in (int(n) for n in args.pools.split(",")):
            results = roll(server, env, workers, args.updates)
            firsts = [r[0] for r in results]
            rolled = [r[1] for r in results]
            lowest = min(r[2] for r in results)
            print(
                f"{workers:>7}{len(results):>8}"
                f"{f'{statistics.median(firsts):.2f} / {max(firsts):.2f}':>18}"
                f"{f'{statistics.median(rolled):.2f} / {max(rolled):.2f}':>19}"
                f"{lowest:>15}"
            )


if __name__ == "__main__":
    main()
