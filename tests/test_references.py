"""References by name: `${secret:NAME}` in env files and the toml [env] table (SPEC §3.1)."""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import InvalidInput
from launcher.references import render, resolve, resolve_all

from .conftest import CLI, PROBE, Launcher, read_reports

SECRETS = {"DB_PASSWORD": "pa$$:w/rd", "TOKEN": "tok-123"}
NOTIFY = {"PROBE_NOTIFY": "1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://app:${secret:DB_PASSWORD}@db/app", "postgres://app:pa$$:w/rd@db/app"),
        ("${secret:TOKEN}${secret:TOKEN}", "tok-123tok-123"),
        ("no reference ${HOME} $TOKEN", "no reference ${HOME} $TOKEN"),
        ("literal $${secret:TOKEN}", "literal ${secret:TOKEN}"),
        ("${secret:TOKEN} and $${secret:NOPE}", "tok-123 and ${secret:NOPE}"),
    ],
)
def test_references_resolve(text: str, expected: str) -> None:
    """Each reference becomes the secret's value, verbatim; `$${secret:...}` is literal text."""
    assert resolve(text, SECRETS, variable="V", origin="o", set_name="prod") == expected


@pytest.mark.parametrize(
    ("text", "set_name", "message"),
    [
        ("x${secret:NOPE}", "prod", "V references secret NOPE, which set 'prod' does not have"),
        ("${secret:TOKEN}", None, "no secret set is bound"),
        ("${secret:bad-name}", "prod", "malformed reference"),
        ("${secret:TOKEN", "prod", "malformed reference"),
        ("${secret:}", "prod", "malformed reference"),
    ],
)
def test_bad_references_are_errors_never_empty(
    text: str, set_name: str | None, message: str
) -> None:
    """An unknown or malformed reference is InvalidInput (65), naming the variable."""
    with pytest.raises(InvalidInput, match=message) as raised:
        resolve(text, SECRETS, variable="V", origin="--env-file f", set_name=set_name)
    assert raised.value.exit_code == 65
    assert "tok-123" not in raised.value.message


def test_only_composed_values_are_returned_for_masking() -> None:
    """resolve_all reports the values that hold a secret, not plain or escaped ones."""
    values = {"URL": "u:${secret:TOKEN}", "PLAIN": "p", "LIT": "$${secret:TOKEN}"}
    resolved, composed = resolve_all(values, SECRETS, origin="o", set_name="s")
    assert resolved == {"URL": "u:tok-123", "PLAIN": "p", "LIT": "${secret:TOKEN}"}
    assert composed == ["u:tok-123"]


def test_template_errors_name_the_line() -> None:
    """A template's unknown reference names the template and its line."""
    assert render("t", '{"k": "${secret:TOKEN}"}\n', SECRETS, set_name="s") == '{"k": "tok-123"}\n'
    with pytest.raises(InvalidInput, match="t: line 2 references secret NOPE"):
        render("t", "a\n${secret:NOPE}\n", SECRETS, set_name="s")


