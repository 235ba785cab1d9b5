"""Session-mode benchmark: start latency warm and cold, sustained starts, read-after-write.

Run: python bench/sessions.py
- warm: POST /sessions with --idle 2 (request -> entrypoint running: the POST answers once
  the runtime reports the entrypoint called), p50/p99 over WARM_RUNS sessions;
- cold: the same with --idle 0 (a process is started and imports the agent per request);
- sustained: CLIENTS threads starting short sessions for SUSTAIN_S seconds;
- read-after-write: RAW_ROUNDS x (`secrets set` returns -> POST): sessions that saw an
  older value are counted as stale;
- leaks: processes of the launcher still alive after TERM;
- baseline: `python sample_agents/session_bot.py` from scratch, in the same run.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "sample_agents" / "session_bot.py"
WARM_RUNS = 200
COLD_RUNS = 30
CLIENTS = 4
SUSTAIN_S = 10.0
RAW_ROUNDS = 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post(base: str, body: bytes = b"{}") -> dict[str, object]:
    request = urllib.request.Request(f"{base}/sessions", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def start_launcher(env: dict[str, str], idle: int, port: int) -> subprocess.Popen[bytes]:
    agent_run = str(Path(sys.executable).parent / "agent-run")
    proc = subprocess.Popen(
        [agent_run, "--secrets", "demo", "--idle", str(idle), "--listen", f"127.0.0.1:{port}", str(BOT)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/sessions", timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "session API did not come up"
            time.sleep(0.05)
    time.sleep(1.0)  # let the warm processes finish importing
    return proc


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def stop(proc: subprocess.Popen[bytes]) -> int:
    """TERM the launcher; return how many of its processes outlived it."""
    children = children_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    alive = 0
    for pid in children:
        try:
            os.kill(pid, 0)
            alive += 1
        except ProcessLookupError:
            pass
    return alive


def latencies(base: str, runs: int, pause: float) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        post(base)
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(pause)  # let the pool refill, as between real calls
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "launcher")], check=True)
    agent_run = str(Path(sys.executable).parent / "agent-run")
    with tempfile.TemporaryDirectory() as tmp:
        reports = Path(tmp) / "reports"
        reports.mkdir()
        env = {
            **os.environ,
            "AGENT_RUN_HOME": str(Path(tmp) / "store"),
            "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "AGENT_RUN_LOG_FORMAT": "json",
            "SESSION_REPORT_DIR": str(reports),
        }
        subprocess.run(
            [agent_run, "secrets", "set", "demo", "DEMO_API_KEY=v0"],
            env=env,
            check=True,
            capture_output=True,
        )

        baseline = []
        for _ in range(20):
            start = time.perf_counter()
            subprocess.run([sys.executable, str(BOT)], env=env, check=True, capture_output=True)
            baseline.append((time.perf_counter() - start) * 1000)

        port = free_port()
        launcher = start_launcher(env, idle=2, port=port)
        base = f"http://127.0.0.1:{port}"
        warm = latencies(base, WARM_RUNS, pause=0.05)
        counts = [0] * CLIENTS
        stop_at = time.monotonic() + SUSTAIN_S

        def client(n: int) -> None:
            while time.monotonic() < stop_at:
                post(base)
                counts[n] += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rate = sum(counts) / SUSTAIN_S
        stale = 0
        for round_ in range(1, RAW_ROUNDS + 1):
            subprocess.run(
                [agent_run, "secrets", "set", "demo", f"DEMO_API_KEY=v{round_}"],
                env=env,
                check=True,
                capture_output=True,
            )
            session = post(base)
            report = reports / f"{session['id']}.json"
            deadline = time.monotonic() + 30
            while not report.exists():
                assert time.monotonic() < deadline
                time.sleep(0.005)
            if json.loads(report.read_text())["secrets_version"] != str(round_ + 1):
                stale += 1
        leaked = stop(launcher)

        port = free_port()
        launcher = start_launcher(env, idle=0, port=port)
        cold = latencies(f"http://127.0.0.1:{port}", COLD_RUNS, pause=0.0)
        leaked += stop(launcher)

    print(f"{'measure':<46}{'p50 ms':>9}{'p99 ms':>9}")
    print(
        f"{'python session_bot.py from scratch':<46}{statistics.median(baseline):>9.1f}{pct(baseline, 0.99):>9.1f}"
    )
    print(
        f"{'warm session start (request -> bot running)':<46}{statistics.median(warm):>9.1f}{pct(warm, 0.99):>9.1f}"
    )
    print(
        f"{'cold session start (--idle 0)':<46}{statistics.median(cold):>9.1f}{pct(cold, 0.99):>9.1f}"
    )
    print(f"sustained: {rate:.0f} session starts/s with {CLIENTS} clients for {SUSTAIN_S:g} s")
    print(f"read-after-write: {stale} stale of {RAW_ROUNDS} rounds")
    print(f"processes left after TERM: {leaked}")


if __name__ == "__main__":
    main()
