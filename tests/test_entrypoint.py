"""Which targets run in session mode: found by reading the source, never by running it."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config import Target, TargetKind
from launcher.errors import InvalidInput, UsageError
from launcher.sessions.entrypoint import Entrypoint, defines, find_entrypoint, module_file


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("async def bot(runner_args):\n    pass\n", True),
        ("def bot(runner_args):\n    pass\n", True),
        ("async  def bot (args): pass\n", True),
        ("def bot_helper(args): pass\n", False),
        ("class Agent:\n    def bot(self, args): pass\n", False),
        ("def outer():\n    def bot(args): pass\n", False),
        ("'''\ndef bot(args): pass\n'''\n", False),
        ("# def bot(args): pass\n", False),
        ("bot = lambda args: None\n", False),
        ("def bot(args) pass\n", False),  # a syntax error is the agent's to report
    ],
)
def test_defines_only_module_level_functions(source: str, expected: bool) -> None:
    """Only a module-level def/async def counts; methods, nested functions, strings don't."""
    assert defines(source.encode(), "bot") is expected


def test_script_with_bot_runs_in_session_mode(tmp_path: Path) -> None:
    """A script defining bot() is served in session mode."""
    script = tmp_path / "agent.py"
    script.write_text("async def bot(runner_args):\n    pass\n")
    found = find_entrypoint(Target(TargetKind.SCRIPT, str(script)), None)
    assert found == Entrypoint("script", str(script), "bot")


def test_plain_script_and_command_keep_worker_mode(tmp_path: Path) -> None:
    """A script without bot(), and any command, keep the worker mode."""
    script = tmp_path / "worker.py"
    script.write_text("print('hello')\n")
    assert find_entrypoint(Target(TargetKind.SCRIPT, str(script)), None) is None
    assert find_entrypoint(Target(TargetKind.COMMAND, "node", ("bot.js",)), None) is None


def test_detection_does_not_run_module_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding bot in `-m pkg.agent` neither runs the module nor its package's __init__."""
    package = tmp_path / "pkg"
    package.mkdir()
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'a').write('x')\n"
    (package / "__init__.py").write_text(code)
    (package / "agent.py").write_text(code + "async def bot(runner_args):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    found = find_entrypoint(Target(TargetKind.MODULE, "pkg.agent"), None)
    assert found == Entrypoint("module", "pkg.agent", "bot")
    assert not marker.exists()


def test_package_main_is_what_m_runs(tmp_path: Path) -> None:
    """`-m pkg` looks in pkg/__main__.py, as python -m does."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("def bot(args): pass\n")
    assert module_file("pkg", [str(tmp_path)]) == package / "__main__.py"
    assert module_file("pkg.missing", [str(tmp_path)]) is None


@pytest.mark.parametrize("option", ["run_session", ":run_session"])
def test_entrypoint_option_picks_another_function(tmp_path: Path, option: str) -> None:
    """--entrypoint FUNC or :FUNC selects a function of the target."""
    script = tmp_path / "agent.py"
    script.write_text("def run_session(args): pass\n")
    found = find_entrypoint(Target(TargetKind.SCRIPT, str(script)), option)
    assert found == Entrypoint("script", str(script), "run_session")


def test_entrypoint_option_with_file_and_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--entrypoint FILE.py:FUNC and MODULE:FUNC name the code to import."""
    (tmp_path / "other.py").write_text("async def serve(args): pass\n")
    monkeypatch.chdir(tmp_path)
    target = Target(TargetKind.SCRIPT, "main.py")
    assert find_entrypoint(target, "other.py:serve") == Entrypoint("script", "other.py", "serve")
    assert find_entrypoint(target, "other:serve") == Entrypoint("module", "other", "serve")


def test_entrypoint_option_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing function, file or module, a bad spelling, or a command target are clear errors."""
    script = tmp_path / "agent.py"
    script.write_text("def bot(args): pass\n")
    monkeypatch.chdir(tmp_path)
    target = Target(TargetKind.SCRIPT, str(script))
    with pytest.raises(UsageError, match=r"defines no module-level function nope\(\)"):
        find_entrypoint(target, "nope")
    with pytest.raises(UsageError, match="is not MODULE:FUNCTION"):
        find_entrypoint(target, "agent:not-a-name")
    with pytest.raises(InvalidInput, match=r"missing\.py does not exist"):
        find_entrypoint(target, "missing.py:bot")
    with pytest.raises(UsageError, match="no module 'nomod'"):
        find_entrypoint(target, "nomod:bot")
    with pytest.raises(UsageError, match="needs a Python target"):
        find_entrypoint(Target(TargetKind.COMMAND, "node"), "bot")
