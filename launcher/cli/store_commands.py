"""`agent-run secrets | key | platform`: manage the sealed store. Values are never printed.

The pair grammar of `secrets set` cannot be left to argparse: a value may begin with `-` or
look like one of our options (`API_FLAGS --verbose`). So the tokens are first split into
options and pairs by a small state machine (the token after a bare key is always its value),
and argparse only sees the options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from launcher.errors import (
    ConfigError,
    InvalidInput,
    OperationFailed,
    PermissionProblem,
    UsageError,
)
from launcher.store.names import (
    PLATFORM_CREDENTIALS,
    check_secret_name,
    check_value,
    is_reserved,
    reserved_message,
    secret_name_problem,
)

# pathlib only in annotations: it costs every `secrets set` ~4 ms; Path is imported where
# a file option needs it.
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

COMMANDS = frozenset(
    {
        ("secrets", "set"),
        ("secrets", "unset"),
        ("secrets", "list"),
        ("secrets", "history"),
        ("secrets", "describe"),
        ("secrets", "rollback"),
        ("secrets", "delete"),
        ("secrets", "retired"),
        ("key", "init"),
        ("key", "rotate"),
        ("platform", "set"),
        ("platform", "show"),
    }
)
# Options of `secrets set` / `platform set` that take values: how many tokens each consumes.
VALUE_OPTIONS = {
    "--secrets": 1,
    "--secrets-file": 1,
    "--stdin": 1,
    "--store": 1,
    "--key-file": 1,
    "--description": 1,
    "--tag": 1,
    "--file": 1,
}
MANY_OPTIONS = {"--from-env"}


def _path(text: str) -> Path:
    """argparse `type` of the file options: pathlib is imported only when one is given."""
    from pathlib import Path

    return Path(text)


def _say(message: str) -> None:
    sys.stderr.write(f"agent-run: {message}\n")


# --- parsers -------------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter without its `import shutil` (~2 ms with bz2 and lzma).

    argparse builds a formatter for every `add_argument`, so `secrets list` would pay for
    shutil just to construct its parser; the terminal width is one `os` call.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            try:
                columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(1).columns
            except (OSError, ValueError):
                columns = 80
            width = columns - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser using `_Formatter`; subparsers inherit the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DIR",
        type=_path,
        help="store directory (default: $AGENT_RUN_HOME, else $XDG_DATA_HOME/agent-run)",
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        type=_path,
        help="master key file (default: AGENT_RUN_MASTER_KEY, $AGENT_RUN_KEY_FILE, "
        "$CREDENTIALS_DIRECTORY/agent-run.key, /run/secrets/agent-run.key, <store>/master.key)",
    )


def _input_options(parser: argparse.ArgumentParser, pairs_help: str) -> None:
    parser.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help=pairs_help)
    parser.add_argument(
        "--stdin",
        metavar="KEY",
        help="read KEY's value from standard input (multi-line values such as PEM keys are "
        "kept exactly; a single line loses its final newline)",
    )
    parser.add_argument(
        "--from-env",
        metavar="KEY",
        nargs="+",
        default=[],
        help="take each KEY's value from your own environment",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _metadata_options(parser: argparse.ArgumentParser, which: str) -> None:
    parser.add_argument(
        "--description",
        metavar="TEXT",
        help=f"describe {which} (one line, at most 256 characters; plaintext, like the names: "
        "never a value); an empty TEXT removes the description",
    )
    parser.add_argument(
        "--tag",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help=f"tag {which} (e.g. team=voice, rotate=90d; plaintext like the names); repeatable",
    )


def build_parser(only: tuple[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand is built (start-up: listing stays fast)."""

    def want(group: str, command: str) -> bool:
        return only is None or only == (group, command)

    parser = _Parser(
        prog="agent-run",
        description="Manage sealed secret sets, the master key and platform credentials.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    secrets = groups.add_parser("secrets", help="create, update, list and roll back secret sets")
    commands = secrets.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    if want("secrets", "set"):
        set_ = commands.add_parser(
            "set",
            help="add or update secrets in a set",
            description=(
                "Add or update secrets. Pairs: KEY=VALUE (everything after the first = is the "
                "value, verbatim), KEY==VALUE (same as KEY=VALUE), or KEY VALUE (two words; also "
                "how to store a value that begins with =). With nothing to set, imports .env, "
                ".env.local or .env.production from the current directory."
            ),
        )
        set_.add_argument("set", metavar="SET", help="set name")
        _input_options(set_, "secrets to add or update")
        set_.add_argument(
            "--secrets",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            help="a secret (LiveKit's flag form); repeatable",
        )
        set_.add_argument(
            "--file",
            metavar="NAME=PATH",
            action="append",
            default=[],
            help="store PATH's content as secret NAME delivered as a file: each process gets "
            "its own private copy, and NAME holds that copy's path (e.g. "
            "GOOGLE_APPLICATION_CREDENTIALS=./sa.json); repeatable",
        )
        set_.add_argument(
            "--secrets-file",
            metavar="FILE",
            type=_path,
            help="import a dotenv file (python-dotenv)",
        )
        set_.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the whole set: keys not given are removed",
        )
        set_.add_argument(
            "--ignore-empty",
            action="store_true",
            help="skip entries of an imported file that have an empty value (they are named)",
        )
        _metadata_options(set_, "every secret given")
        _store_options(set_)

    if want("secrets", "unset"):
        unset = commands.add_parser("unset", help="remove secrets from a set")
        unset.add_argument("set", metavar="SET")
        unset.add_argument("keys", nargs="+", metavar="KEY")
        unset.add_argument("--json", action="store_true", help="print the result as JSON")
        _store_options(unset)

    if want("secrets", "list"):
        list_ = commands.add_parser(
            "list", help="list sets, or the keys of one set", description="Never shows values."
        )
        list_.add_argument("set", metavar="SET", nargs="?")
        list_.add_argument("--json", action="store_true", help="print JSON")
        list_.add_argument(
            "--tag",
            metavar="NAME[=VALUE]",
            action="append",
            default=[],
            help="with SET: only the secrets with this tag (and value); repeatable, all must match",
        )
        _store_options(list_)

    if want("secrets", "history"):
        history = commands.add_parser("history", help="versions of a set and what each changed")
        history.add_argument("set", metavar="SET")
        history.add_argument("--json", action="store_true", help="print JSON")
        _store_options(history)

    if want("secrets", "describe"):
        describe = commands.add_parser(
            "describe",
            help="change the description and tags of secrets, not their values",
            description="Change the metadata of KEYs without touching their values. Metadata "
            "is stored in plaintext like the key names (listing needs no key), authenticated "
            "with the set, and kept in its history; it can never contain a value. It is a new "
            "version of the set, which running launchers do not roll out (nothing a worker "
            "receives changed).",
        )
        describe.add_argument("set", metavar="SET")
        describe.add_argument("keys", nargs="+", metavar="KEY")
        _metadata_options(describe, "each KEY")
        describe.add_argument(
            "--untag", metavar="NAME", action="append", default=[], help="remove tag NAME"
        )
        describe.add_argument(
            "--clear", action="store_true", help="remove the description and every tag first"
        )
        describe.add_argument("--json", action="store_true", help="print the result as JSON")
        _store_options(describe)

    if want("secrets", "rollback"):
        rollback = commands.add_parser(
            "rollback",
            help="restore an earlier version (as a new version)",
            description="Restore VERSION (default: the previous one) as a new version, which "
            "running launchers roll out like any update. The last 10 versions are kept.",
        )
        rollback.add_argument("set", metavar="SET")
        rollback.add_argument("version", metavar="VERSION", nargs="?", type=int)
        rollback.add_argument("--json", action="store_true", help="print the result as JSON")
        _store_options(rollback)

    if want("secrets", "delete"):
        delete = commands.add_parser("delete", help="delete a set and its history")
        delete.add_argument("set", metavar="SET")
        delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        _store_options(delete)

    if want("secrets", "retired"):
        from launcher.cli.retired_command import add_parser

        add_parser(commands)

    key = groups.add_parser("key", help="create or rotate the master key")
    key_commands = key.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    if want("key", "init"):
        init = key_commands.add_parser(
            "init",
            help="create a master key file (0600)",
            description="Create a new random master key at --key-file, $AGENT_RUN_KEY_FILE or "
            "<store>/master.key. Refuses when a key already exists. Back the file up: without "
            "it the store cannot be decrypted.",
        )
        _store_options(init)
    if want("key", "rotate"):
        rotate = key_commands.add_parser(
            "rotate",
            help="re-seal every set under a new master key",
            description="Re-wrap every set's data key under a new master key, atomically per "
            "set, without changing any value or version. A key file is replaced in place (an "
            "interrupted rotation resumes when run again); a key from the environment or a "
            "mounted secret needs --new-key-file for the new key.",
        )
        _store_options(rotate)
        rotate.add_argument(
            "--new-key-file", metavar="FILE", type=_path, help="where to write the new key"
        )

    platform = groups.add_parser("platform", help="platform credentials (LIVEKIT_*)")
    platform_commands = platform.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    if want("platform", "set"):
        pset = platform_commands.add_parser(
            "set",
            help="store platform credentials, sealed",
            description="Store LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET. They are "
            "injected into every worker and no secret set or env file can override them.",
        )
        pset.add_argument("provider", choices=["livekit"], help="the platform")
        _input_options(pset, "credentials, e.g. LIVEKIT_URL=wss://...")
        _store_options(pset)
    if want("platform", "show"):
        show = platform_commands.add_parser(
            "show", help="which platform credentials are set and where from (never the values)"
        )
        show.add_argument("--json", action="store_true", help="print JSON")
        _store_options(show)
    return parser


