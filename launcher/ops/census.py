"""The census of secrets versions: which version each process of a launcher holds.

Rotating a provider key is two phases: publish the new value, then revoke the old key once
nothing uses it. A rollout "succeeds" as soon as every slot has a ready replacement, but the
old workers may drain for an hour, and a session started on the old version runs to its end;
the old key is safe to revoke only when no process holds its version any more. The engine
knows exactly which process holds which version, so each launcher answers for its own
processes here, and `agent-run secrets retired SET VERSION` asks every launcher on the host.

A version is *held* by every process started with it that has not been reaped (starting,
ready, draining, a warm process, a session, SIGKILLed but not yet reaped) and by every slot
waiting to restart a worker on it (a crash backoff): that restart would start it again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from launcher.ops.status import CensusEntry, PoolStatus, StatusBoard

MAX_WAIT = 3600.0  # one control request waits at most this long; the client asks again


def holders(census: Iterable[CensusEntry], version: int) -> list[CensusEntry]:
    """The entries that hold `version` or an older one."""
    return [e for e in census if e.version is not None and e.version <= version and e.processes]


def as_data(census: Iterable[CensusEntry]) -> list[dict[str, Any]]:
    return [{"version": e.version, "state": e.state, "processes": e.processes} for e in census]


def from_data(items: Iterable[Mapping[str, Any]]) -> list[CensusEntry]:
    """The census as `status --json` and the `census` command give it, back as entries."""
    return [CensusEntry(i["version"], i["state"], i["processes"]) for i in items]


def describe(census: Iterable[CensusEntry]) -> str:
    """`v2: 2 ready; v1: 1 draining, 1 session`, newest version first."""
    by_version: dict[int | None, list[str]] = {}
    for entry in census:
        by_version.setdefault(entry.version, []).append(f"{entry.processes} {entry.state}")
    ordered = sorted(by_version.items(), key=lambda item: -1 if item[0] is None else item[0])
    return "; ".join(
        f"{'v' + str(version) if version is not None else 'no set'}: {', '.join(parts)}"
        for version, parts in reversed(ordered)
    )


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{name} must be between {low:g} and {high:g}")
    return number


class CensusService:
    """The control socket's `census` command, served by a running launcher.

    `{"command": "census"}` answers this launcher's set and census. With `"set"` and
    `"retired": VERSION` it also says whether VERSION (or older) of that set is retired
    here, and with `"wait": S` it answers as soon as it is, or after S seconds.
    """

    def __init__(
        self,
        census: Callable[[], tuple[CensusEntry, ...]],
        secret_set: str | None,
        board: StatusBoard,
    ) -> None:
        import anyio

        self._census = census
        self.secret_set = secret_set
        self._changed = anyio.Event()
        board.subscribe(self._on_change)

    def _on_change(self, previous: PoolStatus | None, status: PoolStatus) -> None:
        import anyio

        self._changed.set()
        self._changed = anyio.Event()

    async def answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        import anyio

        try:
            wanted_set = request.get("set")
            if wanted_set is not None and not isinstance(wanted_set, str):
                raise ValueError("set must be a string")
            version = request.get("retired")
            if version is not None:
                version = int(_number(version, "retired", 1, 2**53))
            wait = _number(request.get("wait", 0), "wait", 0, MAX_WAIT)
        except ValueError as error:
            return {"ok": False, "error": str(error)}
        ours = wanted_set is None or wanted_set == self.secret_set
        with anyio.move_on_after(wait):
            while version is not None and ours and holders(self._census(), version):
                await self._changed.wait()
        census = self._census()
        answer: dict[str, Any] = {
            "ok": True,
            "pid": os.getpid(),
            "secret_set": self.secret_set,
            "census": as_data(census),
        }
        if version is not None:
            answer["retired"] = not (ours and holders(census, version))
        return answer
