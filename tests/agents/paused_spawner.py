"""`agent-run ARGS`, with the launcher's main thread paused right after each relay thread starts.

The pause stands in for a busy core: the relay thread reads the worker's first lines while
the spawning thread is still between "relay started" and "worker registered" (#11, item 4).
Only the main thread is slowed (sys.setprofile is per thread); nothing is replaced.
"""

import os
import sys
import time
from types import FrameType

OUTPUT = "output.py"  # launcher/process/output.py (launcher/output.py before #11)
PAUSE_S = float(os.environ.get("PAUSE_S", "1.0"))


def pause_after_relay_start(frame: FrameType, event: str, arg: object) -> None:
    code = frame.f_code
    if (
        event == "return"
        and code.co_name == "start"
        and code.co_filename.endswith(OUTPUT)
        and "launcher" in code.co_filename
    ):
        time.sleep(PAUSE_S)


sys.setprofile(pause_after_relay_start)

from launcher.cli import main  # noqa: E402  (the profile hook must be in place first)

raise SystemExit(main(sys.argv[1:]))