def split_tokens(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate options from KEY=VALUE / KEY VALUE pairs (see the module docstring)."""
    options: list[str] = []
    pairs: list[str] = []
    awaiting_value = False
    positional_done = 0
    index = 0
    only_pairs = False
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if awaiting_value:
            awaiting_value = False
            if token == "--stdin" and not only_pairs:
                # `KEY --stdin` reads KEY from standard input, as `--stdin KEY` does: nobody
                # means to store the literal text "--stdin" as a secret.
                options += ["--stdin", pairs.pop()]
                continue
            pairs.append(token)
        elif token == "--" and not only_pairs:
            only_pairs = True
        elif token.startswith("-") and not only_pairs:
            options.append(token)
            name = token.split("=", 1)[0]
            if "=" in token:
                continue
            if name in VALUE_OPTIONS and index < len(tokens):
                options.append(tokens[index])
                index += 1
            elif name in MANY_OPTIONS:
                while (
                    index < len(tokens)
                    and not tokens[index].startswith("-")
                    and "=" not in tokens[index]
                ):
                    options.append(tokens[index])
                    index += 1
        elif positional_done < 1:
            options.append(token)  # SET (or the provider)
            positional_done += 1
        else:
            pairs.append(token)
            awaiting_value = "=" not in token
    if sum(o == "--stdin" or o.startswith("--stdin=") for o in options) > 1:
        raise UsageError("--stdin reads one value: give it once (other keys as KEY=VALUE)")
    return options, pairs


# --- helpers -------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> Any:
    from launcher.store.sets import Store

    return Store.open(args.store)


def _key(args: argparse.Namespace, store: Any, create: bool = False) -> Any:
    """The keyring (keyring.py): writes seal with its newest key, reads follow rotations."""
    from launcher.store.keyring import Keyring

    keyring = Keyring.open(store.directory, args.key_file, os.environ, create=create)
    if keyring.created:
        _say(
            f"created master key {keyring.current.source} (mode 0600); back it up: without it "
            "this store cannot be decrypted"
        )
    return keyring


def _read_stdin_value() -> str:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("standard input is not valid UTF-8 text") from None
    # `echo sk-123 | agent-run ...` must not store the newline echo added; a multi-line value
    # (a PEM key) is kept exactly as given.
    body = text[:-1] if text.endswith("\n") else text
    body = body[:-1] if body.endswith("\r") else body
    return body if "\n" not in body else text


def _explicit_values(args: argparse.Namespace, pairs: list[str]) -> dict[str, str]:
    from launcher.store.parse import parse_pairs

    given = [key for key, _ in parse_pairs(pairs) + parse_pairs(getattr(args, "secrets", []))]
    given += ([args.stdin] if args.stdin else []) + list(args.from_env)
    twice = sorted({key for key in given if given.count(key) > 1})
    if twice:
        # `A=1 A=2` would keep one of them silently: which one did the operator mean?
        raise InvalidInput(
            f"{', '.join(twice)} given more than once; give each key once (nothing was stored)"
        )
    values: dict[str, str] = {}
    for key, value in parse_pairs(pairs) + parse_pairs(getattr(args, "secrets", [])):
        values[key] = value
    if args.stdin:
        values[args.stdin] = _read_stdin_value()
    for key in args.from_env:
        if key not in os.environ:
            raise InvalidInput(f"--from-env {key}: {key} is not set in your environment")
        values[key] = os.environ[key]
    return values


def _file_values(path: Path, ignore_empty: bool) -> dict[str, str]:
    from launcher.store.parse import read_dotenv

    entries = read_dotenv(path)
    if entries.empty and not ignore_empty:
        raise InvalidInput(
            f"{path}: empty value for {', '.join(entries.empty)} "
            "(fill them in, or skip them with --ignore-empty)"
        )
    if entries.empty:
        _say(f"skipped empty entries of {path}: {', '.join(entries.empty)}")
    values: dict[str, str] = {}
    for key, value in entries.values.items():
        problem = secret_name_problem(key)
        if problem:
            raise InvalidInput(f"{path}: {problem}")
        if is_reserved(key):
            _say(f"warning: skipped {key} from {path}: {reserved_message(key)}")
            continue
        values[key] = value
    return values


def _file_secrets(specs: Sequence[str]) -> dict[str, str]:
    """`--file NAME=PATH` -> {NAME: the file's content}; read as values are checked."""
    from launcher.cli.text_input import read_text
    from launcher.store.names import MAX_VALUE_BYTES

    contents: dict[str, str] = {}
    for spec in specs:
        name, equals, path = spec.partition("=")
        if not equals or not name or not path:
            raise UsageError(f"--file {spec}: write NAME=PATH (e.g. GOOGLE_CREDS=./sa.json)")
        if name in contents:
            raise InvalidInput(f"--file: {name} given more than once (nothing was stored)")
        contents[name] = read_text(
            path,
            f"--file {name}: {path}",
            MAX_VALUE_BYTES,
            hint=" (file secrets hold text: JSON, PEM)",
        )
    return contents


def _discovered_file() -> Path | None:
    from pathlib import Path

    from launcher.store.parse import DISCOVERED_FILES, discover

    found = discover(Path.cwd())
    if not found:
        return None
    names = ", ".join(p.name for p in found)
    if sys.stdin.isatty() and sys.stderr.isatty():
        if len(found) == 1:
            answer = input(f"Import secrets from {found[0].name}? [y/N] ").strip().lower()
            return found[0] if answer in ("y", "yes") else None
        sys.stderr.write(f"Found {names}.\n")
        for number, path in enumerate(found, 1):
            sys.stderr.write(f"  {number}) {path.name}\n")
        answer = input("Import which one? (number, or Enter for none) ").strip()
        if answer.isdigit() and 1 <= int(answer) <= len(found):
            return found[int(answer) - 1]
        return None
    if len(found) > 1:
        raise UsageError(f"found {names} here; choose one with --secrets-file FILE")
    _say(f"importing {found[0].name} (looked for {', '.join(DISCOVERED_FILES)})")
    return found[0]


def _check_all(values: dict[str, str]) -> None:
    for key, value in values.items():
        check_secret_name(key)
        check_value(key, value)


def _print_result(args: argparse.Namespace, result: Any, extra: str = "") -> None:
    change = result.change
    if args.json:
        print(
            json.dumps(
                {
                    "set": result.name,
                    "version": result.version,
                    "previous_version": result.previous_version,
                    "added": list(change.added),
                    "updated": list(change.changed),
                    "removed": list(change.removed),
                    "metadata": list(change.described),
                }
            )
        )
        return
    if change.empty:
        print(f"{result.name} v{result.version}: unchanged")
        return
    parts = []
    for count, word in (
        (change.added, "added"),
        (change.changed, "updated"),
        (change.removed, "removed"),
        (change.described, "described"),
    ):
        if count:
            parts.append(f"{len(count)} {word}")
    print(f"{result.name} v{result.version}: {extra}{', '.join(parts)}")


def _metadata_edit(args: argparse.Namespace) -> Any:
    """The --description/--tag (and --untag/--clear) options as an edit; falsy when none."""
    from launcher.store.metadata import MetadataEdit, check_description, check_tag, parse_tag

    if args.description is not None:
        check_description("--description", args.description)
    tags = tuple(parse_tag(t) for t in args.tag)
    untag = tuple(getattr(args, "untag", ()))
    for name in untag:
        check_tag("--untag", name, "")
    return MetadataEdit(
        description=args.description,
        tags=tuple((n, v or "") for n, v in tags),
        untag=untag,
        clear=getattr(args, "clear", False),
    )


def _tags_text(tags: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{n}={v}" for n, v in tags)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# --- commands ------------------------------------------------------------------------------


def cmd_secrets_set(args: argparse.Namespace, pairs: list[str]) -> int:
    from launcher.store.names import check_set_name

    check_set_name(args.set)
    explicit = _explicit_values(args, pairs)
    files = _file_secrets(args.file)
    both = sorted(set(files) & set(explicit))
    if both:
        raise InvalidInput(
            f"{', '.join(both)} given both as a value and as --file (nothing was stored)"
        )
    explicit.update(files)
    source_file = args.secrets_file
    if source_file is None and not explicit:
        source_file = _discovered_file()
        if source_file is None:
            raise UsageError(
                "nothing to set: give KEY=VALUE pairs, --secrets-file FILE, --stdin KEY or "
                "--from-env KEY"
            )
    values = _file_values(source_file, args.ignore_empty) if source_file else {}
    values.update(explicit)
    _check_all(values)  # before the key or the store is touched: nothing half-applied
    edit = _metadata_edit(args)
    store = _store(args)
    key = _key(args, store, create=True)

    def apply(current: dict[str, str]) -> dict[str, str]:
        return dict(values) if args.overwrite else {**current, **values}

    describe = dict.fromkeys(values, edit) if edit else {}
    if files:
        from launcher.store.metadata import FILE_DELIVERY, MetadataEdit

        file_edit = MetadataEdit(
            description=edit.description if edit else None,
            tags=(*(edit.tags if edit else ()), FILE_DELIVERY),
        )
        describe.update(dict.fromkeys(files, file_edit))
    _print_result(args, store.update(args.set, key, apply, describe=describe or None))
    return 0


def cmd_secrets_describe(args: argparse.Namespace) -> int:
    from launcher.store.names import check_set_name

    check_set_name(args.set)
    edit = _metadata_edit(args)
    if not edit:
        raise UsageError(
            "nothing to change: give --description TEXT, --tag NAME=VALUE, --untag NAME or "
            "--clear (`agent-run secrets list SET` shows the current metadata)"
        )
    store = _store(args)
    key = _key(args, store)
    result = store.update(
        args.set, key, dict, must_exist=True, describe=dict.fromkeys(args.keys, edit)
    )
    _print_result(args, result)
    return 0


def cmd_secrets_unset(args: argparse.Namespace) -> int:
    from launcher.store.names import check_set_name

    check_set_name(args.set)
    store = _store(args)
    key = _key(args, store)

    def apply(current: dict[str, str]) -> dict[str, str]:
        missing = [k for k in args.keys if k not in current]
        if missing:
            raise OperationFailed(
                f"set {args.set!r} has no key {', '.join(missing)}; nothing was removed "
                f"(keys: {', '.join(sorted(current)) or 'none'})"
            )
        return {k: v for k, v in current.items() if k not in args.keys}

    _print_result(args, store.update(args.set, key, apply, must_exist=True))
    return 0


def cmd_secrets_list(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.set:
        return _list_keys(args, store)
    if args.tag:
        raise UsageError("--tag filters the secrets of one set: agent-run secrets list SET --tag")
    infos = store.list_sets()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "keys": i.keys,
                        "version": i.version,
                        "status": i.status,
                        "updated": i.updated,
                    }
                    for i in infos
                ]
            )
        )
    elif infos:
        rows = [("NAME", "KEYS", "VERSION", "STATUS", "UPDATED")]
        rows += [(i.name, str(i.keys), str(i.version), i.status, i.updated) for i in infos]
        print(_table(rows))
    else:
        print(
            f"no secret sets in {store.root} (create one: `agent-run secrets set NAME KEY=VALUE`)"
        )
    return 0


