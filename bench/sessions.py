"""Session mode benchmark: session start latency, throughput, read-after-write, leftovers.

Run: python bench/sessions.py [--rounds 200] [--warm 200] [--cold 30] [--seconds 5] [--clients 2]

All against sample_agents/session_bot.py (its "model load" takes SESSION_BOT_LOAD_S, 0.2 s):
- baseline: `python sample_agents/session_bot.py` from scratch to exit, in the same run;
- warm start: POST /sessions -> the entrypoint running (the bot's own clock at entry), with
  --idle 8 and requests paced so a warm process is waiting; also the HTTP round trip;
- cold start: the same with --idle 0 (a process is started per request);
- sustained: sessions started back to back for --seconds, with --idle 8, by one client and by
  --clients at once; with the CPU each start cost the launcher, the processes it reaped
  (sessions, warm processes), the template and the template's own forks;
- read-after-write: --rounds times `agent-run secrets set` returns, then POST at once; the
  session's report (version, hash of the key) must show the new value (stale = 0);
- leftovers: after TERM, no process that ever served or waited for a session is alive;
- websocket call setup (--calls, needs pipecat-ai[websocket,runner]): a caller connects to
  WS /ws of bench/call_bot.py, whose bot() sends its entry time on the socket; connect ->
  bot() running, and connect -> first message (TCP, handshake and the bot's first message),
  warm (--idle 4, each call once the pool is full again), beside Pipecat's own runner
  (`python call_bot.py -t exotel`) serving the same bot in the same run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "sample_agents" / "session_bot.py"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):7.2f} ms  p99 {percentile(values, 99):7.2f} ms  "
        f"(n={len(values)}, min {min(values):.2f}, max {max(values):.2f})"
    )


class Runtime:
    """`agent-run ... sample_agents/session_bot.py` (or --bot) in session mode."""

    bot = BOT

    def __init__(self, env: dict[str, str], reports: Path, *args: str) -> None:
        import atexit

        self.reports = reports
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher",
                "--secrets",
                "bench",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                *args,
                str(self.bot),
            ],
            env={**env, "SESSION_REPORT_DIR": str(reports)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        atexit.register(self._kill)  # a failed run must not leave a launcher behind
        self.events: list[dict[str, Any]] = []
        assert self.proc.stderr is not None
        address = None
        for line in self.proc.stderr:
            event = json.loads(line) if line.startswith("{") else {}
            self.events.append(event)
            if event.get("event") == "sessions_listening":
                address = event["address"]
                break
        assert address, "the launcher did not start"
        threading.Thread(target=self._drain, daemon=True).start()
        self.address = address
        self.http = self.connection()

    def connection(self) -> http.client.HTTPConnection:
        host, port = self.address.rsplit(":", 1)
        return http.client.HTTPConnection(host, int(port), timeout=60)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def post(
        self, body: dict[str, Any], http: http.client.HTTPConnection | None = None
    ) -> tuple[dict[str, Any], float, float]:
        """(answer, wall-clock send time, HTTP round trip in ms), on `http` or our own."""
        http = http or self.http
        data = json.dumps(body).encode()
        sent = time.time()
        start = time.perf_counter()
        http.request("POST", "/sessions", body=data, headers={"Content-Type": "application/json"})
        response = http.getresponse()
        payload = json.loads(response.read())
        elapsed = (time.perf_counter() - start) * 1000
        assert response.status == 201, payload
        return payload, sent, elapsed

    def report(self, session_id: str) -> dict[str, Any]:
        path = self.reports / f"{session_id}.json"
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline, f"no report for {session_id}"
            time.sleep(0.001)
        return json.loads(path.read_text())

    def pids(self) -> set[int]:
        seen = {int(json.loads(p.read_text())["pid"]) for p in self.reports.glob("*.json")}
        return seen | {
            int(e["pid"]) for e in self.events if "pid" in e and isinstance(e["pid"], int)
        }

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.send_signal(signal.SIGINT)  # the second one: no drain
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.http.close()
        return code


def sustained(runtime: Runtime, clients: int, seconds: float) -> None:
    """Sessions started back to back by `clients` clients for `seconds`; the rate, and the
    CPU each start cost each kind of process."""
    counts = [[0, 0] for _ in range(clients)]  # started, of which warm
    before = cpu_times(runtime)
    start = time.perf_counter()

    def client(index: int) -> None:
        http = runtime.connection()
        while time.perf_counter() - start < seconds:
            answer, _, _ = runtime.post({"sustained": index}, http)
            counts[index][0] += 1
            counts[index][1] += bool(answer["warm"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    count, warm = sum(c[0] for c in counts), sum(c[1] for c in counts)
    spent = {role: (cpu_times(runtime)[role] - before[role]) / count for role in before}
    print(
        f"sustained session starts, {clients} client{'s' if clients > 1 else ' '}: "
        f"{count / elapsed:7.1f} /s  ({warm}/{count} warm, --idle 8)"
    )
    print(
        "  CPU per session start:          "
        + ", ".join(f"{role} {seconds * 1000:.2f} ms" for role, seconds in spent.items())
    )


def cpu_times(runtime: Runtime) -> dict[str, float]:
    """CPU seconds so far: the launcher's own; the processes it reaped (sessions and warm
    processes, which are its children); the template's own; the template's reaped children
    (the middle process of each double fork)."""
    tick = os.sysconf("SC_CLK_TCK")

    def times(pid: int) -> list[float]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return [int(value) / tick for value in fields[11:15]]  # utime stime cutime cstime

    launcher = times(runtime.proc.pid)
    template = [e["pid"] for e in runtime.events if e.get("event") == "template"]
    own = times(template[-1]) if template else [0.0] * 4
    return {
        "launcher": launcher[0] + launcher[1],
        "its processes": launcher[2] + launcher[3],
        "template": own[0] + own[1],
        "template's forks": own[2] + own[3],
    }


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def start_latencies(
    runtime: Runtime, count: int, pace: float
) -> tuple[list[float], list[float], int]:
    """(request -> entrypoint ms, HTTP round trip ms, how many were warm)."""
    entry, rtt, warm = [], [], 0
    for index in range(count):
        answer, sent, elapsed = runtime.post({"i": index})
        report = runtime.report(answer["id"])
        entry.append((report["entered_at"] - sent) * 1000)
        rtt.append(elapsed)
        warm += bool(answer["warm"])
        time.sleep(pace)
    return entry, rtt, warm


CALL_BOT = ROOT / "bench" / "call_bot.py"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, deadline_s: float = 120.0) -> None:
    import socket

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Pool:
    """The launcher's JSON events, to tell when its warm pool is full again."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.ready = 0  # warm processes that finished importing the bot
        self.taken = 0  # ... and were handed a call since
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            event = json.loads(line).get("event") if line.startswith("{") else None
            with self.changed:
                self.ready += event == "worker_ready"
                self.taken += event == "session_started"
                self.changed.notify_all()

    def wait_full(self, idle: int, deadline_s: float = 300.0) -> None:
        with self.changed:
            full = self.changed.wait_for(lambda: self.ready - self.taken >= idle, deadline_s)
        assert full, f"the pool never had {idle} warm processes again"


