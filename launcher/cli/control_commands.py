"""`agent-run status | reload | sessions`: ask a running launcher through its control socket.

These commands start fast (no event loop, no crypto): they find the launcher's socket in the
store's run directory, send one request and print the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from launcher import control
from launcher.errors import ConfigError, OperationFailed, UsageError


def runtime_dir(store: str | None) -> Path:
    """Where control sockets live: AGENT_RUN_RUNTIME_DIR, else `<store>/run`."""
    explicit = os.environ.get("AGENT_RUN_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    from launcher.store import Store

    return Store.open(Path(store) if store else None).run_dir


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        help="which launcher (its --name, default its secret set); "
        "may be left out when only one is running",
    )
    parser.add_argument("--store", metavar="DIR", help="store directory (default: AGENT_RUN_HOME)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-run", description="Talk to a running agent-run launcher."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status",
        help="show the pool, versions and rollout progress",
        description=(
            "Show the running launcher's workers (pid, state, secrets version, uptime, "
            "restarts) and the progress of any rollout."
        ),
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    reload = commands.add_parser(
        "reload",
        help="roll the workers onto the current secrets and wait for the result",
        description=(
            "Start a rolling restart (as SIGHUP does) and wait for its result: exit 0 when "
            "every worker runs the new version, 1 when the rollout aborted and the old "
            "workers kept serving."
        ),
    )
    _common(reload)
    reload.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up waiting after S seconds (default: wait for the result)",
    )
    reload.add_argument("--json", action="store_true", help="print the result as JSON")
    sessions = commands.add_parser(
        "sessions",
        help="list, show, start or stop sessions of a session-mode launcher",
        description="Talk to the session API of a launcher in session mode (its --listen).",
    )
    sessions.add_argument(
        "action", nargs="?", default="list", choices=["list", "show", "start", "stop"]
    )
    sessions.add_argument("session", nargs="?", help="session id (show, stop) or JSON body (start)")
    sessions.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=os.environ.get("AGENT_RUN_LISTEN", "127.0.0.1:7860"),
        help="the launcher's session API (default: $AGENT_RUN_LISTEN, else 127.0.0.1:7860)",
    )
    sessions.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _session_api(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    base = f"http://{args.listen}/sessions"
    method, url, body = "GET", base, None
    if args.action in ("show", "stop"):
        if not args.session:
            raise UsageError(f"sessions {args.action} needs a session id")
        url = f"{base}/{args.session}"
        method = "DELETE" if args.action == "stop" else "GET"
    elif args.action == "start":
        body = (args.session or "{}").encode()
        method = "POST"
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = json.loads(error.read() or b"{}").get("error", error.reason)
        raise OperationFailed(f"session API at {args.listen}: {error.code} {detail}") from None
    except OSError as error:
        raise ConfigError(
            f"no session API answers at {args.listen} ({error}); is a launcher in session mode "
            "running there? (--listen)"
        ) from None
    if args.json or args.action != "list":
        print(json.dumps(answer, indent=2))
        return 0
    rows = [("ID", "PID", "STATE", "VERSION", "START MS", "EXIT")]
    for s in answer:
        rows.append(
            (s["id"], str(s["pid"]), s["state"], str(s["secrets_version"]), str(s["start_ms"]),
             "-" if s["exit_code"] is None else str(s["exit_code"]))
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _uptime(started_at: float | None) -> str:
    if started_at is None:
        return "-"
    seconds = int(max(0.0, time.time() - started_at))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_status(status: dict[str, Any]) -> str:
    """The human view of a status: a header, a table of workers, the rollout."""
    version = status.get("version")
    lines = [
        f"{status['name']}: launcher pid {status['pid']}, "
        f"set {status.get('secret_set') or '-'} v{version if version is not None else '-'}, "
        f"{status['ready_on_current']}/{len(status['workers'])} ready on current version"
    ]
    rows = [("SLOT", "PID", "STATE", "VERSION", "UPTIME", "RESTARTS", "LAST EXIT")]
    for w in status["workers"]:
        rows.append(
            (
                str(w["slot"]),
                str(w["pid"] or "-"),
                w["state"],
                str(w["version"] if w["version"] is not None else "-"),
                _uptime(w["started_at"]),
                str(w["restarts"]),
                str(w["last_exit"] if w["last_exit"] is not None else "-"),
            )
        )
    for w in status.get("draining", []):
        rows.append(
            ("-", str(w["pid"]), "draining", str(w["version"]), _uptime(w["started_at"]), "", "")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += [
        "  " + "  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    rollout = status["rollout"]
    if rollout["state"] != "idle":
        line = f"rollout: {rollout['state']} v{rollout['from_version']} -> v{rollout['to_version']}"
        line += f" ({rollout['done']}/{rollout['total']} slots)"
        if rollout.get("reason"):
            line += f": {rollout['reason']}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sessions":
        return _session_api(args)
    path = control.choose(runtime_dir(args.store), args.name)
    if args.command == "status":
        answer = control.request(path, "status")
        if args.json:
            print(json.dumps(answer["status"], indent=2))
        else:
            print(format_status(answer["status"]))
        return 0
    answer = control.request(path, "reload", timeout=args.timeout)
    if args.json:
        print(json.dumps(answer, indent=2))
    if not answer.get("ok"):
        raise OperationFailed(f"reload of {path.stem!r} failed: {answer.get('error', 'aborted')}")
    if not args.json:
        print(answer.get("message", "reload succeeded"))
    sys.stdout.flush()
    return 0