def _wait_report(directory: Path, pid: int, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = read_reports(directory).get(pid)
        if report is not None:
            return report
        time.sleep(0.02)
    raise AssertionError(f"probe {pid} did not report")


def _env(report: dict[str, object]) -> dict[str, str]:
    env = report["env"]
    assert isinstance(env, dict)
    return env


def test_env_file_and_toml_references_reach_the_worker(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Both sources resolve against the bound set; the files on disk keep the reference."""
    cli("secrets", "set", "prod", "DB_PASSWORD=correct-horse", "TOKEN=tok-9")
    env_file = cli.cwd / "dev.env"
    env_file.write_text("DATABASE_URL=postgres://app:${secret:DB_PASSWORD}@db:5432/app\n")
    (cli.cwd / "agent-run.toml").write_text(
        '[env]\nWEBHOOK = "https://hooks.example/${secret:TOKEN}"\nPORT = 8080\n'
    )
    launcher = launch("--secrets", "prod", "--env-file", str(env_file), "--ready", "notify",
                      str(PROBE), env=NOTIFY)  # fmt: skip
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    env = _env(_wait_report(probe_dir, pid))
    assert env["DATABASE_URL"] == "postgres://app:correct-horse@db:5432/app"
    assert env["WEBHOOK"] == "https://hooks.example/tok-9"
    assert env["PORT"] == "8080"
    assert "${secret:DB_PASSWORD}" in env_file.read_text()
    assert "tok-9" not in (cli.cwd / "agent-run.toml").read_text()


def test_composed_values_are_masked_with_their_encodings(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A value built from a secret is masked whole, and so are its base64 / URL forms."""
    cli("secrets", "set", "prod", "DB_PASSWORD=correct-horse", "PROBE_PRINT=1")
    env_file = cli.cwd / "dev.env"
    env_file.write_text("PROBE_SECRET_URL=postgres://app:${secret:DB_PASSWORD}@db/app\n")
    launcher = launch("--secrets", "prod", "--env-file", str(env_file), "--ready", "notify",
                      str(PROBE), env=NOTIFY)  # fmt: skip
    launcher.wait_event("worker_ready")
    deadline = time.monotonic() + 20
    while sum("PROBE_SECRET_URL" in line for line in launcher.stdout_lines) < 3:
        assert time.monotonic() < deadline, launcher.output()
        time.sleep(0.05)
    launcher.stop()
    output = launcher.output()
    composed = "postgres://app:correct-horse@db/app"
    for form in (
        composed,
        base64.b64encode(composed.encode()).decode(),
        urllib.parse.quote(composed, safe=""),
    ):
        assert form not in output
    assert "stdout PROBE_SECRET_URL=***\n" in launcher.stdout_lines


def test_rotating_a_referenced_secret_rolls_the_pool(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A new password reaches every worker through a normal rollout, composed anew."""
    cli("secrets", "set", "prod", "DB_PASSWORD=first-password")
    env_file = cli.cwd / "dev.env"
    env_file.write_text("DATABASE_URL=postgres://app:${secret:DB_PASSWORD}@db/app\n")
    launcher = launch("--secrets", "prod", "--env-file", str(env_file), "--workers", "2",
                      "--ready", "notify", str(PROBE), env=NOTIFY)  # fmt: skip
    launcher.wait_event("worker_ready", version=1)
    launcher.wait_event("worker_ready", version=1)
    cli("secrets", "set", "prod", "DB_PASSWORD=second-password")
    launcher.wait_event("rollout_succeeded", to_version=2)
    reports = read_reports(probe_dir)
    urls = {
        _env(r)["DATABASE_URL"]
        for r in reports.values()
        if _env(r)["AGENT_RUN_SECRETS_VERSION"] == "2"
    }
    assert urls == {"postgres://app:second-password@db/app"}
    assert sum(_env(r)["AGENT_RUN_SECRETS_VERSION"] == "2" for r in reports.values()) == 2


def test_unknown_reference_at_reload_refuses_the_rollout(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Removing a referenced secret is refused at reload, naming it; the worker keeps serving."""
    cli("secrets", "set", "prod", "DB_PASSWORD=first-password", "OTHER=x")
    env_file = cli.cwd / "dev.env"
    env_file.write_text("DATABASE_URL=postgres://app:${secret:DB_PASSWORD}@db/app\n")
    launcher = launch("--secrets", "prod", "--env-file", str(env_file), "--ready", "notify",
                      str(PROBE), env=NOTIFY)  # fmt: skip
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    assert cli("secrets", "unset", "prod", "DB_PASSWORD").returncode == 0
    skipped = launcher.wait_event("rollout_skipped")
    assert "DATABASE_URL references secret DB_PASSWORD" in str(skipped["reason"])
    reload = cli("reload", "--name", "prod")
    assert reload.returncode == 1 and "DB_PASSWORD" in reload.stderr
    os.kill(pid, 0)  # still running
    assert _wait_report(probe_dir, pid)["terms"] == []
    assert not any(e.get("event") == "rollout_started" for e in launcher.events)


def test_unknown_reference_at_launch_exits_65(cli: CLI, probe_dir: Path) -> None:
    """A launch with a reference to a missing secret starts nothing and names both."""
    cli("secrets", "set", "prod", "A=1")
    (cli.cwd / "dev.env").write_text("DATABASE_URL=postgres://${secret:DB_PASSWORD}@db\n")
    result = cli("--secrets", "prod", "--env-file", "dev.env", str(PROBE),
                 env={"PROBE_DIR": str(probe_dir)})  # fmt: skip
    assert result.returncode == 65
    assert "DATABASE_URL references secret DB_PASSWORD" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert read_reports(probe_dir) == {}
