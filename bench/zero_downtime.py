"""Zero-downtime benchmark: steady load while secrets are updated, beside gunicorn reloads.

Run: python bench/zero_downtime.py [--seconds 20] [--updates 20] [--rate 1000] [--rounds 1]
Both servers run 4 workers on one 127.0.0.1 port and get the same bounded, open-loop load
(bench/open_loop.py, its own process): RATE requests per second on a fixed schedule, each on
a new connection (Connection: close): SECONDS of steady load, then SECONDS during which
- agent-run (sample_agents/http_agent.py, SO_REUSEPORT, --ready notify) gets UPDATES
  `agent-run secrets set` calls, each rolling all 4 workers (forked from its template, #18;
  --fresh adds a run with `--preload none`, a fresh interpreter per worker, labelled fresh);
- gunicorn (the `bench` extra; 4 sync workers, the same tiny app) gets UPDATES SIGHUPs.
Printed: requests, failed requests, p50/p99 latency in four windows: "steady" (the first
half, no update), "during" (requests starting within WINDOW_S after an update was triggered:
the update command, detection, the rollout and the old workers' drain), "between" (the rest
of the second half) and "updating" (the whole second half); and two ratios to the steady
p99: the p99 during rollouts (the strict one) and the p99 of the whole update phase.
p99 on a shared 2-core machine moves between runs by more than the effect measured:
--rounds N alternates the two servers N times and prints each one's median ratio.

With SO_REUSEPORT every worker has its own accept queue, and connections still queued on an
old worker's socket when it closes are reset. Linux (>= 5.14) hands them to another socket of
the group when `net.ipv4.tcp_migrate_req=1`. By default, as root, the benchmark runs both
servers in a private network namespace with that setting on (the host is not touched);
`--no-migrate` runs them as the machine is.
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW_S = 0.5
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
GUNICORN_APP = """
import os
BODY = ("pid=%d\\n" % os.getpid()).encode()
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_request(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(REQUEST)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not one_request(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing answers on port {port}")
        time.sleep(0.05)


def load(
    port: int, args: argparse.Namespace, trigger: Callable[[int], None]
) -> tuple[list[tuple[float, float, bool]], float, list[float]]:
    """Run the open-loop client for 2 x args.seconds: the first half steady, then
    args.updates calls of trigger(), evenly spaced over the second half. Returns the client's
    samples, the time the update phase began and the trigger times (one monotonic clock)."""
    with tempfile.NamedTemporaryFile("r", suffix=".samples") as out:
        client = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "open_loop.py"), "--port", str(port),
             "--rate", str(args.rate), "--seconds", str(2 * args.seconds), "--out", out.name,
             *(["--realtime"] if os.geteuid() == 0 else [])],
        )  # fmt: skip
        updating = time.monotonic() + args.seconds
        triggers = []
        spacing = args.seconds / args.updates
        for n in range(args.updates):
            pause = updating + spacing * n - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            triggers.append(time.monotonic())
            trigger(n)
        if client.wait() != 0:
            raise SystemExit("the load client failed")
        samples = []
        for line in out:
            started, latency, ok = line.split()
            samples.append((float(started), float(latency), ok == "1"))
    return samples, updating, triggers


Ratios = tuple[float, float, int]  # p99 during / steady, p99 updating / steady, failed


def summarize(
    label: str, samples: list[tuple[float, float, bool]], updating: float, triggers: list[float]
) -> Ratios:
    """Print the four windows; return the two p99 ratios and the failed count."""

    def during(start: float) -> bool:
        return any(t <= start < t + WINDOW_S for t in triggers)

    rows = {
        "steady": [s for s in samples if s[0] < updating],
        "during": [s for s in samples if during(s[0])],
        "between": [s for s in samples if s[0] >= updating and not during(s[0])],
        "updating": [s for s in samples if s[0] >= updating],
    }
    p99s = {}
    for name, rows_ in rows.items():
        latencies = sorted(s[1] * 1000 for s in rows_ if s[2])
        failed = sum(1 for s in rows_ if not s[2])
        p50 = statistics.median(latencies) if latencies else float("nan")
        p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
        p99s[name] = p99
        print(f"{label:<12}{name:<9}{len(rows_):>9}{failed:>8}{p50:>10.2f}{p99:>10.2f}")
    during_ratio = p99s["during"] / p99s["steady"]
    updating_ratio = p99s["updating"] / p99s["steady"]
    print(f"{label:<12}{'p99 during / steady':<35}{during_ratio:>9.2f}x")
    print(f"{label:<12}{'p99 updating / steady':<35}{updating_ratio:>9.2f}x")
    return during_ratio, updating_ratio, sum(1 for s in samples if not s[2])


