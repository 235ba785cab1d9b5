"""The launcher's log: JSON lines off a terminal, readable console (structlog) on one.

Imported only after the workers are spawned (structlog costs ~50 ms to import). Every event
passes a redaction step that masks secret values in any string field, so a value can never
reach a log line even through an exception message or a worker's STATUS= text. JSON lines
are written by a short path of our own (`_json_lines`), the same lines structlog's
JSONRenderer wrote, at a fraction of the cost per event (#18).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from launcher.config import LogFormat
from launcher.process.output import Masker

Log = Callable[..., None]


def _redactor(
    masker: Masker,
) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
    def redact(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if masker:
            texts = [value for value in event.values() if isinstance(value, str)]
            if _may_hold_secret(masker, texts):
                for key, value in event.items():
                    if isinstance(value, str):
                        event[key] = masker.mask_text(value)
        return event

    return redact


def _may_hold_secret(masker: Masker, texts: list[str]) -> bool:
    """False only when masking would leave every one of `texts` as it is.

    One scan of them all, where masking each costs a scan and two conversions: an event has
    a few string fields, and the launcher logs several events per session. A form found
    anywhere in the joined text (even across two fields) sends every field to the mask, as
    does text that is not plain UTF-8 (masking turns a lone surrogate into U+FFFD).
    """
    try:
        data = "\n".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return masker.finds(data)


# structlog's method names for the levels the launcher logs at (add_log_level's mapping).
_LEVELS = {name: name for name in ("debug", "info", "warning", "error", "critical")}
_LEVELS.update(warn="warning", exception="error")


def _json_fallback(value: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no type for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _json_lines(masker: Masker) -> Log:
    """`log()` for JSON lines: what structlog's chain (add_log_level, an ISO UTC
    TimeStamper, the redactor, JSONRenderer) wrote, key for key and in the same order (the
    fields, `event`, `level`, `timestamp`), without its per-event machinery (lazy logger
    proxy, processor calls): ~20 us an event there, and the launcher logs five per session.
    """
    import datetime
    import json

    from launcher.process.output import write_whole

    encode = json.JSONEncoder(default=_json_fallback).encode
    redact = _redactor(masker)
    now = datetime.datetime.now
    utc = datetime.UTC

    def log(event: str, level: str = "info", **fields: Any) -> None:
        method = _LEVELS.get(level)
        if method is None:
            raise AttributeError(f"no log level {level!r}")
        fields["event"] = event
        fields["level"] = method
        fields["timestamp"] = now(tz=utc).isoformat().replace("+00:00", "Z")
        redact(None, method, fields)
        write_whole(2, (encode(fields) + "\n").encode("utf-8", "replace"))

    return log


class _WholeLines:
    """stderr for log events, written as whole lines under the relay's lock.

    Worker output is relayed to the same fd by other threads; `print()` writes an event and
    its newline separately, so a relayed line could land between them and glue a worker's
    traceback onto a JSON event. WriteLogger writes event and newline in one call, and this
    hands it to the relay's writer, which holds the per-fd lock.
    """

    def write(self, text: str) -> int:
        from launcher.process.output import write_whole

        write_whole(2, text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        pass


def uses_json(log_format: LogFormat) -> bool:
    """Whether log lines are JSON: asked for, or `auto` and stderr is not a terminal."""
    return log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not sys.stderr.isatty()
    )


def session_tag(session_id: str, use_json: bool) -> Callable[[bytes, int], bytes]:
    """A relay tag: each line of a session's output names the session (SPEC §5).

    Text: `[session ID] line`; JSON: one object per line with `session`, `stream`, `line`.
    """
    prefix = f"[session {session_id}] ".encode()

    def tag(line: bytes, target: int) -> bytes:
        if not use_json:
            return prefix + line
        import json

        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        stream = "stdout" if target == 1 else "stderr"
        record = {"session": session_id, "stream": stream, "line": text}
        return json.dumps(record).encode() + b"\n"

    return tag


def configure(log_format: LogFormat, masker: Masker) -> Log:
    """Configure structlog for the launcher and return `log(event, level=..., **fields)`."""
    if uses_json(log_format):
        return _json_lines(masker)
    import structlog

    renderer: Any = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redactor(masker),
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(file=_WholeLines()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logger = structlog.get_logger("agent-run")

    def log(event: str, level: str = "info", **fields: Any) -> None:
        getattr(logger, level)(event, **fields)

    return log
