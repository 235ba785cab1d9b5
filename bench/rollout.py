"""Rollout benchmark: how fast a new secret reaches the workers, and what rollouts cost under load.

Run: python bench/rollout.py [--updates 20] [--load-rounds 1] [--no-load]
1. Propagation. For 1, 4 and 16 notify-ready HTTP workers (sample_agents/http_agent.py, one
   port each) it runs `agent-run secrets set` UPDATES times and polls every worker over HTTP
   until each answers with the new version: the first and the last worker's delay after
   `secrets set` returned (detection included), median and max. Baselines from the same run:
   the `secrets set` command's own duration, and gunicorn (the `bench` extra) with 4 workers
   and a SIGHUP per update: from the signal to the first response of a new worker, and to
   the moment its master has only new workers left.
2. Zero downtime. bench/zero_downtime.py (its docstring tells the method): 4 workers on one
   port under open-loop load, 20 updates, failed requests and p99 during rollouts beside
   gunicorn's 20 reloads; --load-rounds N alternates the two servers N times.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from zero_downtime import GUNICORN_APP, free_port, wait_listening  # noqa: E402

HEADER = f"{'server':<12}{'workers':>8}{'update ms':>11}{'first p50/max':>16}{'last p50/max':>16}"


def free_port_base(count: int) -> int:
    while True:
        base = free_port()
        if base + count < 65000:
            return base


def answer(port: int) -> dict[str, str]:
    """The `key=value` words of one response body; empty if nothing answered."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except OSError:
        return {}
    body = data.partition(b"\r\n\r\n")[2].decode()
    return dict(word.split("=", 1) for word in body.split() if "=" in word)


def row(
    label: str, workers: int, updates: list[float], firsts: list[float], lasts: list[float]
) -> None:
    def pair(values: list[float]) -> str:
        return f"{statistics.median(values):.0f}/{max(values):.0f}"

    print(
        f"{label:<12}{workers:>8}{statistics.median(updates):>11.1f}"
        f"{pair(firsts):>16}{pair(lasts):>16}",
        flush=True,
    )


def propagation_agent_run(workers: int, updates: int) -> None:
    agent_run = str(Path(sys.executable).parent / "agent-run")
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "AGENT_RUN_HOME": str(Path(tmp) / "store"),
            "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "AGENT_RUN_LOG_FORMAT": "json",
        }

        def set_value(version: int) -> None:
            subprocess.run(
                [agent_run, "secrets", "set", "demo", f"DEMO_API_KEY=v{version}"],
                env=env,
                check=True,
                capture_output=True,
            )

        set_value(1)
        base = free_port_base(2 * workers)  # a replacement takes the slot's other lane
        launcher = subprocess.Popen(
            [agent_run, "--secrets", "demo", "--workers", str(workers), "--ready", "notify",
             "--port-base", str(base), "--drain-timeout", "5", str(ROOT / "sample_agents" / "http_agent.py")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # Slot i answers on base+i or, after an odd number of rollouts, base+N+i.
            lanes = {i: (base + i, base + workers + i) for i in range(workers)}

            def on(slot: int, version: str) -> bool:
                return any(answer(port).get("version") == version for port in lanes[slot])

            deadline = time.monotonic() + 60
            while not all(on(i, "1") for i in lanes):
                if time.monotonic() > deadline:
                    raise SystemExit("the pool did not start")
                time.sleep(0.05)
            sets, firsts, lasts = [], [], []
            for update in range(updates):
                target = str(update + 2)
                start = time.perf_counter()
                set_value(update + 2)
                returned = time.perf_counter()
                sets.append((returned - start) * 1000)
                pending = set(lanes)
                first = None
                while pending:
                    for slot in list(pending):
                        if on(slot, target):
                            pending.discard(slot)
                            first = first or time.perf_counter()
                    if time.perf_counter() - returned > 60:
                        raise SystemExit("the rollout did not finish")
                firsts.append(((first or returned) - returned) * 1000)
                lasts.append((time.perf_counter() - returned) * 1000)
                time.sleep(0.3)  # let the old workers drain before the next update
        finally:
            launcher.terminate()
            launcher.wait(timeout=60)
    row("agent-run", workers, sets, firsts, lasts)


def children(pid: int) -> set[str]:
    try:
        return set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return set()


def propagation_gunicorn(workers: int, updates: int) -> None:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    if not Path(gunicorn).exists():
        print("gunicorn     not installed: pip install -e '.[bench]'")
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_app.py").write_text(GUNICORN_APP)
        server = subprocess.Popen(
            [gunicorn, "-w", str(workers), "-b", f"127.0.0.1:{port}", "bench_app:app"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_listening(port)
            deadline = time.monotonic() + 60
            while len(children(server.pid)) != workers:
                if time.monotonic() > deadline:
                    raise SystemExit("gunicorn did not start its workers")
                time.sleep(0.05)
            signals, firsts, lasts = [], [], []
            for _ in range(updates):
                old = children(server.pid)
                start = time.perf_counter()
                server.send_signal(signal.SIGHUP)
                sent = time.perf_counter()
                signals.append((sent - start) * 1000)
                first = None
                while True:
                    if first is None and answer(port).get("pid", "") not in old | {""}:
                        first = time.perf_counter()
                    now = children(server.pid)
                    if first is not None and len(now) == workers and not now & old:
                        break
                    if time.perf_counter() - sent > 60:
                        raise SystemExit("gunicorn did not reload")
                firsts.append((first - sent) * 1000)
                lasts.append((time.perf_counter() - sent) * 1000)
                time.sleep(0.3)
        finally:
            server.terminate()
            server.wait(timeout=60)
    row("gunicorn", workers, signals, firsts, lasts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20, help="updates per pool size")
    parser.add_argument("--load-rounds", type=int, default=1, help="zero-downtime rounds")
    parser.add_argument("--no-load", action="store_true", help="propagation only")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "launcher")], check=True)
    print(f"propagation, {args.updates} updates per row (ms after `secrets set` / SIGHUP returned)")
    print(HEADER)
    for workers in (1, 4, 16):
        propagation_agent_run(workers, args.updates)
    propagation_gunicorn(4, args.updates)
    if not args.no_load:
        print("\nzero downtime (bench/zero_downtime.py)", flush=True)
        command = [sys.executable, str(ROOT / "bench" / "zero_downtime.py")]
        raise SystemExit(subprocess.call([*command, "--rounds", str(args.load_rounds)]))


if __name__ == "__main__":
    main()
