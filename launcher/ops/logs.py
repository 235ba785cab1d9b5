"""The one structlog configuration: JSON lines off a terminal, readable console on one.

Imported only after the workers are spawned (structlog costs ~50 ms to import). Every event
passes a redaction step that masks secret values in any string field, so a value can never
reach a log line even through an exception message or a worker's STATUS= text.
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
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = masker.mask_text(value)
        return event

    return redact


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
    import structlog

    use_json = uses_json(log_format)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
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
