"""Store changes → reload requests; for `agent-run dev`, code changes too.

The launcher watches the store *directory* (not the set's file): every write replaces the
file by rename, and a Kubernetes volume is updated by swapping its `..data` symlink, so the
file's own inode changes and a watch on it would go stale. Any event in the directory makes
us re-read a cheap fingerprint (the set's version from its plaintext header, the platform
file's identity); only a fingerprint that differs from the last one counts as a change.
That also makes the watcher immune to our own reads and to editors' temp files.

watchfiles' defaults group changes for up to 1.6 s; a rollout should start within tens of
milliseconds of `secrets set` returning, so the grouping window is a few milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path

# Milliseconds: wait this long for more events after one (a rename comes with a few), and
# never group longer than DEBOUNCE_MS.
STEP_MS = 5
DEBOUNCE_MS = 50
# How long the watcher thread blocks before it looks at its stop flag: on shutdown the
# launcher waits this long for the watch to end (watchfiles' default is 5 s).
RUST_TIMEOUT_MS = 100


def _accept_all(change: object, path: str) -> bool:
    # The default filter drops dot-files, which would hide the kubelet's `..data` swap.
    return True


async def fingerprints(
    directory: str | Path,
    fingerprint: Callable[[], Hashable],
    last: Hashable,
    *,
    force_polling: bool | None = None,
) -> AsyncIterator[Hashable]:
    """Yield each new fingerprint of `directory`'s contents, starting after `last`.

    `last` is the fingerprint the caller already acted on (the one its workers' snapshot
    took before decrypting), so a change that lands between start-up and the first watch is
    not lost. The first fingerprint is read only once watchfiles is watching (issue #12: read
    before, a write between the read and the start of the watch was missed until some later
    change): `yield_on_timeout` makes awatch hand control back after its watcher exists,
    within RUST_TIMEOUT_MS, even when nothing happened.
    """
    import watchfiles

    armed = False
    async for changes in watchfiles.awatch(
        directory,
        watch_filter=_accept_all,
        recursive=False,
        step=STEP_MS,
        debounce=DEBOUNCE_MS,
        rust_timeout=RUST_TIMEOUT_MS,
        yield_on_timeout=True,
        force_polling=force_polling,
    ):
        if armed and not changes:
            continue  # a timeout tick: nothing changed, nothing to read
        armed = True
        current = fingerprint()
        if current != last:
            last = current
            yield current


async def code_changes(directory: Path) -> AsyncIterator[list[str]]:
    """`agent-run dev`: yield the names of the .py files changed under `directory`.

    Editors save in bursts (temp file, rename, chmod), so changes are grouped for 200 ms."""
    import watchfiles

    async for changes in watchfiles.awatch(
        directory,
        watch_filter=watchfiles.PythonFilter(),
        debounce=200,
        step=50,
        rust_timeout=RUST_TIMEOUT_MS,
    ):
        yield sorted({Path(path).name for _change, path in changes})
