"""Session mode's spy: each session reports what spy.py reports, from its session process.

Writes `<SPY_REPORT>` once a session starts, then returns (the session ends).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "spy", os.path.join(os.path.dirname(os.path.abspath(__file__)), "spy.py")
)
spy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(spy)


def bot(runner_args):
    found = spy.report()
    found["session_id"] = runner_args.session_id
    spy.write(found)
