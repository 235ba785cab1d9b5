"""Metadata on secrets: descriptions and tags, shown, filtered, kept in history, never a value."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.store.keys import MasterKey
from launcher.store.metadata import MetadataEdit
from launcher.store.sets import Store, crypto

from .conftest import CLI, PROBE, Launcher

VALUE = "sk-live-0123456789abcdef"
LEGACY = Path(__file__).parent / "data" / "legacy-fd8353d.set"
LEGACY_KEY = MasterKey(bytes(range(32)), "test")  # the key that sealed the file above


@pytest.fixture
def key() -> MasterKey:
    return MasterKey(crypto.new_key(), "test")


def _set_with_metadata(cli: CLI) -> None:
    result = cli(
        "secrets", "set", "prod", "OPENAI_API_KEY", "--stdin",
        "--description", "voice bot, org acme", "--tag", "team=voice", "--tag", "rotate=90d",
        input=VALUE + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = cli("secrets", "set", "prod", "DB_PASSWORD=hunter2-hunter2", "--tag", "team=data")
    assert result.returncode == 0, result.stderr


def test_set_with_metadata_round_trips_through_list_json(cli: CLI) -> None:
    """--description and --tag given with a value come back from `secrets list SET --json`."""
    _set_with_metadata(cli)
    listed = json.loads(cli("secrets", "list", "prod", "--json").stdout)
    by_key = {entry["key"]: entry for entry in listed}
    assert by_key["OPENAI_API_KEY"]["description"] == "voice bot, org acme"
    assert by_key["OPENAI_API_KEY"]["tags"] == {"team": "voice", "rotate": "90d"}
    assert by_key["DB_PASSWORD"]["tags"] == {"team": "data"}
    assert by_key["DB_PASSWORD"]["description"] == ""
    table = cli("secrets", "list", "prod").stdout
    assert "rotate=90d,team=voice" in table and "voice bot, org acme" in table


def test_describe_changes_metadata_and_leaves_values_alone(cli: CLI, store_dir: Path) -> None:
    """`secrets describe` edits, untags and clears metadata; the values stay byte for byte."""
    _set_with_metadata(cli)
    result = cli(
        "secrets", "describe", "prod", "OPENAI_API_KEY",
        "--description", "rotated by ops", "--tag", "owner=ana", "--untag", "rotate", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["metadata"] == ["OPENAI_API_KEY"] and output["updated"] == []
    assert output["version"] == 3
    listed = {e["key"]: e for e in json.loads(cli("secrets", "list", "prod", "--json").stdout)}
    assert listed["OPENAI_API_KEY"]["description"] == "rotated by ops"
    assert listed["OPENAI_API_KEY"]["tags"] == {"team": "voice", "owner": "ana"}
    assert cli("secrets", "describe", "prod", "OPENAI_API_KEY", "--clear").returncode == 0
    listed = {e["key"]: e for e in json.loads(cli("secrets", "list", "prod", "--json").stdout)}
    assert listed["OPENAI_API_KEY"]["description"] == ""
    assert listed["OPENAI_API_KEY"]["tags"] == {}
    store = Store(store_dir)
    key = MasterKey(base64.b64decode(cli.env["AGENT_RUN_MASTER_KEY"]), "test")
    assert store.read("prod", key).plain() == {
        "OPENAI_API_KEY": VALUE,
        "DB_PASSWORD": "hunter2-hunter2",
    }


def test_history_says_when_metadata_changed(cli: CLI) -> None:
    """A metadata edit is its own version in history, marked `*KEY` (JSON: "metadata")."""
    _set_with_metadata(cli)
    cli("secrets", "describe", "prod", "DB_PASSWORD", "--description", "app user")
    text = cli("secrets", "history", "prod").stdout
    assert "3 (current)" in text and "*DB_PASSWORD" in text
    entries = json.loads(cli("secrets", "history", "prod", "--json").stdout)
    assert entries[0]["metadata"] == ["DB_PASSWORD"]
    assert entries[0]["added"] == entries[0]["updated"] == entries[0]["removed"] == []
    assert entries[1]["metadata"] == [] and entries[1]["added"] == ["DB_PASSWORD"]


def test_list_filters_by_tag(cli: CLI) -> None:
    """`--tag NAME=VALUE` keeps matching secrets, `--tag NAME` any value; all must match."""
    _set_with_metadata(cli)

    def keys(*tags: str) -> list[str]:
        args = [a for t in tags for a in ("--tag", t)]
        return [
            e["key"] for e in json.loads(cli("secrets", "list", "prod", "--json", *args).stdout)
        ]

    assert keys("team=voice") == ["OPENAI_API_KEY"]
    assert keys("team") == ["DB_PASSWORD", "OPENAI_API_KEY"]
    assert keys("team", "rotate=90d") == ["OPENAI_API_KEY"]
    assert keys("team=nobody") == []
    assert (
        "no key has tag team=nobody"
        in cli("secrets", "list", "prod", "--tag", "team=nobody").stdout
    )


def test_no_value_in_any_metadata_output(cli: CLI) -> None:
    """list, history, describe and their JSON never print a value, nor metadata that holds one."""
    _set_with_metadata(cli)
    leak = cli("secrets", "describe", "prod", "DB_PASSWORD", "--description", f"key is {VALUE}")
    assert leak.returncode == 65 and "plaintext" in leak.stderr
    assert VALUE not in leak.stderr
    tagged = cli("secrets", "set", "prod", "NEW=x", "--tag", f"copy={VALUE}")
    assert tagged.returncode == 65
    outputs = [
        cli("secrets", "list", "prod"),
        cli("secrets", "list", "prod", "--json"),
        cli("secrets", "history", "prod"),
        cli("secrets", "history", "prod", "--json"),
        cli("secrets", "describe", "prod", "OPENAI_API_KEY", "--tag", "x=y"),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert VALUE not in result.stdout + result.stderr
        assert "hunter2-hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--description", "x" * 257], "at most 256"),
        (["--description", "two\nlines"], "one line"),
        (["--description", "bell\x07"], "printable"),
        (["--tag", "team"], "NAME=VALUE"),
        (["--tag", "9team=x"], "tag name"),
        (["--tag", "team=two words"], "no spaces"),
        (["--tag", "team=" + "v" * 129], "at most 128"),
        ([a for n in range(17) for a in ("--tag", f"t{n}=v")], "at most 16 tags"),
    ],
)
def test_bad_metadata_is_refused_with_65(cli: CLI, args: list[str], message: str) -> None:
    """Metadata is checked like names: one clear line, exit 65, nothing written."""
    cli("secrets", "set", "prod", "A=1")
    result = cli("secrets", "describe", "prod", "A", *args)
    assert result.returncode == 65
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads(cli("secrets", "list", "--json").stdout)[0]["version"] == 1


def test_edited_metadata_fails_closed(tmp_path: Path, key: MasterKey) -> None:
    """A description changed by hand in the file makes the set refuse to open (it is AD)."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "value-a"}, describe={"A": MetadataEdit("safe")})
    path = store.set_path("s")
    path.write_bytes(path.read_bytes().replace(b'"safe"', b'"evil"'))
    assert store.metadata("s")["A"].description == "evil"  # listing reads it without the key
    with pytest.raises(ConfigError):
        store.read("s", key)


