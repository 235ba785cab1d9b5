"""The secrets CLI, run as a real subprocess against a temporary store (SPEC §2.4, §7)."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import shlex
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from launcher.store.keys import MasterKey
from launcher.store.sets import Store

from .conftest import CLI


def _values(store_dir: Path, master_key: str, name: str = "s") -> dict[str, str]:
    key = MasterKey(base64.b64decode(master_key), "test")
    return Store(store_dir).read(name, key).plain()


# SPEC §2.4's grammar table (Pipecat's "Special characters"), exactly as typed in bash, plus
# the two-word forms. The shell removes its own quotes before agent-run sees the tokens.
GRAMMAR_TABLE = [
    ("KEY1=simple", "simple"),
    ('KEY1="value with spaces"', "value with spaces"),
    ('"KEY1=value with spaces"', "value with spaces"),
    ('KEY1="value=with=equals"', "value=with=equals"),
    ("KEY1==value=with=equals", "value=with=equals"),
    (r'KEY1="value with \"quotes\""', 'value with "quotes"'),
    ("""'KEY1=value with "quotes"'""", 'value with "quotes"'),
    (r"'KEY1=value with \backslashes'", r"value with \backslashes"),
    (r'"KEY1=value with \\backslashes"', r"value with \backslashes"),
    ("KEY1 secret-value", "secret-value"),  # Pipecat's SECRET_NAME secret-value form
    ("KEY1 =starts-with-equals", "=starts-with-equals"),
    ("KEY1 'two words'", "two words"),
    ("KEY1 --looks-like-a-flag", "--looks-like-a-flag"),
    ('--secrets "KEY1=value with spaces"', "value with spaces"),  # LiveKit's flag form
    ("--secrets=KEY1==x", "x"),
]


@pytest.mark.parametrize(("typed", "stored"), GRAMMAR_TABLE)
def test_grammar_table(cli: CLI, store_dir: Path, master_key: str, typed: str, stored: str) -> None:
    """Every row of the spec's grammar table, typed in bash, stores exactly the documented value."""
    command = " ".join(shlex.quote(part) for part in cli.argv("secrets", "set", "s")) + " " + typed
    result = subprocess.run(
        ["bash", "-c", command],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert _values(store_dir, master_key) == {"KEY1": stored}


def test_all_input_forms_in_one_call(
    cli: CLI, store_dir: Path, master_key: str, tmp_path: Path
) -> None:
    """Pairs, --secrets, --secrets-file, --stdin and --from-env combine in one version."""
    env_file = tmp_path / "x.env"
    env_file.write_text('FROM_FILE="file value"\n')
    pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    result = cli(
        "secrets", "set", "s", "A=1", "B", "two", "--secrets", "C=3", "--secrets-file", str(env_file),
        "--stdin", "PEM", "--from-env", "FROM_ENV", "--json",
        input=pem, env={"FROM_ENV": "env value"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    assert _values(store_dir, master_key) == {
        "A": "1", "B": "two", "C": "3", "FROM_FILE": "file value", "PEM": pem, "FROM_ENV": "env value"
    }  # fmt: skip


def test_stdin_single_line_loses_only_the_final_newline(
    cli: CLI, store_dir: Path, master_key: str
) -> None:
    """`echo sk-1 | ... --stdin K` stores `sk-1`; blanks inside are kept."""
    assert cli("secrets", "set", "s", "--stdin", "K", input="  sk-1 \n").returncode == 0
    assert _values(store_dir, master_key) == {"K": "  sk-1 "}


def test_human_output_counts_changes_and_never_shows_values(cli: CLI) -> None:
    """Output is 'SET vN: ...' with counts; values appear nowhere in stdout or stderr."""
    first = cli("secrets", "set", "s", "A=sekrit-aaa", "B=sekrit-bbb")
    second = cli("secrets", "set", "s", "A=sekrit-ccc", "C=sekrit-ddd")
    same = cli("secrets", "set", "s", "A=sekrit-ccc")
    assert first.stdout.strip() == "s v1: 2 added"
    assert second.stdout.strip() == "s v2: 1 added, 1 updated"
    assert same.stdout.strip() == "s v2: unchanged"
    listing = cli("secrets", "list", "s")
    for result in (
        first,
        second,
        same,
        listing,
        cli("secrets", "list"),
        cli("secrets", "history", "s"),
    ):
        assert "sekrit" not in result.stdout + result.stderr


def test_overwrite_replaces_the_whole_set(cli: CLI, store_dir: Path, master_key: str) -> None:
    """--overwrite removes keys not given; without it they stay."""
    cli("secrets", "set", "s", "A=1", "B=2")
    cli("secrets", "set", "s", "C=3")
    assert _values(store_dir, master_key) == {"A": "1", "B": "2", "C": "3"}
    result = cli("secrets", "set", "s", "D=4", "--overwrite")
    assert result.stdout.strip() == "s v3: 1 added, 3 removed"
    assert _values(store_dir, master_key) == {"D": "4"}


@pytest.mark.parametrize(
    ("tokens", "code", "message"),
    [
        (["MY-KEY=1"], 65, "did you mean MY_KEY?"),
        (["LIVEKIT_API_KEY=x"], 65, "provided by the platform"),
        (["AGENT_RUN_X=x"], 65, "reserved"),
        (["EMPTY="], 65, "empty value"),
        (["A"], 2, "has no value"),
        ([], 2, "nothing to set"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    cli: CLI, store_dir: Path, tokens: list[str], code: int, message: str
) -> None:
    """Bad input: one clear line, the §7 exit code, and no set, key or file created."""
    result = cli("secrets", "set", "s", "GOOD=1", *tokens) if tokens else cli("secrets", "set", "s")
    assert result.returncode == code
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (store_dir / "s.set").exists()


def test_bad_set_name_is_refused(cli: CLI) -> None:
    """A set name that could escape the store is refused with exit 65."""
    result = cli("secrets", "set", "../evil", "A=1")
    assert result.returncode == 65 and "set name" in result.stderr


def test_imported_file_skips_reserved_names_with_a_warning(
    cli: CLI, store_dir: Path, master_key: str, tmp_path: Path
) -> None:
    """LIVEKIT_* and AGENT_RUN_* lines of a file are skipped and named, as LiveKit's CLI does."""
    env_file = tmp_path / "x.env"
    env_file.write_text("A=1\nLIVEKIT_URL=wss://x\nAGENT_RUN_WORKERS=3\n")
    result = cli("secrets", "set", "s", "--secrets-file", str(env_file))
    assert result.returncode == 0
    assert "skipped LIVEKIT_URL" in result.stderr and "skipped AGENT_RUN_WORKERS" in result.stderr
    assert _values(store_dir, master_key) == {"A": "1"}


def test_ignore_empty_skips_and_names(
    cli: CLI, store_dir: Path, master_key: str, tmp_path: Path
) -> None:
    """Empty entries fail the import unless --ignore-empty, which names what it skipped."""
    env_file = tmp_path / "x.env"
    env_file.write_text("A=1\nB=\n")
    failed = cli("secrets", "set", "s", "--secrets-file", str(env_file))
    assert failed.returncode == 65 and "B" in failed.stderr
    ok = cli("secrets", "set", "s", "--secrets-file", str(env_file), "--ignore-empty")
    assert ok.returncode == 0 and "B" in ok.stderr
    assert _values(store_dir, master_key) == {"A": "1"}


def test_discovery_imports_the_only_dotenv_file(cli: CLI, store_dir: Path, master_key: str) -> None:
    """Without a terminal and with one .env file present, `secrets set S` imports it."""
    (cli.cwd / ".env").write_text("A=from-dotenv\n")
    result = cli("secrets", "set", "s")
    assert result.returncode == 0, result.stderr
    assert _values(store_dir, master_key) == {"A": "from-dotenv"}


def test_discovery_with_several_files_asks_for_one(cli: CLI, store_dir: Path) -> None:
    """With .env and .env.local present and no terminal, the error names both."""
    (cli.cwd / ".env").write_text("A=1\n")
    (cli.cwd / ".env.local").write_text("A=2\n")
    result = cli("secrets", "set", "s")
    assert result.returncode == 2
    assert ".env, .env.local" in result.stderr and "--secrets-file" in result.stderr
    assert not (store_dir / "s.set").exists()


def test_unset_history_rollback(cli: CLI, store_dir: Path, master_key: str) -> None:
    """unset removes keys; history lists changes by name; rollback restores as a new version."""
    cli("secrets", "set", "s", "A=1", "B=2")
    cli("secrets", "set", "s", "A=changed")
    cli("secrets", "unset", "s", "B")
    history = json.loads(cli("secrets", "history", "s", "--json").stdout)
    assert [(h["version"], h["added"], h["updated"], h["removed"]) for h in history] == [
        (3, [], [], ["B"]),
        (2, [], ["A"], []),
        (1, ["A", "B"], [], []),
    ]
    back = cli("secrets", "rollback", "s", "1", "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["version"] == 4
    assert _values(store_dir, master_key) == {"A": "1", "B": "2"}
    missing = cli("secrets", "rollback", "s", "99")
    assert missing.returncode == 1 and "no version 99" in missing.stderr


def test_history_keeps_ten_versions(cli: CLI) -> None:
    """After 12 versions, history shows the last 10."""
    for i in range(12):
        cli("secrets", "set", "s", f"A={i}")
    versions = [h["version"] for h in json.loads(cli("secrets", "history", "s", "--json").stdout)]
    assert versions == list(range(12, 2, -1))


def test_list_needs_no_key(cli: CLI) -> None:
    """Listing sets and keys works without any master key."""
    cli("secrets", "set", "s", "A=1", "B=2")
    result = cli("secrets", "list", "--json", env={"AGENT_RUN_MASTER_KEY": ""})
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert (entry["name"], entry["keys"], entry["version"], entry["status"]) == ("s", 2, 1, "ready")
    keys = json.loads(
        cli("secrets", "list", "s", "--json", env={"AGENT_RUN_MASTER_KEY": ""}).stdout
    )
    assert [k["key"] for k in keys] == ["A", "B"]


def test_delete_needs_yes_without_a_terminal(cli: CLI, store_dir: Path) -> None:
    """delete refuses without --yes off a terminal, and removes the set with it."""
    cli("secrets", "set", "s", "A=1")
    refused = cli("secrets", "delete", "s")
    assert refused.returncode == 2 and (store_dir / "s.set").exists()
    assert cli("secrets", "delete", "s", "--yes").returncode == 0
    assert not (store_dir / "s.set").exists()
    gone = cli("secrets", "delete", "s", "--yes")
    assert gone.returncode == 78 and "not found" in gone.stderr


def test_no_plaintext_value_on_disk(cli: CLI, store_dir: Path, tmp_path: Path) -> None:
    """No value, nor its base64 or URL-encoded form, is in any file under the store."""
    value = "sk-live-0123456789abcdef-PLAINTEXT"
    cli("secrets", "set", "s", f"A={value}")
    cli("secrets", "set", "s", "A=other-value-xyz")  # the old value now lives in history
    cli("platform", "set", "livekit", "LIVEKIT_API_SECRET=" + value)
    forms = [value, base64.b64encode(value.encode()).decode(), urllib.parse.quote(value)]
    for path in store_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for form in forms:
                assert form.encode() not in data, f"{form} found in {path}"


def test_first_set_creates_a_private_master_key(cli: CLI, store_dir: Path) -> None:
    """With no key anywhere, the first set creates <store>/master.key (0600) and says so."""
    result = cli("secrets", "set", "s", "A=1", env={"AGENT_RUN_MASTER_KEY": ""})
    assert result.returncode == 0, result.stderr
    key_file = store_dir / "master.key"
    assert "created master key" in result.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert store_dir.stat().st_mode & 0o777 == 0o700
    assert (store_dir / "s.set").stat().st_mode & 0o777 == 0o600
    again = cli("secrets", "set", "s", "B=2", env={"AGENT_RUN_MASTER_KEY": ""})
    assert again.returncode == 0 and "created" not in again.stderr


def test_loose_key_file_is_refused(cli: CLI, store_dir: Path, tmp_path: Path) -> None:
    """A group/other-readable key file is refused with exit 77 and the chmod to run."""
    key_file = tmp_path / "k"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    key_file.chmod(0o644)
    result = cli(
        "secrets", "set", "s", "A=1", "--key-file", str(key_file), env={"AGENT_RUN_MASTER_KEY": ""}
    )
    assert result.returncode == 77
    assert f"chmod 600 {key_file}" in result.stderr


def test_wrong_key_is_a_configuration_error(cli: CLI) -> None:
    """Reading with another master key fails with exit 78 and names the key source."""
    cli("secrets", "set", "s", "A=1")
    other = base64.b64encode(os.urandom(32)).decode()
    result = cli("secrets", "set", "s", "B=2", env={"AGENT_RUN_MASTER_KEY": other})
    assert result.returncode == 78
    assert "AGENT_RUN_MASTER_KEY" in result.stderr


def test_key_rotate_keeps_values(tmp_path: Path, cli: CLI) -> None:
    """key rotate re-seals every set under a new key file; values and versions are unchanged."""
    key_file = tmp_path / "master.key"
    env = {"AGENT_RUN_MASTER_KEY": "", "AGENT_RUN_KEY_FILE": str(key_file)}
    assert cli("key", "init", env=env).returncode == 0
    old_key = key_file.read_text()
    cli("secrets", "set", "a", "X=1", env=env)
    cli("secrets", "set", "b", "Y=2", env=env)
    cli("platform", "set", "livekit", "LIVEKIT_URL=wss://x", env=env)
    result = cli("key", "rotate", env=env)
    assert result.returncode == 0, result.stderr
    assert "3 set(s) re-sealed" in result.stdout
    assert key_file.read_text() != old_key
    stale = cli("secrets", "set", "a", "Z=3", env={"AGENT_RUN_MASTER_KEY": old_key.strip()})
    assert stale.returncode == 78
    key = MasterKey(base64.b64decode(key_file.read_text()), "t")
    store = Store(Path(cli.env["AGENT_RUN_HOME"]))
    assert store.read("a", key).plain() == {"X": "1"} and store.read("a", key).version == 1
    assert store.read_platform(key) == {"LIVEKIT_URL": "wss://x"}


def test_platform_set_and_show(cli: CLI) -> None:
    """platform set takes only LIVEKIT_* names; show says where each comes from, not values."""
    result = cli(
        "platform", "set", "livekit", "LIVEKIT_URL=wss://lk", "--stdin", "LIVEKIT_API_SECRET",
        input="very-secret\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    show = cli("platform", "show", "--json", env={"LIVEKIT_API_KEY": "from-env"})
    assert json.loads(show.stdout) == {
        "LIVEKIT_URL": "store",
        "LIVEKIT_API_KEY": "environment",
        "LIVEKIT_API_SECRET": "store",
    }
    assert "very-secret" not in show.stdout and "wss://lk" not in show.stdout
    bad = cli("platform", "set", "livekit", "OPENAI_API_KEY=x")
    assert bad.returncode == 65


def test_unknown_set_lists_known_ones(cli: CLI) -> None:
    """Asking for a missing set exits 78 and lists the sets that exist."""
    cli("secrets", "set", "dev", "A=1")
    result = cli("secrets", "history", "prod")
    assert result.returncode == 78
    assert "known sets: dev" in result.stderr


def test_systemd_credential_is_a_key_source(cli: CLI, store_dir: Path, tmp_path: Path) -> None:
    """With LoadCredential=, the key is read from $CREDENTIALS_DIRECTORY/agent-run.key."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    key = base64.b64encode(os.urandom(32)).decode()
    (credentials / "agent-run.key").write_text(key + "\n")
    (credentials / "agent-run.key").chmod(0o400)
    env = {"AGENT_RUN_MASTER_KEY": "", "CREDENTIALS_DIRECTORY": str(credentials)}
    assert cli("secrets", "set", "s", "A=1", env=env).returncode == 0
    assert not (store_dir / "master.key").exists()  # the credential was used, none created
    assert _values(store_dir, key) == {"A": "1"}


def test_tampered_set_file_is_refused_by_the_cli(cli: CLI, store_dir: Path) -> None:
    """A flipped byte anywhere in a set file: exit 78, one clear line, the file left as found."""
    cli("secrets", "set", "s", "A=sekrit-one", "B=sekrit-two")
    cli("secrets", "set", "s", "A=sekrit-three")
    path = store_dir / "s.set"
    original = path.read_bytes()
    positions = sorted({*range(0, len(original), max(1, len(original) // 24)), len(original) - 1})
    for index in positions:
        damaged = bytearray(original)
        damaged[index] ^= 0x20
        path.write_bytes(bytes(damaged))
        result = cli("secrets", "set", "s", "C=new")
        assert result.returncode == 78, (index, result.stderr)
        assert result.stderr.startswith("agent-run: error: ") and "'s'" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
        assert "sekrit" not in result.stdout + result.stderr
        assert path.read_bytes() == bytes(damaged)  # nothing written over the evidence
    path.write_bytes(original)
    assert cli("secrets", "set", "s", "C=new").returncode == 0


def test_list_shows_a_damaged_set_without_failing(cli: CLI, store_dir: Path) -> None:
    """Listing names a damaged set as `damaged` and still lists the others."""
    cli("secrets", "set", "good", "A=1")
    cli("secrets", "set", "bad", "A=1")
    (store_dir / "bad.set").write_bytes(b"garbage\n")
    result = cli("secrets", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert {(e["name"], e["status"]) for e in json.loads(result.stdout)} == {
        ("good", "ready"),
        ("bad", "damaged"),
    }


def _run_on_terminal(cli: CLI, args: list[str], answers: dict[str, str]) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, answering each prompt once it appears."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        cli.argv(*args), stdin=terminal, stdout=terminal, stderr=terminal,
        env=cli.env, cwd=cli.cwd, close_fds=True,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    pending = dict(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                for prompt in list(pending):
                    if prompt.encode() in output:
                        os.write(controller, pending.pop(prompt).encode() + b"\n")
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=60), output.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()


def test_discovery_on_a_terminal_offers_the_file(
    cli: CLI, store_dir: Path, master_key: str
) -> None:
    """On a terminal, `secrets set S` with one .env asks before importing it."""
    (cli.cwd / ".env").write_text("A=from-dotenv\n")
    code, output = _run_on_terminal(
        cli, ["secrets", "set", "s"], {"Import secrets from .env?": "y"}
    )
    assert code == 0, output
    assert _values(store_dir, master_key) == {"A": "from-dotenv"}


def test_discovery_on_a_terminal_lets_you_pick_one(
    cli: CLI, store_dir: Path, master_key: str
) -> None:
    """With several dotenv files on a terminal, the chosen one is imported."""
    (cli.cwd / ".env").write_text("A=base\n")
    (cli.cwd / ".env.production").write_text("A=prod\n")
    code, output = _run_on_terminal(cli, ["secrets", "set", "s"], {"Import which one?": "2"})
    assert code == 0, output
    assert "1) .env" in output and "2) .env.production" in output
    assert _values(store_dir, master_key) == {"A": "prod"}


def test_eight_concurrent_cli_writers_lose_nothing(
    cli: CLI, store_dir: Path, master_key: str
) -> None:
    """Eight `secrets set` processes at once, three rounds: every key, every version counted."""
    for round_ in range(3):
        procs = [
            subprocess.Popen(
                cli.argv("secrets", "set", "s", f"K{n}=v{round_}"),
                env=cli.env,
                cwd=cli.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(8)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    key = MasterKey(base64.b64decode(master_key), "test")
    final = Store(store_dir).read("s", key)
    assert final.plain() == {f"K{n}": "v2" for n in range(8)}
    assert final.version == 24


def test_no_input_form_leaves_a_value_on_disk(cli: CLI, store_dir: Path, tmp_path: Path) -> None:
    """Values given by pair, --stdin, --from-env and --secrets-file appear in no store file."""
    values = {
        "PAIR": "pair-value-5f1c2e9a",
        "STDIN": "-----BEGIN KEY-----\nstdin-value-77aa31\n-----END KEY-----\n",
        "ENV": "env-value-c0ffee42",
        "FILE": "file-value-deadbeef",
    }
    env_file = tmp_path / "x.env"
    env_file.write_text(f'FILE="{values["FILE"]}"\n')
    result = cli(
        "secrets", "set", "s", f"PAIR={values['PAIR']}", "--stdin", "STDIN", "--from-env", "ENV",
        "--secrets-file", str(env_file), input=values["STDIN"], env={"ENV": values["ENV"]},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cli("secrets", "unset", "s", "PAIR")  # history now holds it too
    cli("secrets", "rollback", "s")
    needles = []
    for value in values.values():
        for part in [value, *value.splitlines()]:
            if len(part) >= 8:
                needles += [
                    part,
                    base64.b64encode(part.encode()).decode(),
                    urllib.parse.quote(part),
                ]
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{needle!r} found in {path}"


@pytest.mark.parametrize(
    "args", [["secrets", "list"], ["secrets", "list", "s"], ["secrets", "history", "s"]]
)
def test_listing_imports_nothing_heavy(cli: CLI, args: list[str]) -> None:
    """Listing needs no crypto, dotenv, structlog or asyncio (start-up stays a few ms)."""
    cli("secrets", "set", "s", "A=1")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "launcher", *args],
        env=cli.env, cwd=cli.cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    heavy = {"cryptography", "dotenv", "structlog", "asyncio", "anyio", "watchfiles", "hashlib"}
    assert not imported & heavy, sorted(imported & heavy)


@pytest.mark.parametrize(
    ("args", "stdin", "code"),
    [
        (["--stdin", "K"], "x" * 16384, 0),
        (["--stdin", "K"], "x" * 16385, 65),
        (["--stdin", "K"], "é" * 8192, 0),
        (["--stdin", "K"], "é" * 8192 + "x", 65),
        (["A" * 64 + "=1"], None, 0),
        (["A" * 65 + "=1"], None, 65),
        (["K", "a\x01b"], None, 0),
        (["--stdin", "K"], "nul\x00inside", 65),
    ],
)
def test_value_and_name_rules_at_their_boundaries_via_the_cli(
    cli: CLI, store_dir: Path, args: list[str], stdin: str | None, code: int
) -> None:
    """16 KiB encoded and 64-character names pass; one more byte or character is exit 65."""
    result = cli("secrets", "set", "s", *args, input=stdin)
    assert result.returncode == code, result.stderr
    assert (store_dir / "s.set").exists() == (code == 0)


def test_set_too_large_for_an_environment_is_refused(
    cli: CLI, store_dir: Path, master_key: str, tmp_path: Path
) -> None:
    """A set beyond the environment bound is refused at write time, leaving the old version."""
    cli("secrets", "set", "s", "KEEP=1")
    env_file = tmp_path / "big.env"
    env_file.write_text("".join(f"K{i}={'x' * 16000}\n" for i in range(70)))
    result = cli("secrets", "set", "s", "--secrets-file", str(env_file))
    assert result.returncode == 65 and "smaller sets" in result.stderr
    assert _values(store_dir, master_key) == {"KEEP": "1"}
    assert json.loads(cli("secrets", "list", "--json").stdout)[0]["version"] == 1
