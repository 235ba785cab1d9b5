"""The machine's limits on a launch (issue #15): how many workers, how large an environment.

The rules are pure functions of a `Machine`; the CLI tests check that a launch beyond them
is refused before anything is spawned, with one line and the documented exit code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from launcher import limits
from launcher.errors import InvalidInput, UsageError

from .conftest import CLI, PROBE, Launcher, alive

PAGE = 4096


def _machine(
    cpus: int = 2, nproc: int | None = None, stack: int | None = 8 << 20
) -> limits.Machine:
    return limits.Machine(cpus=cpus, process_limit=nproc, stack_limit=stack, page_size=PAGE)


@pytest.mark.parametrize(
    ("figures", "expected"),
    [
        (_machine(cpus=1), 32),
        (_machine(cpus=2), 64),
        (_machine(cpus=16), 512),
        (_machine(cpus=16, nproc=100), 50),  # half the process limit is lower
        (_machine(cpus=2, nproc=4096), 64),  # the CPU rule is lower
        (_machine(cpus=2, nproc=1), 1),  # never below one worker
    ],
)
def test_max_workers_rule(figures: limits.Machine, expected: int) -> None:
    """32 workers per usable CPU, and at most half of a process limit when one applies."""
    assert limits.max_workers(figures)[0] == expected


def test_check_workers_names_the_rule() -> None:
    """Beyond the bound is a usage error that names the bound and why."""
    limits.check_workers("--workers", 64, _machine(cpus=2))
    with pytest.raises(UsageError, match=r"at most 64 \(32 per CPU, 2 CPU"):
        limits.check_workers("--workers", 65, _machine(cpus=2))
    with pytest.raises(UsageError, match="ulimit -u 100"):
        limits.check_workers("--idle", 51, _machine(cpus=16, nproc=100))


@pytest.mark.parametrize(
    ("stack", "space"),
    [
        (8 << 20, 2 << 20),  # the usual 8 MiB stack: a quarter
        (64 << 20, 6 << 20),  # capped at 6 MiB (3/4 of _STK_LIM)
        (None, 6 << 20),  # unlimited stack: the cap
        (64 << 10, 32 * PAGE),  # a tiny stack still allows 32 pages
    ],
)
def test_exec_space_follows_the_kernel(stack: int | None, space: int) -> None:
    """argv + environment may take a quarter of the stack limit, within [32 pages, 6 MiB]."""
    assert limits.exec_space(_machine(stack=stack)) == space


def test_one_string_over_max_arg_strlen_is_refused_by_name() -> None:
    """A variable over 128 KiB (with 4 KiB pages) is named, its value never shown."""
    limits.check_exec_size(["/bin/true"], {"OK": "v" * (32 * PAGE - 4)}, _machine())  # 131072
    with pytest.raises(InvalidInput, match="BIG is 131073 bytes") as caught:
        limits.check_exec_size(["/bin/true"], {"BIG": "v" * (32 * PAGE - 4)}, _machine())
    assert "vvvv" not in str(caught.value)
    with pytest.raises(InvalidInput, match="argument 1"):
        limits.check_exec_size(["/bin/echo", "a" * 32 * PAGE], {}, _machine())


def test_the_whole_environment_is_measured() -> None:
    """Many variables together over the space are refused, naming the largest."""
    env = {f"V{i}": "x" * 100_000 for i in range(20)}  # 2.0 MB: fits in 2 MiB
    limits.check_exec_size(["/bin/true"], env, _machine())
    env["V_LAST"] = "y" * 120_000
    with pytest.raises(InvalidInput, match=r"allows 2097152 .*largest variables: V_LAST"):
        limits.check_exec_size(["/bin/true"], env, _machine())


def _refused(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert text in result.stderr, result.stderr
    assert "worker_started" not in result.stderr  # refused before any spawn


def test_workers_beyond_the_machine_are_a_usage_error(cli: CLI) -> None:
    """`--workers` (and `--idle`) beyond the documented bound: exit 2 before any fork."""
    bound = limits.max_workers(limits.machine())[0]
    result = cli("--workers", str(bound + 1), "--restart", "never", "--", "true")
    _refused(result, 2, f"at most {bound}")
    result = cli("--idle", "100000", "--restart", "never", "--", "true")
    _refused(result, 2, "--idle 100000")
    result = cli("--help")
    assert "32 per CPU" in result.stdout


def test_env_file_values_obey_the_value_rules(cli: CLI, tmp_path: Path) -> None:
    """A NUL byte or a value over 16 KiB in an --env-file is bad input (65), not exit 127."""
    nul = tmp_path / "nul.env"
    nul.write_bytes(b"A=x\x00y\n")
    _refused(cli("--env-file", str(nul), "--restart", "never", "--", "true"), 65, "NUL")
    big = tmp_path / "big.env"
    big.write_text("A=" + "x" * 200_000 + "\n")
    _refused(cli("--env-file", str(big), "--restart", "never", "--", "true"), 65, "at most 16384")


def test_an_environment_too_large_for_execve_is_refused(cli: CLI, tmp_path: Path) -> None:
    """Env files that fit the value rules but not the kernel together: 65, not E2BIG at spawn."""
    space = limits.exec_space(limits.machine())
    many = tmp_path / "many.env"
    count = space // 16_000 + 1
    many.write_text("".join(f"V{i}={'x' * 16_000}\n" for i in range(count)))
    result = cli("--env-file", str(many), "--restart", "never", "--", "true")
    _refused(result, 65, f"the kernel allows {space}")


def test_a_secrets_version_too_large_for_execve_is_not_rolled_out(
    cli: CLI, probe_dir: Path, tmp_path: Path
) -> None:
    """A new secrets version that would take the workers' environment past execve's limit
    skips the rollout, naming the limit: no replacement is spawned, the old worker serves."""
    assert cli("secrets", "set", "prod", "SMALL=x").returncode == 0
    env = {**cli.env, "PROBE_DIR": str(probe_dir), "AGENT_RUN_LOG_FORMAT": "json",
           "PROBE_NOTIFY": "1"}  # fmt: skip
    # A real limit the kernel enforces: with `ulimit -s 1024`, execve takes at most 256 KiB
    # of argv and environment, in the launcher and in every worker it spawns.
    # --preload none: each worker is exec'd (a template-forked one would not meet the limit
    # until it runs a program itself; the check holds for both).
    argv = cli.argv("--secrets", "prod", "--preload", "none", "--ready", "notify", str(PROBE))
    launcher = Launcher(["sh", "-c", 'ulimit -s 1024 && exec "$@"', "sh", *argv], env, cli.cwd)
    try:
        pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
        big = tmp_path / "big.env"  # 20 values within the value rules, 300 kB together
        big.write_text("".join(f"BIG_{i}={'x' * 15_000}\n" for i in range(20)))
        assert cli("secrets", "set", "prod", "--secrets-file", str(big)).returncode == 0
        skipped = launcher.wait_event("rollout_skipped", timeout=60)
        assert f"the kernel allows {256 * 1024}" in str(skipped["reason"])
        assert "xxxx" not in launcher.output()
        reload = cli("reload", "--name", "prod")
        assert reload.returncode == 1 and "the kernel allows" in reload.stderr
        assert alive(pid)
        started = [e for e in launcher.events if e.get("event") == "worker_started"]
        assert [e["pid"] for e in started] == [pid]
        assert not any(e.get("event") == "rollout_started" for e in launcher.events)
    finally:
        launcher.stop()
