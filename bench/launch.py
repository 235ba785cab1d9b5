"""Launch benchmark: time to an agent's first output line, and masking throughput.

Run: python bench/launch.py [--baseline DIR]
- first line: `python bot.py` vs `agent-run --secrets S bot.py` (20 secrets), same run, beside
  the python-dotenv loader (`load_dotenv()` of the same 20 values from a plaintext .env file,
  then exec of the bot: the launch goal is to be no slower than it), beside another checkout
  of agent-run (`--baseline DIR`, run as `python -m launcher` from DIR, as is this one in that
  case), and beside three floors: a bare launcher (a second interpreter, posix_spawn, a relay thread: what any
  Python launcher pays), the same plus `Store.read` of the set (what decrypting through the
  store adds), and a minimal launcher with the imports a supervisor needs (the old floor);
  RUNS interleaved rounds, one run of each per round;
- relay: MB/s of worker output through agent-run with 100 secrets masked, beside --no-mask.
"""

from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher.store import crypto  # noqa: E402
from launcher.store.keys import MasterKey  # noqa: E402
from launcher.store.sets import Store  # noqa: E402

RUNS = 40
# The least a Python launcher can do on this path: import what spawning, relaying and
# decrypting need (no logic of ours), fork/exec the bot with a parent-death signal, relay
# its output from a thread. Measured beside agent-run as the floor of the design.
FLOOR = """
import os, sys, json, socket, subprocess, threading, select, base64, signal, struct, ctypes
from cryptography.hazmat.bindings._rust import openssl
import ahocorasick_rs
libc = ctypes.CDLL(None)
r, w = os.pipe()
proc = subprocess.Popen([sys.executable, sys.argv[1]], stdout=w, process_group=0,
                        preexec_fn=lambda: libc.prctl(1, 9, 0, 0, 0))
os.close(w)
def relay():
    while data := os.read(r, 65536):
        os.write(1, data)
threading.Thread(target=relay, daemon=True).start()
proc.wait()
"""
# The absolute floor of any launcher written in Python: a second interpreter start, a
# posix_spawn and a relay thread, no imports at all (so no decryption, no parent-death signal).
BARE = """
import os, sys, _thread
r, w = os.pipe()
pid = os.posix_spawn(sys.executable, [sys.executable, sys.argv[1]], os.environ,
                     file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)], setpgroup=0)
os.close(w)
def relay():
    while data := os.read(r, 65536):
        os.write(1, data)
_thread.start_new_thread(relay, ())
os.waitpid(pid, 0)
"""
# The store's share: the same bare launcher, but reading and decrypting the set through
# launcher.store.sets first (its imports included) and putting it in the environment.
# (`re`, which pip's console-script wrapper imports before agent-run's own code, would come
# with `json` anyway: json.decoder imports it.)
STORE_FLOOR = """
import os, sys, _thread
from launcher.store.keys import load_master_key
from launcher.store.sets import Store
store = Store.open(None)
secret_set = store.read(sys.argv[2], load_master_key(store.directory))
r, w = os.pipe()
pid = os.posix_spawn(sys.executable, [sys.executable, sys.argv[1]],
                     {**os.environ, **secret_set.plain()},
                     file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)], setpgroup=0)
os.close(w)
def relay():
    while data := os.read(r, 65536):
        os.write(1, data)
_thread.start_new_thread(relay, ())
os.waitpid(pid, 0)
"""
# The usual way to hand a bot plaintext secrets in Python: python-dotenv, then exec.
DOTENV_LOADER = """
import os, sys
from dotenv import load_dotenv
load_dotenv(sys.argv[2], override=True)
os.execv(sys.executable, [sys.executable, sys.argv[1]])
"""
BOT = "print('agent up', flush=True)\nimport time\ntime.sleep(30)\n"
CHATTY = (
    "import sys\n"
    "line = b'2026-11-23 INFO agent.worker: processing request id=12345 user=alice latency=12ms status=ok\\n'\n"
    "block = line * 1000\n"
    "for _ in range({blocks}):\n"
    "    sys.stdout.buffer.write(block)\n"
)


