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

from launcher.errors import OperationFailed
from launcher.ops import control


def runtime_dir(store: str | None) -> Path:
    """Where control sockets live: AGENT_RUN_RUNTIME_DIR, else `<store>/run`."""
    explicit = os.environ.get("AGENT_RUN_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    from launcher.store.sets import Store

    return Store.open(Path(store) if store else None).run_dir


MAX_TIMEOUT = 1e7  # seconds (~4 months); beyond it a socket timeout overflows


def _timeout(text: str) -> float:
    """argparse type of `--timeout`: seconds, a finite number > 0 (argparse says exit 2)."""
    seconds = float(text)
    if not 0 < seconds <= MAX_TIMEOUT:  # also refuses nan
        raise ValueError(text)
    return seconds


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
        type=_timeout,
        default=None,
        metavar="S",
        help="give up waiting after S seconds (default: wait for the result)",
    )
    reload.add_argument("--json", action="store_true", help="print the result as JSON")
    _sessions_parser(commands)
    return parser


def _sessions_parser(commands: Any) -> None:
    sessions = commands.add_parser(
        "sessions",
        help="list, show, start or stop sessions of a session-mode launcher",
        description=(
            "Talk to a launcher in session mode (a target that defines bot()): the same "
            "operations as its HTTP API (GET/POST/DELETE /sessions), through the control socket."
        ),
    )
    actions = sessions.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="every known session (the default)")
    show = actions.add_parser("show", help="one session")
    show.add_argument("id", help="the session id")
    start = actions.add_parser("start", help="start a session and print its id")
    start.add_argument(
        "--body",
        default="{}",
        metavar="JSON",
        help="the JSON the entrypoint receives as runner_args.body (default: {})",
    )
    stop = actions.add_parser("stop", help="stop a session (its stop signal, once)")
    stop.add_argument("id", help="the session id")
    for parser in (sessions, listing, show, start, stop):
        _common(parser)
        parser.add_argument("--json", action="store_true", help="print JSON")


