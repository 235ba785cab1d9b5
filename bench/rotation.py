"""Key rotation under load: a running launcher across `key rotate`, with writers racing it.

Run: python bench/rotation.py [--rounds 20] [--workers 4] [--noise-sets 30] [--hogs 2]

A launcher runs 4 notify-ready HTTP workers (sample_agents/http_agent.py) bound to set
`demo`, its master key in `<store>/master.key` (the file `key rotate` replaces). Load for the
whole run: `--hogs` CPU-bound processes, and two writer loops running `secrets set` on
`--noise-sets` other sets without pause (so rotations re-seal sets while they are written).

1. Baseline: ROUNDS updates of `demo` without rotations.
2. ROUNDS rounds of `key rotate` started in the background and, while it runs, an update of
   `demo`: every update must reach every worker (polled over HTTP: the version and a hash of
   the value), with the key changing under the launcher each round.

Printed: update-to-all-workers delay (median / max) for both phases, `key rotate` duration,
writes done by the noise writers, then the checks: updates rolled out, rollouts skipped or
refused in the launcher's log, and sets that no longer open with the final key (damaged).
Exit 1 if any check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from rollout import answer, free_port_base  # noqa: E402

NOISE_WRITER = """
import os, subprocess, sys, time
agent_run, names, stop = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
count = 0
while not os.path.exists(stop):
    name = names[count % len(names)]
    subprocess.run([agent_run, "secrets", "set", name, f"N{count % 7}={count}"],
                   check=True, capture_output=True)
    count += 1
print(count)
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--noise-sets", type=int, default=30)
    parser.add_argument("--hogs", type=int, default=2)
    args = parser.parse_args()
    agent_run = str(Path(sys.executable).parent / "agent-run")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUN_")},
            "AGENT_RUN_HOME": str(store),
            "AGENT_RUN_LOG_FORMAT": "json",
        }

        def run(*command: str) -> float:
            start = time.perf_counter()
            subprocess.run([agent_run, *command], env=env, check=True, capture_output=True)
            return (time.perf_counter() - start) * 1000

        run("secrets", "set", "demo", "DEMO_API_KEY=v1")  # creates <store>/master.key
        noise = [f"noise{n}" for n in range(args.noise_sets)]
        for name in noise:
            run("secrets", "set", name, "N=0")
        base = free_port_base(2 * args.workers)
        # A replacement listens on the slot's other lane (PORT+N+i): poll both of each slot.
        ports = [(base + i, base + args.workers + i) for i in range(args.workers)]
        log_path = Path(tmp) / "launcher.log"
        stop = Path(tmp) / "stop"
        hogs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)
        ]
        with open(log_path, "w") as log:
            launcher = subprocess.Popen(
                [agent_run, "--secrets", "demo", "--workers", str(args.workers), "--ready",
                 "notify", "--port-base", str(base), "--drain-timeout", "5",
                 str(ROOT / "sample_agents" / "http_agent.py")],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        writers: list[subprocess.Popen[str]] = []
        try:
            wait_all(ports, "1", sha("v1"))
            writers = [
                subprocess.Popen(
                    [sys.executable, "-c", NOISE_WRITER, agent_run, ",".join(part), str(stop)],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for part in (noise[::2], noise[1::2])
            ]
            version = 1
            baseline: list[float] = []
            for _ in range(args.rounds):
                version += 1
                run("secrets", "set", "demo", f"DEMO_API_KEY=v{version}")
                baseline.append(wait_all(ports, str(version), sha(f"v{version}")))
            rng = random.Random(12)
            rotations: list[float] = []
            delays: list[float] = []
            for _ in range(args.rounds):
                version += 1
                started = time.perf_counter()
                rotation = subprocess.Popen(
                    [agent_run, "key", "rotate"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,  # its reminder to replace deployed copies
                    text=True,
                )
                time.sleep(rng.uniform(0, 0.2))  # the update lands anywhere in the rotation
                run("secrets", "set", "demo", f"DEMO_API_KEY=v{version}")
                delays.append(wait_all(ports, str(version), sha(f"v{version}")))
                if rotation.wait(timeout=120) != 0:
                    raise SystemExit("key rotate failed")
                rotations.append((time.perf_counter() - started) * 1000)
        finally:
            stop.touch()
            noise_writes = sum(int(w.communicate(timeout=120)[0] or 0) for w in writers)
            launcher.terminate()
            launcher.wait(timeout=60)
            for hog in hogs:
                hog.kill()
                hog.wait()
        events = [json.loads(line).get("event") for line in log_path.read_text().splitlines()]
        damaged = check_store(store, ["demo", *noise])
    skipped = events.count("rollout_skipped")
    refused = events.count("secrets_version_refused")
    succeeded = events.count("rollout_succeeded")

    def pair(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} / {max(values):.0f}"

    print(f"load: {args.hogs} CPU hogs, 2 writer loops on {args.noise_sets} sets")
    print(f"update -> all {args.workers} workers, ms (median / max)")
    print(f"  {args.rounds} updates, no rotation (baseline): {pair(baseline)}")
    print(f"  {args.rounds} updates, each during a key rotate: {pair(delays)}")
    print(f"key rotate, ms (median / max): {pair(rotations)}")
    print(f"noise writes during the run: {noise_writes}")
    total = 2 * args.rounds
    print(f"updates rolled out: {total}/{total} (rollout_succeeded events: {succeeded})")
    print(f"rollouts skipped: {skipped}, versions refused: {refused}, damaged sets: {damaged}")
    if skipped or refused or damaged:
        raise SystemExit(1)


def wait_all(
    ports: list[tuple[int, int]], version: str, key_sha: str, timeout: float = 120
) -> float:
    """Milliseconds until every slot (either of its two ports) answers with `version` and the
    value's hash."""
    start = time.perf_counter()
    pending = set(ports)
    while pending:
        for lanes in list(pending):
            for port in lanes:
                reply = answer(port)
                if reply.get("version") == version and reply.get("key_sha") == key_sha:
                    pending.discard(lanes)
                    break
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"v{version} did not reach every worker within {timeout:g}s")
        time.sleep(0.005)
    return (time.perf_counter() - start) * 1000


def check_store(store: Path, names: list[str]) -> int:
    """How many sets do not open with the store's final key."""
    from launcher.errors import LauncherError
    from launcher.store.keyring import Keyring
    from launcher.store.sets import Store

    ring = Keyring.open(store, None, {})
    damaged = 0
    for name in names:
        try:
            Store(store).read(name, ring)
        except LauncherError as error:
            print(f"damaged: {name}: {error}")
            damaged += 1
    if ring.next is not None:
        print(f"a rotation was left unfinished: {store}/master.key.next")
        damaged += 1
    return damaged


if __name__ == "__main__":
    main()
