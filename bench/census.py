"""The census (#19): how soon `secrets retired --wait` answers, and what a memory sample costs.

Run: python bench/census.py [--rounds 10] [--workers 2]

A launcher runs `--workers` drain-holding workers (tests/agents/caller.py: after the stop
signal each keeps its call until the bench releases it). Each round sets a new version, waits
until the rollout left the old workers draining, asks whether the old version is retired,
releases the old workers' calls and measures the time from the last old worker's exit (its
own clock, just before it exits) to the launcher's answer on its control socket: the
`census` request `secrets retired --wait` sends, made in-process so that CLI start-up is not
measured. Baseline, same rounds: the same request without `wait`, polled every 0.5 s.

Then the cost of one memory sample of a worker's process group (process/memory.py: PSS from
smaps_rollup), beside reading RSS only (statm), per process.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CALLER = ROOT / "tests" / "agents" / "caller.py"
AGENT_RUN = [sys.executable, "-m", "launcher"]


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


def census(env: dict[str, str]) -> list[dict[str, object]]:
    out = subprocess.run([*AGENT_RUN, "status", "--json"], env=env, capture_output=True, text=True)
    return list(json.loads(out.stdout)["census"]) if out.returncode == 0 else []


def one_round(env: dict[str, str], calls: Path, version: int, wait: bool) -> float:
    """Seconds from the last old worker's exit to the launcher saying it is retired."""
    import threading

    from launcher.ops import control

    subprocess.run(
        [*AGENT_RUN, "secrets", "set", "prod", f"K=v{version + 1}"],
        env=env,
        check=True,
        capture_output=True,
    )
    wait_for(lambda: any(c["state"] == "draining" for c in census(env)))
    wait_for(lambda: all(c["state"] != "starting" for c in census(env)))
    old = [p for p in calls.glob("*.json") if json.loads(p.read_text())["version"] == str(version)]
    sock = control.socket_path(Path(env["AGENT_RUN_HOME"]) / "run", "prod")
    answered: list[float] = []

    def ask() -> None:
        if wait:  # one request that the launcher answers once it holds no old version
            control.request(sock, "census", timeout=120, set="prod", retired=version, wait=60)
        else:  # a client without the wait: ask every 0.5 s
            while not control.request(sock, "census", set="prod", retired=version)["retired"]:
                time.sleep(0.5)
        answered.append(time.time())

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(0.2)  # the request is in before the calls end
    for report in old:
        (calls / f"release-{report.stem}").touch()
    asking.join()
    ends = [json.loads((calls / f"{p.stem}.end").read_text())["ended"] for p in old]
    return answered[0] - max(ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calls = Path(tmp) / "calls"
        calls.mkdir()
        env = {
            **os.environ,
            "AGENT_RUN_HOME": f"{tmp}/store",
            "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "CALLER_DIR": str(calls),
            "CALLER_NOTIFY": "1",
            "AGENT_RUN_LOG_FORMAT": "json",
        }
        subprocess.run([*AGENT_RUN, "secrets", "set", "prod", "K=v1"], env=env, check=True)
        run = ["--secrets", "prod", "--workers", str(args.workers), "--ready", "notify"]
        launcher = subprocess.Popen(
            [*AGENT_RUN, *run, str(CALLER)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: census(env) and all(c["state"] == "ready" for c in census(env)))
            version, results = 1, {"--wait": [], "polling 0.5 s": []}
            for index in range(2 * args.rounds):
                wait = index % 2 == 0
                results["--wait" if wait else "polling 0.5 s"].append(
                    one_round(env, calls, version, wait)
                )
                version += 1
            for name, values in results.items():
                print(
                    f"retired after the last old exit, {name}: median "
                    f"{statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
                    f"({len(values)} rounds)"
                )
            from launcher.process.memory import _rss, group_memory

            pids = [
                int(p.stem) for p in calls.glob("*.json") if not (calls / f"{p.stem}.end").exists()
            ]
            for name, measure in (("group PSS", group_memory), ("RSS only", _rss)):
                start = time.perf_counter()
                for _ in range(200):
                    for pid in pids:
                        measure(pid)
                per = (time.perf_counter() - start) / (200 * len(pids))
                print(f"memory sample, {name}: {per * 1e6:.0f} us per worker")
        finally:
            (calls / "release-all").touch()
            launcher.terminate()
            launcher.wait(timeout=60)


if __name__ == "__main__":
    main()