def format_sessions(sessions: list[dict[str, Any]]) -> str:
    """The human view of `agent-run sessions`: one row per session."""
    if not sessions:
        return "no sessions"
    rows = [("ID", "PID", "STATE", "VERSION", "WARM", "START MS", "AGE", "EXIT")]
    for item in sessions:
        version = item.get("secrets_version")
        rows.append(
            (
                str(item["id"]),
                str(item["pid"]),
                str(item["state"]),
                str(version if version is not None else "-"),
                "yes" if item.get("warm") else "no",
                str(item["start_ms"] if item.get("start_ms") is not None else "-"),
                _uptime(item.get("created_at")),
                str(item["exit_code"] if item.get("exit_code") is not None else "-"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _sessions(args: argparse.Namespace, path: Path) -> int:
    action = args.action or "list"
    fields: dict[str, Any] = {"action": action}
    if action in ("show", "stop"):
        fields["id"] = args.id
    if action == "start":
        try:
            fields["body"] = json.loads(args.body)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            from launcher.errors import InvalidInput

            raise InvalidInput(f"--body is not valid JSON: {error}") from None
    answer = control.request(
        path, "sessions", timeout=None if action == "start" else 10.0, **fields
    )
    if not answer.get("ok"):
        message = str(answer.get("error", "no answer"))
        if answer.get("status") is None and "unknown command" in message:
            message = f"the launcher named {path.stem!r} is not in session mode"
        raise OperationFailed(f"sessions {action}: {message}")
    if args.json:
        print(json.dumps(answer.get("sessions", answer.get("session")), indent=2))
    elif action == "list":
        print(format_sessions(answer["sessions"]))
    else:
        session = answer["session"]
        verb = {"start": "started", "stop": "stopping", "show": ""}[action]
        if action == "show":
            print(format_sessions([session]))
        else:
            print(
                f"session {session['id']} {verb} (pid {session['pid']}, "
                f"secrets v{session['secrets_version']})"
            )
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


def format_session_status(status: dict[str, Any]) -> str:
    """Session mode: warm processes and running sessions (no worker slots)."""
    version = status.get("version")
    lines = [
        f"{status['name']}: launcher pid {status['pid']}, session mode, "
        f"set {status.get('secret_set') or '-'} v{version if version is not None else '-'}, "
        f"{status['sessions_active']} session(s) running"
        + (" (draining)" if status.get("draining") else ""),
    ]
    rows = [("PID", "STATE", "VERSION", "UPTIME", "SESSION")]
    for w in status["warm"]:
        rows.append((str(w["pid"]), w["state"], str(w["version"]), _uptime(w["started_at"]), "-"))
    for s in status["sessions"]:
        rows.append(
            (
                str(s["pid"]),
                s["state"],
                str(s["secrets_version"]),
                _uptime(s["started_at"]),
                s["id"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += [
        "  " + "  ".join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    rollout = status.get("rollout") or {}
    if rollout.get("reason"):
        lines.append(f"last update: {rollout['state']}: {rollout['reason']}")
    lines += format_census(status) + format_exits(status)
    return "\n".join(lines)


SHOWN_EXITS = 5


def format_census(status: dict[str, Any]) -> list[str]:
    """`processes by secrets version: v2: 2 ready; v1: 1 draining` (ops/census.py)."""
    from launcher.ops.census import describe, from_data

    census = from_data(status.get("census", []))
    return [f"processes by secrets version: {describe(census)}"] if census else []


def format_exits(status: dict[str, Any]) -> list[str]:
    """The last exits and why each happened, newest last (`status --json` has them all)."""
    recent = status.get("recent_exits") or []
    if not recent:
        return []
    counts = status.get("exit_counts") or {}
    tally = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
    lines = [f"exits: {tally}"]
    for item in recent[-SHOWN_EXITS:]:
        slot = "session" if item["slot"] < 0 else f"slot {item['slot']}"
        version = item["version"] if item["version"] is not None else "-"
        lines.append(f"  pid {item['pid']} ({slot}, v{version}): {item['text']}")
        lines += [f"  | {text[:300]}" for text in item.get("last_lines") or []]
    return lines


def _status_text(worker: dict[str, Any]) -> str:
    """The worker's own STATUS= line, and whether it is being recycled (and why)."""
    text = worker.get("status_text") or ""
    if worker.get("recycling"):
        text = f"{text} [recycling: {worker['recycling']}]".strip()
    return text


def _last_exit(worker: dict[str, Any]) -> str:
    """`137 oom-killed (cgroup)`: the code and why (supervision/exits.py)."""
    code, reason = worker.get("last_exit"), worker.get("exit_reason")
    if code is None:
        return "-"
    return f"{code} {reason}" if reason else str(code)


def format_status(status: dict[str, Any]) -> str:
    """The human view of a status: a header, a table of workers, the rollout."""
    if status.get("mode") == "sessions":
        return format_session_status(status)
    version = status.get("version")
    lines = [
        f"{status['name']}: launcher pid {status['pid']}, "
        f"set {status.get('secret_set') or '-'} v{version if version is not None else '-'}, "
        f"{status['ready_on_current']}/{len(status['workers'])} ready on current version"
    ]
    rows = [
        ("SLOT", "PID", "STATE", "VERSION", "UPTIME", "RESTARTS", "LAST EXIT", "PORT", "STATUS")
    ]
    for w in status["workers"]:
        rows.append(
            (
                str(w["slot"]),
                str(w["pid"] or "-"),
                w["state"],
                str(w["version"] if w["version"] is not None else "-"),
                _uptime(w["started_at"]),
                str(w["restarts"]),
                _last_exit(w),
                str(w.get("port") or "-"),
                _status_text(w),
            )
        )
    for w in status.get("draining", []):
        rows.append(
            (
                str(w["slot"]),
                str(w["pid"]),
                "draining",
                str(w["version"]),
                _uptime(w["started_at"]),
                "",
                "",
                str(w.get("port") or "-"),
                w.get("status_text") or "",
            )
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
        if rollout.get("reason") and rollout["state"] == "aborted":
            line += f": {rollout['reason']}"
        lines.append(line)
        if rollout["state"] == "aborted" and rollout.get("exit_reason"):
            lines.append(f"  the replacement ended: {rollout['exit_reason']}")
        if rollout["state"] == "aborted" and rollout.get("last_lines"):
            lines.append("  last lines of the failed replacement:")
            lines += [f"  | {text[:300]}" for text in rollout["last_lines"]]
    if rollout.get("reason") and rollout["state"] != "aborted":
        # A later update that never started (an older file refused, a damaged set, #12).
        lines.append(f"update skipped: {rollout['reason']}")
    lines += format_census(status) + format_exits(status)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    path = control.choose(runtime_dir(args.store), args.name)
    if args.command == "sessions":
        return _sessions(args, path)
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
