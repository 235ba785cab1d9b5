"""agent-run: encrypted secret sets for AI agents, injected at launch and rolled out live.

The public face is small on purpose: the CLI (`agent-run`) is the product, and agents only
ever need `notify_ready()` to tell the launcher they can take work. Everything else lives in
modules that are imported lazily so that `agent-run` starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "notify_ready", "notify_status", "notify_watchdog"]


def __getattr__(name: str) -> object:
    # Lazy: agents import `launcher` for one helper; they must not pay for the rest.
    if name in ("notify_ready", "notify_status", "notify_watchdog"):
        from launcher import sd_notify

        return getattr(sd_notify, name)
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")
