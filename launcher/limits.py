"""The machine's limits a launch must respect, checked before the first worker is spawned.

- How many workers: `--workers 100000` used to fork until the machine ran out of processes
  (issue #15). The rule: at most `WORKERS_PER_CPU` per CPU this launcher may run on, and, when
  a process limit (`ulimit -u`, RLIMIT_NPROC) applies, at most half of it, since the user's
  other processes and whatever the workers start themselves count against the same limit.
  Root is exempt from RLIMIT_NPROC, so only the CPU rule bounds it.
- How large a worker's command line and environment may be. Linux refuses an `execve` with
  E2BIG when one argument or "KEY=VALUE" string exceeds MAX_ARG_STRLEN (32 pages, 128 KiB
  with 4 KiB pages, counting the NUL), or when all strings, their NULs and the pointer arrays
  exceed a quarter of the stack limit (`ulimit -s`), capped at 6 MiB and never below 32 pages
  (fs/exec.c). A launch found out at spawn time, as exit 127 from every worker; now the
  composed environment is measured first and refused with exit 65.

The checks are pure functions of numbers the caller reads with `machine()`, so the rules can
be tested with any machine's figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from launcher.errors import InvalidInput, UsageError

WORKERS_PER_CPU = 32
_STACK_CAP = 6 * 1024 * 1024  # fs/exec.c: _STK_LIM / 4 * 3
# Bytes kept free for what is added to a worker after this check: the executable's resolved
# path (at most PATH_MAX) and the runtime variables whose values vary per worker.
HEADROOM = 4096 + 1024


class Machine(NamedTuple):
    """The figures the rules depend on (see `machine()`)."""

    cpus: int
    process_limit: int | None  # RLIMIT_NPROC soft limit; None when unlimited or exempt
    stack_limit: int | None  # RLIMIT_STACK soft limit; None when unlimited
    page_size: int


def machine() -> Machine:
    """This launcher's figures: usable CPUs, process and stack limits, page size."""
    import resource

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return Machine(
        cpus=max(1, cpus),
        process_limit=None if nproc == resource.RLIM_INFINITY or os.geteuid() == 0 else nproc,
        stack_limit=None if stack == resource.RLIM_INFINITY else stack,
        page_size=os.sysconf("SC_PAGE_SIZE"),
    )


def max_workers(figures: Machine) -> tuple[int, str]:
    """The most worker processes a launcher may start here, and the rule that set it."""
    limit = WORKERS_PER_CPU * figures.cpus
    rule = f"{WORKERS_PER_CPU} per CPU, {figures.cpus} CPU(s) usable"
    if figures.process_limit is not None and figures.process_limit // 2 < limit:
        limit = max(1, figures.process_limit // 2)
        rule = f"half the process limit, ulimit -u {figures.process_limit}"
    return limit, rule


def check_workers(option: str, count: int, figures: Machine) -> None:
    """Refuse (exit 2) a number of processes to start at once beyond `max_workers`."""
    limit, rule = max_workers(figures)
    if count > limit:
        raise UsageError(
            f"{option} {count} is more than this machine allows: at most {limit} ({rule})"
        )


def exec_space(figures: Machine) -> int:
    """Bytes the kernel allows for argv + environment strings and their pointers."""
    floor = 32 * figures.page_size
    quarter = _STACK_CAP if figures.stack_limit is None else figures.stack_limit // 4
    return max(min(quarter, _STACK_CAP), floor)


def check_exec_size(argv: Sequence[str], env: Mapping[str, str], figures: Machine) -> None:
    """Refuse (exit 65) a command line and environment that `execve` would reject (E2BIG).

    Names the variable or argument at fault, never its value.
    """
    per_string = 32 * figures.page_size  # MAX_ARG_STRLEN, NUL included
    total = HEADROOM + 8 * (len(argv) + len(env) + 2)  # the two NULL-terminated pointer arrays
    sizes: list[tuple[int, str]] = []
    for index, argument in enumerate(argv):
        size = len(os.fsencode(argument)) + 1
        if size > per_string:
            raise InvalidInput(
                f"argument {index} of the worker's command is {size} bytes; the kernel allows "
                f"{per_string} per argument (MAX_ARG_STRLEN)"
            )
        total += size
    for key, value in env.items():
        size = len(os.fsencode(key)) + len(os.fsencode(value)) + 2
        if size > per_string:
            raise InvalidInput(
                f"environment variable {key} is {size} bytes; the kernel allows {per_string} "
                "per variable (MAX_ARG_STRLEN)"
            )
        total += size
        sizes.append((size, key))
    space = exec_space(figures)
    if total > space:
        largest = ", ".join(f"{key} ({size} bytes)" for size, key in sorted(sizes)[-3:][::-1])
        raise InvalidInput(
            f"a worker's command line and environment would take {total} bytes; the kernel "
            f"allows {space} (a quarter of the stack limit, ulimit -s); largest variables: "
            f"{largest}"
        )