def run_agent_run(args: argparse.Namespace, preload: str = "auto") -> Ratios:
    agent_run = str(Path(sys.executable).parent / "agent-run")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "AGENT_RUN_HOME": str(Path(tmp) / "store"),
            "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "AGENT_RUN_LOG_FORMAT": "json",
            "SHARED_PORT": str(port),
        }
        subprocess.run(
            [agent_run, "secrets", "set", "demo", "DEMO_API_KEY=v0"],
            env=env,
            check=True,
            capture_output=True,
        )
        launcher = subprocess.Popen(
            [agent_run, "--secrets", "demo", "--workers", "4", "--ready", "notify", "--drain-timeout", "10",
             "--preload", preload, str(ROOT / "sample_agents" / "http_agent.py")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_listening(port)
            time.sleep(1)  # all four workers up

            def update(n: int) -> None:
                subprocess.run(
                    [agent_run, "secrets", "set", "demo", f"DEMO_API_KEY=v{n + 1}"],
                    env=env,
                    check=True,
                    capture_output=True,
                )

            samples, updating, triggers = load(port, args, update)
        finally:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=60)
    return summarize("agent-run" if preload == "auto" else "fresh", samples, updating, triggers)


def run_gunicorn(args: argparse.Namespace) -> Ratios | None:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    if not Path(gunicorn).exists():
        print("gunicorn not installed: pip install -e '.[bench]'")
        return None
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_app.py").write_text(GUNICORN_APP)
        server = subprocess.Popen(
            [gunicorn, "-w", "4", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10", "bench_app:app"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_listening(port)
            time.sleep(1)
            samples, updating, triggers = load(
                port, args, lambda n: server.send_signal(signal.SIGHUP)
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return summarize("gunicorn", samples, updating, triggers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000, help="requests per second")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the servers N times")
    parser.add_argument(
        "--fresh", action="store_true", help="also agent-run --preload none (no template)"
    )
    parser.add_argument("--no-migrate", action="store_true", help="leave tcp_migrate_req as it is")
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.no_migrate and not args.in_netns and os.geteuid() == 0:
        inner = [
            sys.executable,
            __file__,
            "--in-netns",
            "--seconds",
            str(args.seconds),
            "--updates",
            str(args.updates),
            "--rate",
            str(args.rate),
            "--rounds",
            str(args.rounds),
            *(["--fresh"] if args.fresh else []),
        ]
        script = "ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1 && exec " + " ".join(
            inner
        )
        raise SystemExit(subprocess.call(["unshare", "--net", "sh", "-c", script]))
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    print(
        f"net.ipv4.tcp_migrate_req = {migrate}; {args.rate:g} requests/s, {args.seconds:g} s, {args.updates} updates"
    )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "launcher")], check=True)
    print(f"{'server':<12}{'window':<9}{'requests':>9}{'failed':>8}{'p50 ms':>10}{'p99 ms':>10}")
    results: dict[str, list[Ratios]] = {"agent-run": [], "fresh": [], "gunicorn": []}
    for _ in range(args.rounds):
        results["agent-run"].append(run_agent_run(args))
        if args.fresh:  # the same launcher without its template (#18), in the same run
            results["fresh"].append(run_agent_run(args, "none"))
        if (baseline := run_gunicorn(args)) is not None:
            results["gunicorn"].append(baseline)
    if args.rounds > 1:
        for label, rounds in results.items():
            if not rounds:
                continue
            for name, column in (("during", 0), ("updating", 1)):
                ratios = [r[column] for r in rounds]
                listed = ", ".join(f"{r:.2f}" for r in ratios)
                print(
                    f"{label:<12}median p99 {name} / steady {statistics.median(ratios):.2f}x"
                    f" (rounds: {listed})"
                )
            print(f"{label:<12}failed requests in all rounds: {sum(r[2] for r in rounds)}")


if __name__ == "__main__":
    main()
