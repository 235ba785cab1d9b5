"""The launcher's JSON log lines: their shape, and no secret value in any string field."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parent.parent

SCRIPT = textwrap.dedent(
    """
    from launcher.config import LogFormat
    from launcher.ops.logs import configure
    from launcher.process.output import Masker

    class Thing:
        def __repr__(self):
            return "Thing()"

    log = configure(LogFormat.JSON, Masker(["sk-live-0042", "true"]))
    log("worker_exited", slot=0, pid=7, reason="crash: key sk-live-0042 refused", warm=True,
        thing=Thing(), ratio=0.5, lines=["as relayed"], level="warning")
    log("plain", text="caf\\u00e9 \\"quoted\\"", version=None)
    """
)


def _lines() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr.splitlines()


def test_json_lines_keep_their_shape_and_mask_string_fields() -> None:
    """Fields in call order, then event, level, timestamp; strings masked, other values not."""
    first, second = _lines()
    event = json.loads(first)
    assert list(event) == [
        *("slot", "pid", "reason", "warm", "thing", "ratio", "lines"),
        *("event", "level", "timestamp"),
    ]
    assert event["reason"] == "crash: key *** refused"
    assert event["warm"] is True  # a JSON true is no string: "true" as a secret leaves it
    assert event["thing"] == "Thing()"  # what JSON cannot hold is written as its repr
    assert event["level"] == "warning"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])
    assert "sk-live-0042" not in first
    plain = json.loads(second)
    assert plain["text"] == 'café "quoted"' and plain["version"] is None
    assert plain["level"] == "info"
    assert '"caf\\u00e9' in second  # ASCII-only JSON, as structlog's renderer wrote it
