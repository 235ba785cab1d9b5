"""Store benchmark: CLI start-up and write latency against `python -c pass`, decrypt cost.

Run: python bench/store.py   (uses the `agent-run` next to this interpreter)
"""

from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher.store import crypto  # noqa: E402
from launcher.store.keys import MasterKey  # noqa: E402
from launcher.store.sets import Store  # noqa: E402

RUNS = 30


def wall_ms(command: list[str], env: dict[str, str], runs: int = RUNS) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def precompile() -> None:
    """Byte-compile the package, as `pip install` does for a regular install.

    An editable install under PYTHONDONTWRITEBYTECODE=1 (set on this machine) would otherwise
    recompile every module on every start and measure the compiler, not agent-run.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "launcher")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    precompile()
    agent_run = str(Path(sys.executable).parent / "agent-run")
    with tempfile.TemporaryDirectory() as tmp:
        key = MasterKey(crypto.new_key(), "bench")
        env = {
            **os.environ,
            "AGENT_RUN_HOME": str(Path(tmp) / "store"),
            "AGENT_RUN_MASTER_KEY": base64.b64encode(key.key).decode(),
        }
        store = Store(Path(tmp) / "store")
        store.update("prod", key, lambda v: {f"KEY_{i}": f"value-{i}" for i in range(20)})
        baseline = wall_ms([sys.executable, "-c", "pass"], env)
        listing = wall_ms([agent_run, "secrets", "list"], env)
        setting = wall_ms([agent_run, "secrets", "set", "prod", "ONE=x"], env)
        base = statistics.median(baseline)
        print(f"{'command':<34}{'median ms':>10}{'p90 ms':>9}{'x python':>10}")
        for label, times in (
            ("python -c pass", baseline),
            ("agent-run secrets list", listing),
            ("agent-run secrets set (1 key)", setting),
        ):
            median = statistics.median(times)
            p90 = statistics.quantiles(times, n=10)[-1]
            print(f"{label:<34}{median:>10.1f}{p90:>9.1f}{median / base:>10.2f}")
        print()
        print(f"{'Store.read of a set of N secrets':<34}{'1 version':>10}{'10 kept':>9}")
        for count in (10, 100, 1000):
            fresh, full = f"n{count}", f"h{count}"
            store.update(fresh, key, lambda v, c=count: {f"KEY_{i}": "v" * 40 for i in range(c)})
            for version in range(10):  # fill the history: the file is then ~10x larger
                store.update(
                    full,
                    key,
                    lambda v, c=count, n=version: {f"KEY_{i}": f"{n}" * 40 for i in range(c)},
                )
            row = [_median_ms(lambda name=name: store.read(name, key)) for name in (fresh, full)]
            print(f"{'N = ' + str(count):<34}{row[0]:>10.3f}{row[1]:>9.3f}")
        cheap = _median_ms(lambda: store.current_version("h1000"), runs=200)
        print(f"{'current_version (no decryption)':<34}{cheap:>10.3f}")


def _median_ms(call: Callable[[], object], runs: int = 50) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


if __name__ == "__main__":
    main()
