"""`agent-run secrets retired SET VERSION [--wait] [--timeout S]`: is an old version unused?

The second phase of a key rotation: after the new value is set, the old key may be revoked
at the provider only once no process still holds a version that carries it. Every launcher
on this host (every control socket in the store's run directory) is asked for its census
(ops/census.py); with `--wait`, each launcher answers as soon as its last process of an old
version is gone, and the question is asked again of all of them until one round finds none.

Exit codes (SPEC §7): 0 retired; 1 still held (or `--wait` timed out, or a launcher did not
answer, so nobody can say); 2 usage; 65 VERSION is not older than the set's current version
(it cannot retire before a newer one exists); 77 the store or a socket is not ours to read;
78 no such set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError, InvalidInput, OperationFailed, UsageError

PAUSE = 0.5  # between rounds when a launcher could not answer (it may be starting)


def add_parser(commands: Any) -> None:
    retired = commands.add_parser(
        "retired",
        help="whether no process on this host still holds VERSION (or older) of a set",
        description="Answer whether any process of any launcher on this host (workers, "
        "draining workers, warm processes, sessions, slots waiting to restart) still holds "
        "VERSION or an older version of SET: the signal a rotation script waits for before "
        "it revokes the old key at the provider. Exit 0: retired; 1: still held (or --wait "
        "timed out, or a launcher did not answer); 65: VERSION is not older than the "
        "current version; 78: no such set.",
    )
    retired.add_argument("set", metavar="SET")
    retired.add_argument("version", metavar="VERSION", type=_version)
    retired.add_argument(
        "--wait", action="store_true", help="wait until it is retired (exit 0 then)"
    )
    retired.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="S",
        help="with --wait: give up after S seconds (exit 1); default: wait as long as it takes",
    )
    retired.add_argument("--json", action="store_true", help="print the answer as JSON")
    retired.add_argument("--store", metavar="DIR", help="store directory (default: AGENT_RUN_HOME)")


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid version {text!r} (a number like 3)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid version {text!r} (versions start at 1)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r} (seconds)") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r} (seconds, >= 0)")
    return value


def _current_version(store: Any, name: str) -> int:
    infos = store.list_sets()
    for info in infos:
        if info.name == name:
            return int(info.version)
    known = ", ".join(i.name for i in infos) or "none"
    raise ConfigError(f"secret set {name!r} not found; known sets: {known}")


def _ask_all(run_dir: Path, args: argparse.Namespace, deadline: float | None) -> dict[str, Any]:
    """One round: every launcher's answer (waiting on each while it holds the version)."""
    from launcher.ops import control
    from launcher.ops.census import MAX_WAIT

    held: list[dict[str, Any]] = []
    silent: list[str] = []
    asked = 0
    for name in control.running_launchers(run_dir):
        wait = 0.0
        if args.wait:
            left = MAX_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(left, MAX_WAIT)
        path = control.socket_path(run_dir, name)
        try:
            answer = control.request(
                path, "census", timeout=wait + 10.0, set=args.set, retired=args.version, wait=wait
            )
        except ConfigError:
            continue  # gone meanwhile, or a stale socket: not running
        except OperationFailed:
            silent.append(name)
            continue
        asked += 1
        if not isinstance(answer, dict) or not answer.get("ok") or "retired" not in answer:
            silent.append(name)  # an agent-run without the census: it cannot say
        elif not answer["retired"]:
            held.append({"name": name, "pid": answer.get("pid"), "census": answer["census"]})
    return {"held": held, "silent": silent, "asked": asked}


def run(args: argparse.Namespace) -> int:
    from launcher.cli.control_commands import runtime_dir
    from launcher.store.names import check_set_name
    from launcher.store.sets import Store

    check_set_name(args.set)
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout is the longest --wait; give --wait too")
    store = Store.open(Path(args.store) if args.store else None)
    current = _current_version(store, args.set)
    if args.version >= current:
        raise InvalidInput(
            f"v{args.version} of {args.set!r} is not older than its current version "
            f"v{current}: set the new value first (`agent-run secrets set {args.set} ...`), "
            "then wait for the old version to retire"
        )
    run_dir = runtime_dir(args.store)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        found = _ask_all(run_dir, args, deadline)
        if not found["held"] and not found["silent"]:
            break
        if not args.wait or (deadline is not None and time.monotonic() >= deadline):
            return _not_retired(args, found)
        if not found["held"]:
            time.sleep(PAUSE)  # only silent launchers: ask again shortly
    if args.json:
        print(json.dumps({"set": args.set, "version": args.version, "retired": True}))
    else:
        print(
            f"{args.set} v{args.version} retired: no process of {found['asked']} launcher(s) "
            "on this host holds it or an older version"
        )
    return 0


def _not_retired(args: argparse.Namespace, found: dict[str, Any]) -> int:
    from launcher.ops.census import describe, from_data

    parts = []
    for item in found["held"]:
        census = from_data(item["census"])
        parts.append(f"launcher {item['name']} (pid {item['pid']}): {describe(census)}")
    parts += [f"launcher {name} did not answer" for name in found["silent"]]
    if args.json:
        print(
            json.dumps(
                {
                    "set": args.set,
                    "version": args.version,
                    "retired": False,
                    "held_by": found["held"],
                    "not_answering": found["silent"],
                }
            )
        )
    waited = " after --timeout" if args.wait else ""
    raise OperationFailed(f"{args.set} v{args.version} is still held{waited}: " + "; ".join(parts))
