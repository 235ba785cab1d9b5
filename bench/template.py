"""Template interpreter benchmark (#18): CPU per replacement and shared memory, each beside
the same launcher with `--preload none` (a fresh interpreter per process), in the same run.

Run: python bench/template.py [--rollouts 10] [--large livekit.agents] [--skip-pss]
1. CPU per replacement: 4 notify-ready HTTP workers (sample_agents/http_agent.py), ROLLOUTS
   `agent-run reload` rollouts of all 4; the CPU time (user + system) of the launcher, of
   every child it reaped, and of the live ones (template included) before and after, divided
   by the number of replacements.
2. Memory: 4 workers that import LARGE (default livekit.agents, ~130 MB resident) and wait;
   proportional set size (PSS, /proc/PID/smaps_rollup) of each worker, and of the template,
   against 4 fresh interpreters; the ratio of the 4 workers' PSS (template included) to one
   fresh worker's.
The machine's load average is printed with each figure (the machine may be shared).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


class Launcher:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.events: queue.Queue[dict[str, object]] = queue.Queue()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "agent-run"), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def wait(self, name: str, count: int = 1, timeout: float = 600) -> list[dict[str, object]]:
        found: list[dict[str, object]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if event.get("event") == name:
                found.append(event)
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """The launcher's CPU, its reaped children's, and its live children's (with theirs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    for child in children(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in stat[11:15])
    return total / TICK


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise SystemExit(f"no Pss for {pid}")


def environment(tmp: str) -> dict[str, str]:
    return {
        **os.environ,
        "AGENT_RUN_HOME": str(Path(tmp) / "store"),
        "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "AGENT_RUN_LOG_FORMAT": "json",
    }


def cpu_per_replacement(preload: str, rollouts: int) -> float:
    agent_run = str(Path(sys.executable).parent / "agent-run")
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(tmp)
        subprocess.run([agent_run, "secrets", "set", "demo", "DEMO_API_KEY=v0"], env=env,
                       check=True, capture_output=True)  # fmt: skip
        launcher = Launcher(
            env, "--secrets", "demo", "--name", "bench", "--workers", "4", "--ready", "notify",
            "--drain-timeout", "10", "--no-watch", "--preload", preload,
            str(ROOT / "sample_agents" / "http_agent.py"),
        )  # fmt: skip
        try:
            launcher.wait("worker_ready", 4)
            time.sleep(1)
            before = cpu_seconds(launcher.proc.pid)
            for _ in range(rollouts):
                subprocess.run([agent_run, "reload", "--name", "bench"], env=env, check=True,
                               capture_output=True)  # fmt: skip
                launcher.wait("worker_drained", 4)
            after = cpu_seconds(launcher.proc.pid)
        finally:
            launcher.stop()
    return (after - before) / (4 * rollouts) * 1000


def memory(preload: str, large: str) -> tuple[list[int], int]:
    with tempfile.TemporaryDirectory() as tmp:
        agent = Path(tmp) / "large_agent.py"
        agent.write_text(f"import time\nimport {large}\nprint('imported', flush=True)\n"
                         "time.sleep(3600)\n")  # fmt: skip
        launcher = Launcher(
            environment(tmp), "--workers", "4", "--ready", "log:imported", "--ready-timeout",
            "900", "--preload", preload, str(agent),
        )  # fmt: skip
        try:
            ready = launcher.wait("worker_ready", 4, timeout=1800)
            time.sleep(2)
            workers = [int(str(event["pid"])) for event in ready]
            template = [p for p in children(launcher.proc.pid) if p not in workers]
            pss = [pss_kib(pid) for pid in workers]
            template_pss = sum(
                pss_kib(p)
                for p in template
                if b"template_runtime" in Path(f"/proc/{p}/cmdline").read_bytes()
            )
        finally:
            launcher.stop()
    return pss, template_pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--large", default="livekit.agents")
    parser.add_argument("--skip-pss", action="store_true")
    args = parser.parse_args()
    print(f"CPU per replacement, 4 workers x {args.rollouts} rollouts (http_agent.py)")
    for preload in ("none", "auto", "none", "auto"):
        ms = cpu_per_replacement(preload, args.rollouts)
        print(f"  --preload {preload:<5} {ms:7.1f} ms CPU per replacement   ({load_average()})",
              flush=True)  # fmt: skip
    if args.skip_pss:
        return
    print(f"\nPSS of 4 workers importing {args.large}")
    fresh, _ = memory("none", args.large)
    print(f"  fresh interpreters: workers {[p // 1024 for p in fresh]} MiB, sum "
          f"{sum(fresh) // 1024} MiB   ({load_average()})", flush=True)  # fmt: skip
    warm, template = memory(args.large, args.large)
    total = sum(warm) + template
    print(f"  template forks:     workers {[p // 1024 for p in warm]} MiB, template "
          f"{template // 1024} MiB, sum {total // 1024} MiB   ({load_average()})")  # fmt: skip
    one = sum(fresh) / len(fresh)
    print(f"  4 forked workers + template / one fresh worker: {total / one:.2f}x "
          f"(4 fresh: {sum(fresh) / one:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
