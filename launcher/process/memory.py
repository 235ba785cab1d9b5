"""How much memory a worker's process group uses: what `--max-worker-memory` compares.

A worker is its main process and whatever it started in its group (LiveKit's job processes,
a model server), so the group is summed. PSS (proportional set size, from
/proc/PID/smaps_rollup) is used where we may read it: pages shared between processes (a
forked pool, a template interpreter's imports) are split between them instead of counted
once per process, which would make every forked worker look as big as its parent. Where
smaps_rollup is not readable (another user's process without CAP_SYS_PTRACE, an old
kernel), RSS from /proc/PID/statm is used instead, which over-counts shared pages.
"""

from __future__ import annotations

import os

from launcher.process.containment import descendants, process_stat

PAGE = os.sysconf("SC_PAGE_SIZE")


def _pss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def group_memory(leader: int) -> int | None:
    """Bytes used by `leader` and its descendants still in its process group; None if gone."""
    members = [leader]
    for pid in descendants(leader):
        stat = process_stat(str(pid))
        if stat is not None and stat[1] == leader:
            members.append(pid)
    total = None
    for pid in members:
        used = _pss(pid)
        if used is None:
            used = _rss(pid)
        if used is not None:
            total = (total or 0) + used
    return total
