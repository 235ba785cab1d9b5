"""A damaged or foreign store never yields a traceback or a hang: one line, exit 78 (SPEC §7).

Every case here made the CLI of fd8353d print a traceback (or block forever): a header
field of the wrong type, a directory, a symlink loop or a FIFO where a set file belongs, a
set name longer than the filesystem allows, a directory given as a key file (issue #15).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CLI

READ_COMMANDS: list[list[str]] = [
    ["secrets", "list"],
    ["secrets", "list", "s"],
    ["secrets", "history", "s"],
    ["secrets", "rollback", "s"],
    ["secrets", "set", "s", "K=3"],
    ["secrets", "unset", "s", "K"],
    ["--secrets", "s", "--restart", "never", "--", "true"],
]


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("agent-run: error:")]
    assert len(errors) == 1, result.stderr


def _snapshot(store: Path) -> dict[str, str]:
    """Every set file's digest: what "no partial state" compares."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else p.name
        for p in sorted(store.iterdir())
        if not p.name.startswith(".")
    }


def _with_field(line: int, change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        data = json.loads(lines[line])
        change(data)
        lines[line] = json.dumps(data).encode()
        path.write_bytes(b"\n".join(lines))

    return damage


def _line(line: int, value: object) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        lines[line] = json.dumps(value).encode()
        path.write_bytes(b"\n".join(lines))

    return damage


DAMAGES: dict[str, Callable[[Path], None]] = {
    "version is a string": _with_field(0, lambda h: h.update(version="x")),
    "version is null": _with_field(0, lambda h: h.update(version=None)),
    "version is missing": _with_field(0, lambda h: h.pop("version")),
    "version is true": _with_field(0, lambda h: h.update(version=True)),
    "count is a list": _with_field(0, lambda h: h.update(count=[])),
    "status is missing": _with_field(0, lambda h: h.pop("status")),
    "change is a number": _with_field(1, lambda m: m.update(change=5)),
    "keys hold numbers": _with_field(1, lambda m: m.update(keys={"K": 5})),
    "history entry version is a string": _with_field(
        2, lambda h: h[0].update(version="x") if isinstance(h, list) else None
    ),
    "history entry without sealed": _with_field(
        2, lambda h: h[0].pop("sealed") if isinstance(h, list) else None
    ),
    "history is an object": _line(2, {"x": 1}),
    "metadata is a list": _line(1, []),
    "deeply nested header": lambda p: p.write_bytes(b"[" * 100_000 + b"\n" + p.read_bytes()),
}


@pytest.fixture
def two_versions(cli: CLI, store_dir: Path) -> Path:
    """A set `s` with two versions (so rollback has something to restore)."""
    assert cli("secrets", "set", "s", "K=1").returncode == 0
    assert cli("secrets", "set", "s", "K=2").returncode == 0
    return store_dir / "s.set"


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_field_is_one_line_and_78(
    cli: CLI, store_dir: Path, two_versions: Path, damage: str
) -> None:
    """A header, metadata or history field of the wrong type: 78 from history and rollback."""
    DAMAGES[damage](two_versions)
    before = _snapshot(store_dir)
    for command in (["secrets", "history", "s"], ["secrets", "rollback", "s"]):
        _one_line_error(cli(*command), 78)
    listing = cli("secrets", "list")  # (checks only the header: the rest needs the key)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    assert _snapshot(store_dir) == before  # nothing written, nothing half-applied


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: p.symlink_to(p.name), id="symlink-loop"),
        pytest.param(lambda p: os.mkfifo(p), id="fifo"),
        pytest.param(lambda p: p.symlink_to("/dev/zero"), id="device"),
    ],
)
def test_something_else_named_like_a_set(
    cli: CLI, store_dir: Path, two_versions: Path, make: Callable[[Path], None]
) -> None:
    """A directory, symlink loop, FIFO or device named `x.set`: every reader answers at once.

    The listing shows it as damaged and still lists the good set; reading it is one line and
    78; commands on other sets and launches are not disturbed.
    """
    make(store_dir / "x.set")
    listing = cli("secrets", "list", timeout=30)  # the FIFO used to block here forever
    assert listing.returncode == 0, listing.stderr
    assert "damaged" in listing.stdout and "s " in listing.stdout
    for command in (
        ["secrets", "list", "x"],
        ["secrets", "history", "x"],
        ["secrets", "set", "x", "A=1"],
    ):
        result = cli(*command, timeout=30)
        _one_line_error(result, 78)
        assert "not a set file" in result.stderr or "cannot read" in result.stderr
    for command in READ_COMMANDS[1:4] + READ_COMMANDS[-1:]:
        assert cli(*command, timeout=30).returncode == 0, command


def test_a_fifo_as_key_file_is_refused_at_once(cli: CLI, tmp_path: Path) -> None:
    """`--key-file FIFO` does not wait for a writer: one line, 77 (the key-file rule, #12)."""
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo, 0o600)
    env = {"AGENT_RUN_MASTER_KEY": ""}
    result = cli("secrets", "set", "s", "K=1", "--key-file", str(fifo), env=env, timeout=30)
    _one_line_error(result, 77)
    assert "not a regular file" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["secrets", "list", "NAME"],
        ["secrets", "history", "NAME"],
        ["secrets", "rollback", "NAME"],
        ["secrets", "delete", "NAME", "--yes"],
        ["secrets", "unset", "NAME", "K"],
        ["--secrets", "NAME", "--restart", "never", "--", "true"],
    ],
)
def test_every_command_checks_the_set_name(cli: CLI, command: list[str]) -> None:
    """A 300-character set name is an invalid name (65) on reads too, not `File name too long`."""
    long_name = "x" * 300
    result = cli(*[long_name if part == "NAME" else part for part in command])
    _one_line_error(result, 65)
    assert "set name" in result.stderr


@pytest.mark.parametrize("kind", ["directory", "name too long", "symlink loop"])
def test_key_rotate_into_an_impossible_key_file_is_refused(
    cli: CLI, two_versions: Path, tmp_path: Path, kind: str
) -> None:
    """`key rotate --new-key-file` a directory, a 300-character name or a symlink loop: bad
    input (65), one line, and nothing rotated."""
    target = tmp_path / "keys"
    if kind == "directory":
        target.mkdir(mode=0o700)
    elif kind == "name too long":
        target = tmp_path / ("l" * 300)
    else:
        target.symlink_to(target)
    before = two_versions.read_bytes()
    result = cli("key", "rotate", "--new-key-file", str(target))
    _one_line_error(result, 65)
    assert "--new-key-file" in result.stderr
    assert two_versions.read_bytes() == before


def test_a_directory_as_key_file_is_one_line(cli: CLI, tmp_path: Path) -> None:
    """`--key-file DIR` (mode 0700) is refused as not a key file: 77, no IsADirectoryError."""
    target = tmp_path / "keydir"
    target.mkdir(mode=0o700)
    result = cli(
        "secrets", "list", "s", "--key-file", str(target), env={"AGENT_RUN_MASTER_KEY": ""}
    )
    assert "Traceback" not in result.stderr
    result = cli(
        "secrets", "rollback", "s", "--key-file", str(target), env={"AGENT_RUN_MASTER_KEY": ""}
    )
    _one_line_error(result, 77)
    assert "not a regular file" in result.stderr
