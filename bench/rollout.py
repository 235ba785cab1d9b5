"""Rollout benchmark: from `secrets set` returning to every worker serving the new value.

Run: python bench/rollout.py
For 1, 4 and 16 notify-ready HTTP workers (sample_agents/http_agent.py, one port each), it
runs `agent-run secrets set` and then polls every worker over HTTP until each answers with the
new version: the first worker's and the last worker's delay after `secrets set` returned.
The baseline, in the same run, is the `secrets set` command's own duration.
(The zero-downtime load test against gunicorn that issue #4 asks for is not written yet.)
"""

from __future__ import annotations

import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPDATES = 10


def free_port_base(count: int) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count < 65000:
            return base


def version_of(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = conn.recv(4096).decode()
    except OSError:
        return None
    for part in data.split():
        if part.startswith("version="):
            value = part.split("=", 1)[1]
            return int(value) if value.isdigit() else None
    return None


def main() -> None:
    agent_run = str(Path(sys.executable).parent / "agent-run")
    print(f"{'workers':>8}{'set ms':>9}{'first ms p50':>14}{'last ms p50':>13}{'last ms max':>13}")
    for workers in (1, 4, 16):
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "AGENT_RUN_HOME": str(Path(tmp) / "store"),
                "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
                "AGENT_RUN_LOG_FORMAT": "json",
            }
            subprocess.run(
                [agent_run, "secrets", "set", "demo", "DEMO_API_KEY=v0"],
                env=env,
                check=True,
                capture_output=True,
            )
            base = free_port_base(workers)
            launcher = subprocess.Popen(
                [agent_run, "--secrets", "demo", "--workers", str(workers), "--ready", "notify",
                 "--port-base", str(base), "--drain-timeout", "5", str(ROOT / "sample_agents" / "http_agent.py")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            ports = [base + i for i in range(workers)]
            deadline = time.monotonic() + 60
            while any(version_of(p) != 1 for p in ports):
                assert time.monotonic() < deadline, "pool did not start"
                time.sleep(0.05)
            sets, firsts, lasts = [], [], []
            for update in range(UPDATES):
                target = update + 2
                start = time.perf_counter()
                subprocess.run(
                    [agent_run, "secrets", "set", "demo", f"DEMO_API_KEY=v{target}"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                returned = time.perf_counter()
                sets.append((returned - start) * 1000)
                pending = set(ports)
                first = None
                while pending:
                    for port in list(pending):
                        if version_of(port) == target:
                            pending.discard(port)
                            if first is None:
                                first = time.perf_counter()
                    assert time.perf_counter() - returned < 60, "rollout did not finish"
                firsts.append(((first or returned) - returned) * 1000)
                lasts.append((time.perf_counter() - returned) * 1000)
                time.sleep(0.3)  # let the old workers drain before the next update
            launcher.terminate()
            launcher.wait(timeout=60)
            print(
                f"{workers:>8}{statistics.median(sets):>9.1f}{statistics.median(firsts):>14.1f}"
                f"{statistics.median(lasts):>13.1f}{max(lasts):>13.1f}"
            )


if __name__ == "__main__":
    main()
