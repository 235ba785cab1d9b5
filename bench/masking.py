"""Cost of preparing the masker for long secret values, and what a prompt line then costs.

Each measurement runs in a fresh interpreter, so the peak memory (ru_maxrss) is its own:
build a `Masker` for one value of N KiB, `prepare()` it (the automaton), then ask
`safe_length()` about an unfinished prompt line, as the relay does at the first prompt.

    python bench/masking.py                      # this checkout
    python bench/masking.py --output OLD.py      # another version of launcher/process/output.py

The value is printable ASCII with quotes and backslashes (so its JSON and repr forms differ
from it), as long as a value may be (16 KiB at most).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

CHILD = r"""
import importlib.util, json, random, resource, sys, time
path, size = sys.argv[1], int(sys.argv[2])
if path:
    spec = importlib.util.spec_from_file_location("output_under_test", path)
    output = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(output)
else:
    from launcher.process import output
import ahocorasick_rs  # imported by both versions: not part of the figure
rng = random.Random(size)
alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=_-\"'\\ "
value = "".join(rng.choice(alphabet) for _ in range(size))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
masker = output.Masker([value])
masker.prepare()
prepared = time.perf_counter()
masker.safe_length(b"Enter the code: ")
done = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"prepare_ms": (prepared - start) * 1e3, "prompt_ms": (done - prepared) * 1e3,
                  "extra_mib": (peak - base) / 1024}))
"""


def measure(output: str, size: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, output, str(size)],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="", help="path of an output.py to measure instead")
    parser.add_argument("--sizes", default="1024,4096,16384", help="value sizes in bytes")
    args = parser.parse_args()
    print(f"{'value':>8}  {'prepare':>10}  {'first prompt':>12}  {'extra memory':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        m = measure(args.output, size)
        print(
            f"{size // 1024:>5} KiB  {m['prepare_ms']:>7.1f} ms  {m['prompt_ms']:>9.1f} ms"
            f"  {m['extra_mib']:>8.1f} MiB"
        )


if __name__ == "__main__":
    main()
