"""What references and rendered files cost at launch: time to an agent's first output line.

Run: python bench/references.py
Three variants in interleaved rounds (one run of each per round, so a burst of other work on
the machine slows all alike), medians printed:
- `agent-run --secrets S bot.py` (20 secrets): the baseline;
- the same with `--env-file` holding 5 plain values (what any env file costs: python-dotenv);
- the same with `--env-file` holding 5 `${secret:NAME}` references (compare with the above);
- the same with `--render` of a template with 5 references (a private tmpfs directory per
  process, created before the spawn and removed at exit).
"""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20
BOT = "print('up', flush=True)\n"


def first_line(argv: list[str], env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.wait()
    proc.stdout.close()
    assert line.strip() == "up", line
    return elapsed


def main() -> None:
    work = tempfile.mkdtemp(prefix="bench-refs-")
    env = {
        **os.environ,
        "AGENT_RUN_HOME": os.path.join(work, "store"),
        "AGENT_RUN_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "AGENT_RUN_LOG_FORMAT": "json",
    }
    agent_run = [sys.executable, "-m", "launcher"]
    pairs = [f"SECRET_{n}=value-{n}-{os.urandom(8).hex()}" for n in range(20)]
    subprocess.run([*agent_run, "secrets", "set", "s", *pairs], env=env, check=True,
                   capture_output=True)  # fmt: skip
    Path(work, "bot.py").write_text(BOT)
    Path(work, "refs.env").write_text(
        "".join(f"URL_{n}=scheme://user:${{secret:SECRET_{n}}}@host/db\n" for n in range(5))
    )
    Path(work, "plain.env").write_text(
        "".join(f"URL_{n}=scheme://user:password-{n}@host/db\n" for n in range(5))
    )
    Path(work, "config.tmpl").write_text(
        "{" + ", ".join(f'"k{n}": "${{secret:SECRET_{n}}}"' for n in range(5)) + "}\n"
    )
    common = ["--secrets", "s", "--restart", "never"]
    variants = {
        "baseline": [*agent_run, *common, "bot.py"],
        "env-file plain": [*agent_run, *common, "--env-file", "plain.env", "bot.py"],
        "env-file refs": [*agent_run, *common, "--env-file", "refs.env", "bot.py"],
        "render": [*agent_run, *common, "--render", "config.tmpl:config.json", "bot.py"],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(RUNS):
        for name, argv in variants.items():
            times[name].append(first_line(argv, env, work))
    shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(times["baseline"])
    print(f"{RUNS} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:14} median {median * 1000:6.1f} ms  ({(median - base) * 1000:+.1f} ms)")


if __name__ == "__main__":
    main()
