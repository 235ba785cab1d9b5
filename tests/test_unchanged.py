"""Answers kept while their file is unchanged: the session read-after-write check's fast path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.store.unchanged import UnchangedFiles


def _reader(path: Path, reads: list[str]) -> str:
    reads.append(path.read_text())
    return reads[-1]


def test_an_unchanged_file_is_read_once(tmp_path: Path) -> None:
    """Old enough and unchanged: the answer is kept, the file not read again."""
    path = tmp_path / "prod.set"
    path.write_text("v1")
    files, reads = UnchangedFiles(age=0), []  # age 0: the file just written counts as old
    answers = [files.get(str(path), lambda: _reader(path, reads)) for _ in range(3)]
    assert answers == ["v1"] * 3 and len(reads) == 1
    files.close()


def test_a_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    """The store's writes (a new file renamed over the old one) are always seen, even with
    the same size, and however quickly they follow the read."""
    path = tmp_path / "prod.set"
    path.write_text("v1")
    files, reads = UnchangedFiles(age=0), []
    assert files.get(str(path), lambda: _reader(path, reads)) == "v1"
    for version in ("v2", "v3"):
        new = tmp_path / "new.tmp"
        new.write_text(version)
        os.replace(new, path)
        assert files.get(str(path), lambda: _reader(path, reads)) == version
    assert reads == ["v1", "v2", "v3"]
    files.close()


def test_a_young_file_is_read_every_time(tmp_path: Path) -> None:
    """A file changed within the last AGE_S (just written by `secrets set`) is never kept."""
    path = tmp_path / "prod.set"
    path.write_text("v1")
    files, reads = UnchangedFiles(), []
    for _ in range(3):
        assert files.get(str(path), lambda: _reader(path, reads)) == "v1"
    assert len(reads) == 3


def test_a_missing_file_and_a_failing_read_keep_nothing(tmp_path: Path) -> None:
    """No file: the reader answers each time; a reader that raises leaves nothing kept."""
    path = tmp_path / "prod.set"
    files, calls = UnchangedFiles(age=0), []
    for _ in range(2):
        assert files.get(str(path), lambda: calls.append(1)) is None
    assert len(calls) == 2
    path.write_text("damaged")

    def fail() -> str:
        raise ValueError("damaged")

    for _ in range(2):
        with pytest.raises(ValueError, match="damaged"):
            files.get(str(path), fail)
    assert files.get(str(path), lambda: "read") == "read"
    files.close()
