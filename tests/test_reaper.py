"""The one reaper: every exit status goes to the owner registered for that pid, once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parent.parent

# Run in its own process: a waitpid(-1) in the test process would take the statuses of
# other tests' subprocesses.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from launcher.process import reaper
    from launcher.process import worker as process

    process.become_subreaper()
    told = []
    code = process.spawn([sys.executable, "-c", "raise SystemExit(3)"], os.environ,
                         slot=0, version=None, masker=None)
    killed = process.spawn([sys.executable, "-c", "import time; time.sleep(600)"], os.environ,
                           slot=1, version=None, masker=None)
    # The worker leaves a grandchild behind: an orphan re-parented to us, owned by nobody.
    parent = process.spawn(
        [sys.executable, "-c", "import os, time\\nif os.fork() == 0: time.sleep(0.5)"],
        os.environ, slot=2, version=None, masker=None)
    reaper.register(code.pid, lambda status: told.append(("code", reaper.exit_code(status))))
    reaper.register(killed.pid, lambda status: told.append(("killed", reaper.exit_code(status))))
    os.kill(killed.pid, signal.SIGKILL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    children = f"/proc/self/task/{os.getpid()}/children"
    owned = 0
    while owned < 3 or open(children).read().split():  # until the orphan is collected too
        owned += reaper.reap()
        signal.sigtimedwait({signal.SIGCHLD}, 1.0)
    print(sorted(told), parent.exit_code, reaper.registered(code.pid))
    """
)


def test_exits_go_to_their_registered_owner_and_orphans_are_collected() -> None:
    """reap() hands each worker's status to its own callback once; an orphan is reaped silently."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "[('code', 3), ('killed', 137)] 0 False"
