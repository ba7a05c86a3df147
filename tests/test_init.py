"""`pmrun init`: framework-source detection, the CLAUDE.md section, pmrun.toml, exit codes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import assume, given
from hypothesis import strategies as st

from pmrun import config
from pmrun.cli._group import cli
from pmrun.errors import ExitCode, PmrunError
from pmrun.init import (
    SECTION_BEGIN,
    SECTION_END,
    backup_path,
    detect_framework_source,
    plan_init,
    render_config_toml,
    section_template,
    update_claude_md,
)

SECTION = section_template().encode()
USER_TEXT = b"# My project\n\nRules the team wrote. Keep them.\n"


def init(*args: str) -> Result:
    return CliRunner().invoke(cli, ["init", *args])


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def backups(d: Path) -> list[Path]:
    return sorted(d.glob("*.pmrun-backup-*"))


# ---------------------------------------------------------------------------------------
# Detection: each marker alone, and what is not a marker


def _package(*parts: str) -> Callable[[Path], object]:
    return lambda d: write(d.joinpath(*parts, "__init__.py"), "")


def _pkg_json(doc: object) -> Callable[[Path], object]:
    return lambda d: write(d / "package.json", json.dumps(doc))


def _pyproject(text: str) -> Callable[[Path], object]:
    return lambda d: write(d / "pyproject.toml", text)


MARKERS: dict[str, tuple[Callable[[Path], object], str]] = {
    # id: (make the marker in a directory, the reason reported)
    "pyproject name": (
        _pyproject('[project]\nname = "claude-multiagent-pm"\n'),
        "pyproject.toml: [project] name is 'claude-multiagent-pm'",
    ),
    "pyproject name, other spelling": (
        _pyproject('[project]\nname = "Claude_MultiAgent.PM"\n'),
        "pyproject.toml: [project] name is 'Claude_MultiAgent.PM'",
    ),
    "pyproject name pmrun": (
        _pyproject('[project]\nname = "pmrun"\n'),
        "pyproject.toml: [project] name is 'pmrun'",
    ),
    "poetry name": (
        _pyproject('[tool.poetry]\nname = "claude-multiagent-pm"\n'),
        "pyproject.toml: [tool.poetry] name is 'claude-multiagent-pm'",
    ),
    "claude_pm package": (_package("claude_pm"), "claude_pm/__init__.py"),
    "src/claude_pm package": (_package("src", "claude_pm"), "src/claude_pm/__init__.py"),
    "package.json name": (
        _pkg_json({"name": "claude-multiagent-pm"}),
        "package.json: name is 'claude-multiagent-pm'",
    ),
    "package.json scoped name": (
        _pkg_json({"name": "@bobmatnyc/claude-multiagent-pm", "version": "1.4.0"}),
        "package.json: name is '@bobmatnyc/claude-multiagent-pm'",
    ),
    "package.json bin": (
        _pkg_json({"name": "x", "bin": {"claude-multiagent-pm": "./bin/x"}}),
        "package.json: bin 'claude-multiagent-pm'",
    ),
    "package.json repository url": (
        _pkg_json(
            {
                "name": "fork",
                "repository": {
                    "type": "git",
                    "url": "git+https://github.com/bobmatnyc/claude-multiagent-pm.git",
                },
            }
        ),
        "package.json: repository is 'git+https://github.com/bobmatnyc/claude-multiagent-pm.git'",
    ),
    "package.json repository shorthand": (
        _pkg_json({"name": "fork", "repository": "github:someone/claude-multiagent-pm"}),
        "package.json: repository is 'github:someone/claude-multiagent-pm'",
    ),
    "package.json repository ssh": (
        _pkg_json({"repository": "git@github.com:someone/claude-multiagent-pm.git"}),
        "package.json: repository is 'git@github.com:someone/claude-multiagent-pm.git'",
    ),
    "CLAUDE.md declaration": (
        lambda d: write(d / "CLAUDE.md", "# Dev rules\n\n**FRAMEWORK DEVELOPERS ONLY**\n"),
        "CLAUDE.md: says 'FRAMEWORK DEVELOPERS ONLY'",
    ),
}


def _ordinary_project(d: Path) -> None:
    """What nearly every real project has, and what the framework wrongly counted."""
    for folder in ("tests", "scripts", "docs", "src/myapp"):
        (d / folder).mkdir(parents=True, exist_ok=True)
    write(d / "tests/__init__.py", "")
    write(d / "src/myapp/__init__.py", "")
    write(d / ".github/workflows/ci.yml", "on: push\n")
    write(
        d / "pyproject.toml", '[project]\nname = "myapp"\ndependencies = ["claude-multiagent-pm"]\n'
    )


NOT_MARKERS: dict[str, Callable[[Path], object]] = {
    "empty directory": lambda d: None,
    "tests, scripts, .github, other pyproject": _ordinary_project,
    "framework as an npm dependency": _pkg_json(
        {"name": "app", "dependencies": {"@bobmatnyc/claude-multiagent-pm": "^1.4.0"}}
    ),
    "framework named in description": _pkg_json(
        {"name": "app", "description": "built on claude-multiagent-pm", "keywords": ["claude-pm"]}
    ),
    "similar repository name": _pkg_json({"repository": "github:me/claude-multiagent-pm-tools"}),
    "similar package name": _pkg_json({"name": "claude-multiagent-pm-plugin"}),
    "pmrun named in package.json": _pkg_json({"name": "pmrun"}),
    "claude_pm without __init__.py": lambda d: write(d / "claude_pm/main.py", ""),
    "claude_pm is a file": lambda d: write(d / "claude_pm", ""),
    "nested claude_pm": _package("vendor", "claude_pm"),
    "lowercase phrase in CLAUDE.md": lambda d: write(
        d / "CLAUDE.md", "Internal API: for framework developers only.\n"
    ),
    "declaration in a sub-directory CLAUDE.md": lambda d: write(
        d / "framework/CLAUDE.md", "FRAMEWORK DEVELOPERS ONLY\n"
    ),
    "declaration inside the pmrun section": lambda d: write(
        d / "CLAUDE.md", f"{SECTION_BEGIN}\nFRAMEWORK DEVELOPERS ONLY\n{SECTION_END}\n"
    ),
}


@pytest.mark.parametrize("make, reason", MARKERS.values(), ids=MARKERS.keys())
def test_each_marker_alone_is_detected(tmp_path: Path, make, reason: str) -> None:
    make(tmp_path)
    found = detect_framework_source(tmp_path)
    assert found.is_framework
    assert len(found.reasons) == 1 and found.reasons[0].startswith(reason)
    assert found.problems == ()


@pytest.mark.parametrize("make", NOT_MARKERS.values(), ids=NOT_MARKERS.keys())
def test_non_markers_are_not_detected(tmp_path: Path, make) -> None:
    make(tmp_path)
    found = detect_framework_source(tmp_path)
    assert not found.is_framework, found.reasons
    assert found.problems == ()


def test_all_markers_together_are_all_reported(tmp_path: Path) -> None:
    for make, _ in (MARKERS["pyproject name"], MARKERS["claude_pm package"],
                    MARKERS["package.json scoped name"], MARKERS["CLAUDE.md declaration"]):  # fmt: skip
        make(tmp_path)
    assert len(detect_framework_source(tmp_path).reasons) == 4


MALFORMED = {
    "pyproject.toml": ("pyproject.toml", b'[project\nname = "x"\n', "not valid TOML"),
    "pyproject.toml not UTF-8": ("pyproject.toml", b'[project]\nname = "\xff"\n', "not valid TOML"),
    "package.json": ("package.json", b'{"name": "claude-multiagent-pm",', "not valid JSON"),
    "package.json not an object": (
        "package.json",
        b'["claude-multiagent-pm"]',
        "not a JSON object",
    ),
}


@pytest.mark.parametrize("name, content, problem", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_is_reported_not_a_marker(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    write(tmp_path / name, content)
    found = detect_framework_source(tmp_path)
    assert not found.is_framework
    assert len(found.problems) == 1
    assert found.problems[0].startswith(f"{tmp_path / name}: {problem}")


def test_malformed_file_does_not_hide_another_marker(tmp_path: Path) -> None:
    write(tmp_path / "package.json", b"{not json")
    MARKERS["claude_pm package"][0](tmp_path)
    found = detect_framework_source(tmp_path)
    assert found.is_framework and len(found.problems) == 1


# ---------------------------------------------------------------------------------------
# The CLAUDE.md section (pure)


def test_new_file_is_the_section() -> None:
    assert update_claude_md(None, SECTION.decode()) == SECTION + b"\n"
    assert update_claude_md(b"", SECTION.decode()) == SECTION + b"\n"


@pytest.mark.parametrize(
    "existing, expected",
    [
        (b"rules\n", b"rules\n\n" + SECTION + b"\n"),
        (b"rules", b"rules\n\n" + SECTION + b"\n"),  # no final newline: keep it, add after it
        (b"rules\n\n\n", b"rules\n\n\n\n" + SECTION + b"\n"),
        (
            b"rules\r\nmore\r\n",
            b"rules\r\nmore\r\n\r\n" + SECTION.replace(b"\n", b"\r\n") + b"\r\n",
        ),
        # A marker quoted in prose is not a section.
        (b"see `<!-- pmrun:begin -->`\n", b"see `<!-- pmrun:begin -->`\n\n" + SECTION + b"\n"),
    ],
)
def test_section_is_appended_after_user_text(existing: bytes, expected: bytes) -> None:
    assert update_claude_md(existing, SECTION.decode()) == expected


@pytest.mark.parametrize(
    "before, after",
    [
        (b"top\n\n", b"\nbottom\n"),
        (b"top\n", b"\nbottom"),  # no final newline after the section's user text
        (b"", b""),
        (b"", b"   \n"),  # blanks after the end marker are the user's
        (b"top\r\n\r\n", b"\r\nbottom\r\n"),
    ],
)
def test_stale_section_is_replaced_and_surroundings_kept(before: bytes, after: bytes) -> None:
    nl = b"\r\n" if b"\r\n" in before + after else b"\n"
    stale = nl.join([SECTION_BEGIN.encode(), b"old instructions", SECTION_END.encode()])
    out = update_claude_md(before + stale + after, SECTION.decode())
    assert out == before + SECTION.replace(b"\n", nl) + after
    assert update_claude_md(out, SECTION.decode()) == out


def test_crlf_markers_with_trailing_blanks_are_recognized() -> None:
    existing = b"a\r\n<!-- pmrun:begin -->  \r\nold\r\n<!-- pmrun:end -->\t\r\nb"
    out = update_claude_md(existing, SECTION.decode())
    assert out == b"a\r\n" + SECTION.replace(b"\n", b"\r\n") + b"\t\r\nb"


def test_replaced_section_keeps_its_own_line_endings() -> None:
    lf_section_in_crlf_file = b"a\r\n" + SECTION + b"\r\nb\r\n"
    assert update_claude_md(lf_section_in_crlf_file, SECTION.decode()) == lf_section_in_crlf_file


@pytest.mark.parametrize(
    "broken",
    [
        b"x\n<!-- pmrun:begin -->\nno end\n",
        b"no begin\n<!-- pmrun:end -->\n",
        b"<!-- pmrun:end -->\n<!-- pmrun:begin -->\n",
        b"<!-- pmrun:begin -->\n<!-- pmrun:begin -->\n<!-- pmrun:end -->\n",
    ],
)
def test_broken_markers_are_an_error(broken: bytes) -> None:
    with pytest.raises(PmrunError, match="markers are broken"):
        update_claude_md(broken, SECTION.decode())


_text = st.binary(max_size=200) | st.text(max_size=200).map(str.encode)


@given(before=_text, after=_text)
def test_user_text_around_the_section_is_kept_byte_for_byte(before: bytes, after: bytes) -> None:
    assume(b"pmrun:" not in before + after)
    first = update_claude_md(before, SECTION.decode())
    assert first.startswith(before)
    assert update_claude_md(first, SECTION.decode()) == first  # idempotent
    # The user then writes below the section; the next update keeps both parts.
    edited = first + after
    out = update_claude_md(edited, SECTION.decode())
    assert out == edited


def test_template_holds_what_agents_need() -> None:
    text = SECTION.decode()
    assert text.startswith(SECTION_BEGIN) and text.endswith(SECTION_END)
    for needed in ("pmrun --name NAME -- cmd", 'pmrun.launch(["cmd", "arg"], max_rss="1G")',
                   "137", "--report", "pmrun status --json", "pmrun cleanup"):  # fmt: skip
        assert needed in text
    assert "FRAMEWORK DEVELOPERS ONLY" not in text


# ---------------------------------------------------------------------------------------
# pmrun.toml


def test_config_file_documents_every_default(tmp_path: Path) -> None:
    text = render_config_toml()
    import tomllib

    assert tomllib.loads(text) == {"agent": {}, "coordinator": {}, "cache": {}}
    # Uncommented, every line is the default: the file can never drift from the registry.
    uncommented = re.sub(r"(?m)^# ([a-z-]+ = )", r"\1", text)
    write(tmp_path / "pmrun.toml", uncommented)
    cfg = config.load(env={}, cwd=tmp_path, user_path=tmp_path / "none.toml")
    for s in config.SETTINGS:
        assert cfg.source(s.name) == f"project {tmp_path / 'pmrun.toml'}"
        assert cfg[s.name] == s.parse(s.default)
        assert f"# {s.help} (env {s.env})\n" in text


def test_backup_path_is_timestamped_and_free(tmp_path: Path) -> None:
    now = datetime(2025, 7, 15, 14, 9, 46)
    target = write(tmp_path / "CLAUDE.md", "x")
    first = backup_path(target, now)
    assert first.name == "CLAUDE.md.pmrun-backup-20250715-140946"
    write(first, "taken")
    assert backup_path(target, now).name == "CLAUDE.md.pmrun-backup-20250715-140946-2"


# ---------------------------------------------------------------------------------------
# The command


def test_fresh_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = init()
    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "pmrun.toml").read_text() == render_config_toml()
    assert (tmp_path / "CLAUDE.md").read_bytes() == SECTION + b"\n"
    assert "created           pmrun.toml" in result.stdout
    assert "created           CLAUDE.md" in result.stdout
    cfg = config.load(cwd=tmp_path)
    assert cfg.files == [tmp_path / "pmrun.toml"]
    assert {cfg.source(s.name) for s in config.SETTINGS} == {"default"}


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "CLAUDE.md", USER_TEXT)
    assert init(str(tmp_path)).exit_code == 0
    before = snapshot(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    result = init(str(tmp_path))
    assert result.exit_code == 0
    assert snapshot(tmp_path) == before
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    assert result.stdout.count("unchanged") == 2
    assert backups(tmp_path) == []


def test_user_content_around_the_section_survives_updates(tmp_path: Path) -> None:
    head = b"# Team rules\r\n\r\nUse tabs.\r\n"
    write(tmp_path / "CLAUDE.md", head)
    assert init(str(tmp_path)).exit_code == 0
    deployed = (tmp_path / "CLAUDE.md").read_bytes()
    assert deployed.startswith(head) and b"\r\n" + SECTION.replace(b"\n", b"\r\n") in deployed
    # The user writes around the section, and a newer pmrun has other wording inside it.
    tail = b"\r\n## Later notes\r\nno final newline"
    begin = deployed.index(SECTION_BEGIN.encode())
    stale = deployed[:begin] + f"{SECTION_BEGIN}\r\nold\r\n{SECTION_END}".encode() + tail
    write(tmp_path / "CLAUDE.md", b"intro\r\n" + stale)
    result = init(str(tmp_path))
    assert result.exit_code == 0
    assert "pmrun section replaced" in result.stdout
    out = (tmp_path / "CLAUDE.md").read_bytes()
    assert out == b"intro\r\n" + deployed[:begin] + SECTION.replace(b"\n", b"\r\n") + tail


def test_ordinary_project_deploys(tmp_path: Path) -> None:
    _ordinary_project(tmp_path)
    write(tmp_path / "CLAUDE.md", USER_TEXT)
    result = init(str(tmp_path))
    assert result.exit_code == ExitCode.OK, result.output
    assert (tmp_path / "CLAUDE.md").read_bytes() == USER_TEXT + b"\n" + SECTION + b"\n"


@pytest.mark.parametrize("make, reason", MARKERS.values(), ids=MARKERS.keys())
def test_framework_tree_claude_md_is_left_alone(tmp_path: Path, make, reason: str) -> None:
    if not (tmp_path / "CLAUDE.md").exists():
        write(tmp_path / "CLAUDE.md", USER_TEXT)
    make(tmp_path)
    original = (tmp_path / "CLAUDE.md").read_bytes()
    result = init(str(tmp_path))
    assert result.exit_code == ExitCode.PROTECTED, result.output
    assert (tmp_path / "CLAUDE.md").read_bytes() == original
    assert backups(tmp_path) == []
    assert f"  - {reason}" in result.stdout
    assert f"pmrun init --force {tmp_path}" in result.stdout
    assert "left alone" in result.stdout


def test_framework_tree_without_claude_md_gets_none(tmp_path: Path) -> None:
    MARKERS["claude_pm package"][0](tmp_path)
    assert init(str(tmp_path)).exit_code == ExitCode.PROTECTED
    assert not (tmp_path / "CLAUDE.md").exists()
    assert (tmp_path / "pmrun.toml").exists()  # the settings file is not the developers' own


def test_force_backs_up_first(tmp_path: Path) -> None:
    original = b"# Dev rules\n\nFRAMEWORK DEVELOPERS ONLY\n"
    write(tmp_path / "CLAUDE.md", original)
    result = init("--force", str(tmp_path))
    assert result.exit_code == ExitCode.OK, result.output
    [backup] = backups(tmp_path)
    assert re.fullmatch(r"CLAUDE\.md\.pmrun-backup-\d{8}-\d{6}", backup.name)
    assert backup.read_bytes() == original
    assert (tmp_path / "CLAUDE.md").read_bytes() == original + b"\n" + SECTION + b"\n"
    assert f"backed up         {tmp_path / 'CLAUDE.md'} to {backup.name}" in result.stdout
    # Forced again with nothing to change: no second backup, no change.
    assert init("--force", str(tmp_path)).exit_code == ExitCode.OK
    assert backups(tmp_path) == [backup]
    # And without --force the tree is still protected.
    assert init(str(tmp_path)).exit_code == ExitCode.PROTECTED


def test_existing_config_is_kept_unless_forced(tmp_path: Path) -> None:
    mine = b'[agent]\nmax-rss = "3G"\n'
    write(tmp_path / "pmrun.toml", mine)
    result = init(str(tmp_path))
    assert result.exit_code == 0
    assert (tmp_path / "pmrun.toml").read_bytes() == mine
    assert "kept              " in result.stdout and "--force" in result.stdout
    result = init("--force", str(tmp_path))
    assert result.exit_code == 0
    [backup] = backups(tmp_path)
    assert backup.name.startswith("pmrun.toml.pmrun-backup-")
    assert backup.read_bytes() == mine
    assert (tmp_path / "pmrun.toml").read_text() == render_config_toml()


def test_tool_pmrun_in_pyproject_is_not_shadowed(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml", '[project]\nname = "app"\n[tool.pmrun.agent]\nmax-rss = "3G"\n'
    )
    for args in ([str(tmp_path)], ["--force", str(tmp_path)]):
        result = init(*args)
        assert result.exit_code == 0
        assert not (tmp_path / "pmrun.toml").exists()
        assert "[tool.pmrun]" in result.stdout


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "CLAUDE.md", USER_TEXT)
    result = init("--dry-run", str(tmp_path))
    assert result.exit_code == 0
    assert snapshot(tmp_path) == {"CLAUDE.md": USER_TEXT}
    assert "would create      " in result.stdout and "would update      " in result.stdout
    MARKERS["CLAUDE.md declaration"][0](tmp_path)
    result = init("--dry-run", str(tmp_path))
    assert result.exit_code == ExitCode.PROTECTED
    assert "would leave alone" in result.stdout
    result = init("--dry-run", "--force", str(tmp_path))
    assert result.exit_code == 0 and "would back up" in result.stdout
    assert backups(tmp_path) == [] and not (tmp_path / "pmrun.toml").exists()


def test_malformed_files_warn_and_deploy(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[project\n")
    write(tmp_path / "package.json", "{")
    result = init(str(tmp_path))
    assert result.exit_code == ExitCode.OK
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"pmrun: warning: {tmp_path / 'pyproject.toml'}: not valid TOML")
    assert warnings[1].startswith(f"pmrun: warning: {tmp_path / 'package.json'}: not valid JSON")
    assert (tmp_path / "CLAUDE.md").read_bytes() == SECTION + b"\n"


def test_broken_markers_fail_and_change_nothing(tmp_path: Path) -> None:
    write(tmp_path / "CLAUDE.md", f"mine\n{SECTION_BEGIN}\nhalf\n")
    result = init(str(tmp_path))
    assert result.exit_code == ExitCode.FAILURE
    assert result.stderr.count("\n") == 1 and "markers are broken" in result.stderr
    assert snapshot(tmp_path) == {"CLAUDE.md": f"mine\n{SECTION_BEGIN}\nhalf\n".encode()}


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_directory_is_a_usage_error(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "nope"
    if kind == "file":
        write(target, "")
    result = init(str(target))
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    assert result.stderr.startswith(f"pmrun: error: {target}: ")
    assert result.stderr.count("\n") == 1


def test_unwritable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    write(tmp_path / "CLAUDE.md", USER_TEXT)
    monkeypatch.setattr(os, "replace", refuse)
    result = init(str(tmp_path))
    assert result.exit_code == ExitCode.FAILURE
    assert (
        result.stderr == f"pmrun: error: cannot write {tmp_path / 'CLAUDE.md'}: Permission denied\n"
    )
    assert (tmp_path / "CLAUDE.md").read_bytes() == USER_TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLAUDE.md", "pmrun.toml"]  # no temp left


def test_plan_reports_parent_config(tmp_path: Path) -> None:
    write(tmp_path / "pmrun.toml", "")
    (tmp_path / "sub").mkdir()
    plan = plan_init(tmp_path / "sub")
    assert plan.notes == (
        f"{tmp_path / 'sub' / 'pmrun.toml'} will take precedence over {tmp_path / 'pmrun.toml'} "
        "for this directory",
    )


# ---------------------------------------------------------------------------------------
# The real executable


def test_real_cli_fresh_then_idempotent(tmp_path: Path, run_pmrun) -> None:
    write(tmp_path / "CLAUDE.md", USER_TEXT)
    first = run_pmrun("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    after = snapshot(tmp_path)
    assert after["CLAUDE.md"] == USER_TEXT + b"\n" + SECTION + b"\n"
    second = run_pmrun("init", ".", cwd=tmp_path)
    assert second.returncode == 0 and second.stderr == ""
    assert snapshot(tmp_path) == after


def test_real_cli_protected_tree(tmp_path: Path, run_pmrun) -> None:
    original = b"FRAMEWORK DEVELOPERS ONLY\r\nno newline"
    write(tmp_path / "CLAUDE.md", original)
    MARKERS["package.json scoped name"][0](tmp_path)
    proc = run_pmrun("init", str(tmp_path))
    assert proc.returncode == ExitCode.PROTECTED
    assert (tmp_path / "CLAUDE.md").read_bytes() == original
    assert "package.json: name is '@bobmatnyc/claude-multiagent-pm'" in proc.stdout
    assert "--force" in proc.stdout


def test_real_cli_errors_are_one_line(tmp_path: Path, run_pmrun) -> None:
    proc = run_pmrun("init", str(tmp_path / "missing"))
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr == f"pmrun: error: {tmp_path / 'missing'}: no such directory\n"
    if os.geteuid() == 0:
        unwritable = Path("/sys")  # sysfs refuses new files even to root
    else:
        unwritable = tmp_path / "ro"
        unwritable.mkdir(mode=0o555)
    proc = run_pmrun("init", str(unwritable))
    assert proc.returncode == ExitCode.FAILURE
    assert (
        proc.stderr
        == f"pmrun: error: cannot write {unwritable / 'pmrun.toml'}: Permission denied\n"
    )