def _list_keys(args: argparse.Namespace, store: Any) -> int:
    """`secrets list SET`: each key's times, description and tags (never a value)."""
    from launcher.store.metadata import Metadata, parse_tag

    wanted = [parse_tag(t, value_required=False) for t in args.tag]
    times = store.key_times(args.set)
    metadata = store.metadata(args.set) if times else {}
    rows = [
        (k, t, metadata.get(k, Metadata()))
        for k, t in times.items()
        if metadata.get(k, Metadata()).matches(wanted)
    ]
    if args.json:
        print(
            json.dumps(
                [
                    {**{"key": k}, **t, "description": m.description, "tags": m.tag_dict()}
                    for k, t, m in rows
                ]
            )
        )
    elif rows:
        table = [("KEY", "CREATED", "UPDATED", "TAGS", "DESCRIPTION")]
        table += [
            (k, t["created"], t["updated"], _tags_text(m.tags) or "-", m.description or "-")
            for k, t, m in rows
        ]
        print(_table(table))
    elif times:
        print(f"{args.set}: no key has tag {', '.join(args.tag)}")
    else:
        print(f"{args.set}: no keys")
    return 0


def cmd_secrets_history(args: argparse.Namespace) -> int:
    entries = _store(args).history(args.set)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "version": e.version,
                        "time": e.updated,
                        "current": e.current,
                        "added": list(e.change.added),
                        "updated": list(e.change.changed),
                        "removed": list(e.change.removed),
                        "metadata": list(e.change.described),
                    }
                    for e in entries
                ]
            )
        )
        return 0
    rows = [("VERSION", "UPDATED", "CHANGES")]
    for e in entries:
        changes = [f"+{k}" for k in e.change.added] + [f"~{k}" for k in e.change.changed]
        changes += [f"-{k}" for k in e.change.removed]
        changes += [f"*{k}" for k in e.change.described]
        label = f"{e.version}{' (current)' if e.current else ''}"
        rows.append((label, e.updated, " ".join(changes) or "-"))
    print(_table(rows))
    print("(+ added, ~ changed, - removed, * description or tags changed; values are never shown)")
    return 0