def call_setups(
    port: int, count: int, before_each: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """(connect -> bot() running, connect -> bot's first message) in ms, `count` calls."""
    from websockets.sync.client import connect

    entered, first = [], []
    for _ in range(count):
        before_each()
        wall, start = time.time(), time.perf_counter()
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=60) as ws:
            message = json.loads(ws.recv(timeout=60))
            first.append((time.perf_counter() - start) * 1000)
            entered.append((message["entered_at"] - wall) * 1000)
    return entered, first


def call_setup(env: dict[str, str], count: int) -> None:
    """Websocket call setup, agent-run beside Pipecat's runner (same bot, same run)."""
    try:
        import pipecat.runner.types
        import websockets  # noqa: F401
    except ImportError:
        print("websocket call setup: skipped (pip install 'pipecat-ai[websocket,runner]')")
        return
    results = {}
    port = free_port()
    pipecat = subprocess.Popen(
        [sys.executable, str(CALL_BOT), "-t", "exotel", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT / "bench",
    )
    try:
        wait_port(port)
        call_setups(port, 5, lambda: None)  # its first call imports the transport modules
        results["pipecat"] = call_setups(port, count, lambda: time.sleep(0.05))
    finally:
        pipecat.terminate()
        pipecat.wait(timeout=30)
    port, idle = free_port(), 4
    agent_run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "--listen",
            f"127.0.0.1:{port}",
            "--idle",
            str(idle),
            "--no-watch",
            "--log-format",
            "json",
            "--name",
            "bench-calls",
            str(CALL_BOT),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        pool = Pool(agent_run)
        # Warm: each call finds the pool full, as between calls in production. The ended
        # call's replacement imports Pipecat (seconds of CPU); measured during that import,
        # a setup would time the machine's load, not the handover.
        results["agent-run"] = call_setups(port, count, lambda: pool.wait_full(idle))
    finally:
        agent_run.terminate()
        agent_run.wait(timeout=60)
    print(
        f"ws call setup: load average {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores"
    )
    for name, label in (("pipecat", "Pipecat's runner"), ("agent-run", "agent-run, warm")):
        entered, first = results[name]
        print(f"ws call setup, {label:17} connect -> bot():       {summary(entered)}")
        print(f"ws call setup, {label:17} connect -> first msg:   {summary(first)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--cold", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--clients", type=int, default=2, help="sustained starts also from this many clients"
    )
    parser.add_argument("--calls", type=int, default=100, help="websocket calls (0: skip)")
    parser.add_argument("--only-calls", action="store_true", help="only the websocket part")
    parser.add_argument(
        "--preload",
        default="auto",
        help="agent-run --preload: auto (a template interpreter, #18) or none (a fresh one)",
    )
    parser.add_argument(
        "--bot", default=str(BOT), help="the session bot (bench/pipecat_bot.py: a real Pipecat one)"
    )
    parser.add_argument(
        "--only", choices=("warm", "read-after-write"), help="run only this part (and the baseline)"
    )
    args = parser.parse_args()
    Runtime.bot = Path(args.bot).resolve()

    tmp = Path(tempfile.mkdtemp(prefix="agent-run-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RUN_")}
    env.update(
        AGENT_RUN_HOME=str(tmp / "store"),
        AGENT_RUN_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
        PYTHONPATH=str(ROOT),
    )

    def secrets_set(value: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "launcher", "secrets", "set", "bench", f"DEMO_API_KEY={value}"],
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )

    secrets_set("sk-bench-0")
    if args.calls:
        call_setup(env, args.calls)
    if args.only_calls:
        return 0
    print(
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; "
        f"bot load {os.environ.get('SESSION_BOT_LOAD_S', '0.2')} s"
    )

    scratch = []
    for _ in range(10):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(Runtime.bot)], env=env, check=True, capture_output=True)
        scratch.append((time.perf_counter() - start) * 1000)
    print(f"python bot.py from scratch:       {summary(scratch)}")

    leftovers: set[int] = set()
    stale = 0

    def run(*options: str) -> Runtime:
        reports = tmp / f"reports-{len(list(tmp.glob('reports-*')))}"
        reports.mkdir()
        return Runtime(env, reports, "--preload", args.preload, *options)

    print(f"bot: {Runtime.bot.name}; --preload {args.preload}; load {os.getloadavg()[0]:.1f}")
    if args.only in (None, "warm"):
        # Warm: --idle 8, paced so that a warm process is waiting for each request.
        runtime = run("--max-sessions", "1000", "--idle", "8", "--no-watch")
        time.sleep(2.0)  # let the pool warm up
        entry, rtt, warm = start_latencies(runtime, args.warm, pace=0.05)
        print(f"warm start (request -> bot()):    {summary(entry)}  [{warm}/{args.warm} warm]")
        print(f"warm start (HTTP round trip):     {summary(rtt)}")

        # Sustained: back to back, as fast as the runtime answers, from each of --clients.
        for clients in sorted({1, args.clients}):
            sustained(runtime, clients, args.seconds)
        leftovers |= runtime.pids()
        assert runtime.stop() == 0

    if args.only is None:
        # Cold: --idle 0, a process per request.
        runtime = run("--max-sessions", "1000", "--idle", "0", "--no-watch")
        entry, rtt, warm = start_latencies(runtime, args.cold, pace=0.0)
        print(f"cold start (request -> bot()):    {summary(entry)}  [{warm}/{args.cold} warm]")
        leftovers |= runtime.pids()
        assert runtime.stop() == 0

    if args.only in (None, "read-after-write"):
        # Read-after-write, with the default store watch on (it races the dispatch check).
        runtime = run("--max-sessions", "1000", "--idle", "2")
        time.sleep(1.0)
        stale, raw = 0, []
        for round_ in range(1, args.rounds + 1):
            value = f"sk-bench-{round_}"
            secrets_set(value)
            answer, sent, _ = runtime.post({"round": round_})
            report = runtime.report(answer["id"])
            expected = hashlib.sha256(value.encode()).hexdigest()[:16]
            if report["key_sha256"] != expected or report["secrets_version"] != str(round_ + 1):
                stale += 1
            raw.append((report["entered_at"] - sent) * 1000)
        print(
            f"read-after-write: {stale} stale sessions in {args.rounds} rounds; "
            f"start after an update {summary(raw)}"
        )
        leftovers |= runtime.pids()
        assert runtime.stop() == 0

    time.sleep(0.2)
    left = sorted(pid for pid in leftovers if alive(pid))
    print(f"leaked processes after shutdown:  {len(left)} of {len(leftovers)} seen {left or ''}")
    return 1 if stale or left else 0


if __name__ == "__main__":
    sys.exit(main())