def test_metadata_only_change_keeps_the_values_version(tmp_path: Path, key: MasterKey) -> None:
    """Describing a secret is a new version, but not a new values version (no rollout)."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "value-a"})
    store.update("s", key, dict, describe={"A": MetadataEdit(tags=(("team", "voice"),))})
    assert (store.current_version("s"), store.values_version("s")) == (2, 1)
    store.update("s", key, lambda v: {"A": "value-b"})
    assert (store.current_version("s"), store.values_version("s")) == (3, 3)
    assert store.metadata("s")["A"].tag_dict() == {"team": "voice"}  # kept across a value change


def test_unset_and_rollback_keep_metadata_with_the_keys(tmp_path: Path, key: MasterKey) -> None:
    """A removed key loses its metadata; a rollback restores values and keeps current metadata."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "value-a", "B": "value-b"})
    store.update("s", key, dict, describe={"A": MetadataEdit("a"), "B": MetadataEdit("b")})
    store.update("s", key, lambda v: {"A": "value-a2"})  # B removed
    assert set(store.metadata("s")) == {"A"}
    store.rollback("s", key, 2)
    assert store.read("s", key).plain() == {"A": "value-a", "B": "value-b"}
    assert {k: m.description for k, m in store.metadata("s").items()} == {"A": "a"}


def test_sets_written_before_metadata_still_work(tmp_path: Path) -> None:
    """A set file written by fd8353d reads, lists without metadata, and takes a description."""
    shutil.copy(LEGACY, tmp_path / "legacy.set")
    store = Store(tmp_path)
    expected = {"DB_PASSWORD": "old-format-password", "API_KEY": "sk-old-format-0002"}
    assert store.read("legacy", LEGACY_KEY).plain() == expected
    assert store.metadata("legacy") == {}
    assert store.values_version("legacy") == 2
    assert [e.version for e in store.history("legacy")] == [2, 1]
    store.update("legacy", LEGACY_KEY, dict, describe={"API_KEY": MetadataEdit("old key")})
    assert store.read("legacy", LEGACY_KEY).plain() == expected
    assert store.metadata("legacy")["API_KEY"].description == "old key"
    assert store.rollback("legacy", LEGACY_KEY, 1).version == 4
    assert store.read("legacy", LEGACY_KEY).plain()["API_KEY"] == "sk-old-format-0001"


def test_running_launcher_does_not_roll_out_a_metadata_only_version(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """Describing a secret leaves the workers alone; the next value change rolls as usual."""
    cli("secrets", "set", "prod", "A=value-one")
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", str(PROBE), env={"PROBE_NOTIFY": "1"}
    )
    launcher.wait_event("worker_ready", version=1)
    assert cli("secrets", "describe", "prod", "A", "--tag", "team=voice").returncode == 0
    assert cli("secrets", "set", "prod", "A=value-two").returncode == 0
    launcher.wait_event("rollout_succeeded", to_version=3)
    started = [e for e in launcher.events if e.get("event") == "rollout_started"]
    assert [e["to_version"] for e in started] == [3]