def cmd_secrets_rollback(args: argparse.Namespace) -> int:
    store = _store(args)
    key = _key(args, store)
    result = store.rollback(args.set, key, args.version)
    target = args.version if args.version is not None else "the previous version"
    label = f"v{target}" if isinstance(target, int) else target
    _print_result(args, result, extra=f"restored {label}: ")
    return 0


def cmd_secrets_delete(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.exists(args.set):
        raise store._not_found(args.set)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"deleting set {args.set!r} needs --yes when not run on a terminal")
        answer = input(f"Delete secret set {args.set!r} and its history? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            _say("nothing deleted")
            return 1
    store.delete(args.set)
    print(f"{args.set}: deleted")
    return 0


def cmd_key_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from launcher.store import crypto
    from launcher.store.keys import STORE_KEY_NAME, load_master_key

    store = _store(args)
    target = args.key_file or (
        Path(os.environ["AGENT_RUN_KEY_FILE"]) if os.environ.get("AGENT_RUN_KEY_FILE") else None
    )
    if target is None:
        try:
            existing = load_master_key(store.directory, None, os.environ)
        except ConfigError:
            existing = None
        if existing is not None:
            raise OperationFailed(
                f"a master key already exists ({existing.source}); nothing was created "
                "(use `agent-run key rotate` to replace it)"
            )
        target = store.root / STORE_KEY_NAME
    try:
        _write_key(target, crypto.new_key())
    except FileExistsError:
        raise OperationFailed(f"key file {target} already exists; nothing was created") from None
    print(f"created master key {target} (mode 0600); back it up: the store needs it")
    return 0


def _write_key(path: Path, key: bytes) -> None:
    """`write_key_file`, with its failures as one line (FileExistsError is the caller's)."""
    from launcher.store.keys import write_key_file

    try:
        write_key_file(path, key)
    except FileExistsError:
        raise
    except PermissionError:
        raise PermissionProblem(f"cannot write key file {path}: permission denied") from None
    except OSError as error:
        raise OperationFailed(f"cannot write key file {path}: {error.strerror}") from None


def _check_new_key_file(path: Path) -> None:
    """Refuse (65) a --new-key-file that can never be written, before any set is re-sealed:
    a directory or other non-file, a name too long, a loop. Absent is the normal case, and
    a permission problem is said by the write itself (77)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, PermissionError):
        return
    except OSError as error:
        raise InvalidInput(
            f"--new-key-file {path}: {error.strerror}; give the path of a file to create for "
            "the new key"
        ) from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(
            f"--new-key-file {path} is not a regular file; give the path of a file "
            "to create for the new key"
        )


def cmd_key_rotate(args: argparse.Namespace) -> int:
    from launcher.store.keyring import rotate

    if args.new_key_file is not None:
        _check_new_key_file(args.new_key_file)
    store = _store(args)
    result = rotate(store, _key(args, store), args.new_key_file)
    print(
        f"rotated master key {result.old_id} -> {result.new_id}: {result.resealed} set(s) "
        f"re-sealed; new key in {result.where}"
    )
    _say(
        "the old key no longer opens this store: replace every deployed copy of the key and "
        "of the set files (servers, Docker and Kubernetes secrets, systemd credentials) and "
        f"your backups of the key with {result.where}"
    )
    return 0


def cmd_platform_set(args: argparse.Namespace, pairs: list[str]) -> int:
    from launcher.store.sets import PLATFORM

    values = _explicit_values(args, pairs)
    if not values:
        raise UsageError(
            "nothing to set: give LIVEKIT_URL=..., LIVEKIT_API_KEY=..., --stdin LIVEKIT_API_SECRET"
        )
    for key, value in values.items():
        if key not in PLATFORM_CREDENTIALS:
            raise InvalidInput(
                f"{key} is not a livekit credential (expected {', '.join(PLATFORM_CREDENTIALS)})"
            )
        check_value(key, value)
    store = _store(args)
    key = _key(args, store, create=True)
    result = store.update(PLATFORM, key, lambda current: {**current, **values})
    if args.json:
        print(json.dumps({"stored": sorted(values), "version": result.version}))
    else:
        print(f"platform livekit: stored {', '.join(sorted(values))}")
    return 0


def cmd_platform_show(args: argparse.Namespace) -> int:
    from launcher.store.sets import PLATFORM

    store = _store(args)
    store.names()  # a store we cannot read is exit 77, not three `missing` lines and 0
    stored = store.key_times(PLATFORM) if store.has_platform() else {}
    sources = {}
    for name in PLATFORM_CREDENTIALS:
        if name in stored:
            sources[name] = "store"
        elif name in os.environ:
            sources[name] = "environment"  # the launcher's own environment (SPEC §3.1, layer 4)
        else:
            sources[name] = "missing"
    if args.json:
        print(json.dumps(sources))
    else:
        described = {"store": "store", "environment": "launcher environment", "missing": "missing"}
        print(_table([("NAME", "SOURCE"), *((k, described[v]) for k, v in sources.items())]))
    return 0


def cmd_secrets_retired(args: argparse.Namespace) -> int:
    from launcher.cli.retired_command import run

    return run(args)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "set" and argv[0] in ("secrets", "platform"):
        options, pairs = split_tokens(argv[2:])
        args = build_parser((argv[0], "set")).parse_args(argv[:2] + options)
        handler: Callable[..., int] = cmd_secrets_set if argv[0] == "secrets" else cmd_platform_set
        return handler(args, pairs)
    only = (argv[0], argv[1]) if len(argv) >= 2 else None
    args = build_parser(only if only in COMMANDS else None).parse_args(argv)
    handlers: dict[tuple[str, str], Callable[[argparse.Namespace], int]] = {
        ("secrets", "unset"): cmd_secrets_unset,
        ("secrets", "list"): cmd_secrets_list,
        ("secrets", "history"): cmd_secrets_history,
        ("secrets", "describe"): cmd_secrets_describe,
        ("secrets", "rollback"): cmd_secrets_rollback,
        ("secrets", "delete"): cmd_secrets_delete,
        ("secrets", "retired"): cmd_secrets_retired,
        ("key", "init"): cmd_key_init,
        ("key", "rotate"): cmd_key_rotate,
        ("platform", "show"): cmd_platform_show,
    }
    return handlers[(args.group, args.command)](args)