def first_line_ms(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = (time.perf_counter() - start) * 1000
    assert b"agent up" in line, line
    proc.terminate()
    proc.wait()
    proc.stdout.close()
    return elapsed


def relay_mb_s(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    elapsed = time.perf_counter() - start
    return total / elapsed / 1e6


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="another agent-run checkout to time beside this one")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "launcher")], check=True)
    if args.baseline:
        baseline = Path(args.baseline).resolve()
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(baseline / "launcher")], check=True
        )
    agent_run = str(Path(sys.executable).parent / "agent-run")
    with tempfile.TemporaryDirectory() as tmp:
        key = MasterKey(crypto.new_key(), "bench")
        store = Store(Path(tmp) / "store")
        store.update(
            "s20", key, lambda v: {f"SECRET_{i}": f"sk-{i:03d}-" + "x" * 40 for i in range(20)}
        )
        store.update(
            "s100", key, lambda v: {f"SECRET_{i}": f"sk-{i:03d}-" + "y" * 40 for i in range(100)}
        )
        env = {
            **os.environ,
            "AGENT_RUN_HOME": str(Path(tmp) / "store"),
            "AGENT_RUN_MASTER_KEY": base64.b64encode(key.key).decode(),
            "AGENT_RUN_LOG_FORMAT": "json",
        }
        bot = Path(tmp) / "bot.py"
        bot.write_text(BOT)
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR)
        bare_script = Path(tmp) / "bare.py"
        bare_script.write_text(BARE)
        store_script = Path(tmp) / "store_floor.py"
        store_script.write_text(STORE_FLOOR)
        store_env = {**env, "PYTHONPATH": str(ROOT)}
        dotenv_file = Path(tmp) / "secrets.env"
        dotenv_file.write_text("".join(f"SECRET_{i}=sk-{i:03d}-{'x' * 40}\n" for i in range(20)))
        dotenv_script = Path(tmp) / "dotenv_loader.py"
        dotenv_script.write_text(DOTENV_LOADER)
        variants = {
            "python bot.py": ([sys.executable, str(bot)], env),
            "bare launcher (no imports, posix_spawn)": (
                [sys.executable, str(bare_script), str(bot)],
                env,
            ),
            "bare launcher + Store.read of the set": (
                [sys.executable, str(store_script), str(bot), "s20"],
                store_env,
            ),
            "minimal Python launcher (the floor)": (
                [sys.executable, str(floor_script), str(bot)],
                env,
            ),
            "python-dotenv loader, 20 values": (
                [sys.executable, str(dotenv_script), str(bot), str(dotenv_file)],
                env,
            ),
            "agent-run --secrets S bot.py (20 secrets)": (
                [agent_run, "--secrets", "s20", "--no-watch", str(bot)],
                env,
            ),
        }
        if args.baseline:
            module = [sys.executable, "-m", "launcher", "--secrets", "s20", "--no-watch", str(bot)]
            variants["python -m launcher, this checkout"] = (module, store_env)
            variants["python -m launcher, --baseline"] = (
                module,
                {**env, "PYTHONPATH": str(baseline)},
            )
        # Interleaved rounds (one run of each variant per round): a burst of other work on
        # the machine then slows every variant alike instead of one of them.
        times: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(RUNS):
            for label, (command, command_env) in variants.items():
                times[label].append(first_line_ms(command, command_env))
        base = statistics.median(times["python bot.py"])
        print(f"{'time to first line':<44}{'median ms':>10}{'p90 ms':>9}{'ratio':>8}")
        for label, samples in times.items():
            median = statistics.median(samples)
            p90 = statistics.quantiles(samples, n=10)[-1]
            print(f"{label:<44}{median:>10.1f}{p90:>9.1f}{median / base:>8.2f}")
        chatty = Path(tmp) / "chatty.py"
        chatty.write_text(CHATTY.format(blocks=2000))  # ~190 MB
        print()
        print(f"{'relay of ~190 MB of output':<44}{'MB/s':>10}")
        direct = relay_mb_s([sys.executable, str(chatty)], env)
        masked = relay_mb_s(
            [agent_run, "--secrets", "s100", "--restart", "never", "--no-watch", str(chatty)], env
        )
        unmasked = relay_mb_s(
            [
                agent_run,
                "--secrets",
                "s100",
                "--restart",
                "never",
                "--no-watch",
                "--no-mask",
                str(chatty),
            ],
            env,
        )
        print(f"{'python chatty.py (no launcher)':<44}{direct:>10.0f}")
        print(f"{'agent-run, 100 secrets masked':<44}{masked:>10.0f}")
        print(f"{'agent-run --no-mask (fds handed over)':<44}{unmasked:>10.0f}")


if __name__ == "__main__":
    main()
