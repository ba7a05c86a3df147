"""``pmrun init``: write a project's ``pmrun.toml`` and the agents' section of its CLAUDE.md.

Three concerns, kept apart so most of it is pure:

- :func:`detect_framework_source` decides whether a directory is the source tree of the
  multi-agent framework itself (or of pmrun), whose CLAUDE.md belongs to its developers
  and must not be touched. Only specific markers count, never generic folders.
- :func:`render_config_toml` and :func:`update_claude_md` compute file contents from
  the settings registry and the section template; they do no I/O.
- :func:`plan_init` reads the directory and decides what to write; :func:`apply_plan`
  writes it (backups first, atomic replacement).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .config import SETTINGS, find_project_config
from .errors import PmrunError, UsageError

CONFIG_NAME = "pmrun.toml"
CLAUDE_MD = "CLAUDE.md"

# The framework's names: its PyPI/npm package and repository, and pmrun's own, whose
# CLAUDE.md is just as much its developers' own.
FRAMEWORK_PROJECT_NAMES = ("claude-multiagent-pm", "pmrun")  # pyproject names, normalized
FRAMEWORK_NPM_NAMES = ("claude-multiagent-pm", "@bobmatnyc/claude-multiagent-pm")
FRAMEWORK_REPO_NAME = "claude-multiagent-pm"
FRAMEWORK_PACKAGE = "claude_pm"
# How the framework developers' CLAUDE.md declares itself. Case matters: the lowercase
# phrase turns up in ordinary prose.
CLAUDE_MD_DECLARATIONS = (b"FRAMEWORK DEVELOPERS ONLY",)

SECTION_BEGIN = "<!-- pmrun:begin -->"
SECTION_END = "<!-- pmrun:end -->"
# A marker counts only alone on its line (trailing blanks and a CR allowed), so prose
# that quotes it does not.
_BEGIN_RE = re.compile(rb"^" + re.escape(SECTION_BEGIN.encode()) + rb"(?=[ \t]*\r?$)", re.M)
_END_RE = re.compile(rb"^" + re.escape(SECTION_END.encode()) + rb"(?=[ \t]*\r?$)", re.M)


# ---------------------------------------------------------------------------------------
# Framework source detection


@dataclass(frozen=True)
class Detection:
    """Whether a directory is a framework source tree, and why."""

    is_framework: bool
    reasons: tuple[str, ...]  # each marker found, e.g. "claude_pm/__init__.py: ..."
    problems: tuple[str, ...]  # files that could not be parsed; never markers themselves


@dataclass(frozen=True)
class _Parsed:
    """A parsed project file: its data, or why it could not be read (or neither: absent)."""

    data: dict[str, Any] | None = None
    problem: str | None = None


def _read_pyproject(directory: Path) -> _Parsed:
    import tomllib

    path = directory / "pyproject.toml"
    try:
        with open(path, "rb") as f:
            return _Parsed(tomllib.load(f))
    except FileNotFoundError:
        return _Parsed()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return _Parsed(problem=f"{path}: not valid TOML ({e})")
    except OSError as e:
        return _Parsed(problem=f"{path}: cannot read ({e.strerror})")


def _read_package_json(directory: Path) -> _Parsed:
    path = directory / "package.json"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return _Parsed()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _Parsed(problem=f"{path}: not valid JSON ({e})")
    except OSError as e:
        return _Parsed(problem=f"{path}: cannot read ({e.strerror})")
    if not isinstance(data, dict):
        return _Parsed(problem=f"{path}: not a JSON object")
    return _Parsed(data)


def _normalize(name: str) -> str:
    """A Python project name as PEP 503 compares them (``Claude_MultiAgent.PM`` = ``claude-multiagent-pm``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_reasons(data: Mapping[str, Any]) -> list[str]:
    reasons = []
    project = data.get("project")
    poetry = data.get("tool", {}).get("poetry") if isinstance(data.get("tool"), dict) else None
    for table, label in ((project, "[project]"), (poetry, "[tool.poetry]")):
        name = table.get("name") if isinstance(table, dict) else None
        if isinstance(name, str) and _normalize(name) in FRAMEWORK_PROJECT_NAMES:
            reasons.append(f"pyproject.toml: {label} name is {name!r}")
    return reasons


def _repo_name(url: str) -> str:
    """The repository name in any npm ``repository`` form: URL, ``git@host:o/r.git``, ``github:o/r``."""
    tail = re.split(r"[/:]", url.strip().rstrip("/"))[-1]
    return tail.removesuffix(".git").lower()


def _package_json_reasons(data: Mapping[str, Any]) -> list[str]:
    reasons = []
    name = data.get("name")
    if isinstance(name, str) and name in FRAMEWORK_NPM_NAMES:
        reasons.append(f"package.json: name is {name!r}")
    bin_ = data.get("bin")
    if isinstance(bin_, dict):
        reasons += [f"package.json: bin {k!r}" for k in bin_ if k in FRAMEWORK_NPM_NAMES]
    repo = data.get("repository")
    url = repo.get("url") if isinstance(repo, dict) else repo
    if isinstance(url, str) and _repo_name(url) == FRAMEWORK_REPO_NAME:
        reasons.append(f"package.json: repository is {url!r}")
    return reasons


def _claude_md_reasons(directory: Path) -> tuple[list[str], list[str]]:
    path = directory / CLAUDE_MD
    try:
        text = _outside_section(path.read_bytes())
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"{path}: cannot read ({e.strerror})"]
    found = [d.decode() for d in CLAUDE_MD_DECLARATIONS if d in text]
    return [f"{CLAUDE_MD}: says {d!r}" for d in found], []


def _detect(directory: Path, pyproject: _Parsed, package_json: _Parsed) -> Detection:
    reasons: list[str] = []
    problems = [p.problem for p in (pyproject, package_json) if p.problem]
    if pyproject.data is not None:
        reasons += _pyproject_reasons(pyproject.data)
    for package in (directory / FRAMEWORK_PACKAGE, directory / "src" / FRAMEWORK_PACKAGE):
        if (package / "__init__.py").is_file():
            rel = package.relative_to(directory)
            reasons.append(f"{rel}/__init__.py: the framework's Python package")
    if package_json.data is not None:
        reasons += _package_json_reasons(package_json.data)
    claude_reasons, claude_problems = _claude_md_reasons(directory)
    reasons += claude_reasons
    problems += claude_problems
    return Detection(bool(reasons), tuple(reasons), tuple(problems))


def detect_framework_source(directory: Path) -> Detection:
    """Tell whether ``directory`` is the framework's (or pmrun's) own source tree.

    Markers: a pyproject.toml naming the project ``claude-multiagent-pm`` or ``pmrun``; a
    ``claude_pm`` package (``claude_pm/`` or ``src/claude_pm/`` with ``__init__.py``); a
    package.json whose name, a ``bin`` command or ``repository`` names the framework; a
    CLAUDE.md declaring itself the framework developers' own. Generic folders (``tests/``,
    ``scripts/``, ``.github/``) are not markers. Unparsable files go to ``problems``.
    """
    return _detect(directory, _read_pyproject(directory), _read_package_json(directory))


# ---------------------------------------------------------------------------------------
# File contents (pure)


def toml_value(value: Any) -> str:
    """``value`` written as TOML: ``"1G"``, ``5.0``, ``true``, ``500``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are all valid in a TOML basic string
    raise TypeError(f"no TOML form for {value!r}")


def render_config_toml() -> str:
    """The ``pmrun.toml`` that ``pmrun init`` writes, generated from the settings registry.

    Every setting is present with its default, commented out: the file documents the
    defaults without pinning them, so a user-level config still applies and a future
    default still reaches the project. Uncommenting a line makes it the project's value.
    """
    lines = [
        "# pmrun settings for this project, written by `pmrun init`.",
        "#",
        "# Each line below is commented out and shows pmrun's default: uncomment one to set it",
        "# for this project. Precedence: command-line flags > PMRUN_* environment variables >",
        "# this file (or [tool.pmrun] in pyproject.toml) > ~/.config/pmrun/config.toml > defaults.",
        "# `pmrun config` prints the effective value of every setting and where it came from.",
        "# Sizes take binary units (500M, 1G, 1.5GiB); fractions take 80% or 0.8.",
    ]
    section = None
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            lines += ["", f"[{section}]"]
        lines.append(f"# {s.help} (env {s.env})")
        lines.append(f"# {s.key} = {toml_value(s.default)}")
    return "\n".join(lines) + "\n"


def section_template() -> str:
    """The pmrun section of CLAUDE.md, markers included, without a final newline."""
    text = (resources.files("pmrun") / "templates" / "CLAUDE.section.md").read_text("utf-8")
    body = text.strip("\n")
    if not (body.startswith(SECTION_BEGIN) and body.endswith(SECTION_END)):
        raise AssertionError("templates/CLAUDE.section.md must start and end with the markers")
    return body


def _find_section(data: bytes) -> tuple[int, int] | None:
    """The byte span of the pmrun section, from its begin marker to the end of its end marker."""
    begins = list(_BEGIN_RE.finditer(data))
    ends = list(_END_RE.finditer(data))
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0].start() < begins[0].end():
        raise PmrunError(
            f"{CLAUDE_MD}: the pmrun section markers are broken (found {len(begins)} "
            f"{SECTION_BEGIN} and {len(ends)} {SECTION_END}; expected one of each, in that "
            "order): fix them or delete the section, then run pmrun init again"
        )
    return begins[0].start(), ends[0].end()


def _outside_section(data: bytes) -> bytes:
    """``data`` without the pmrun section, whose wording must never count as a marker."""
    try:
        span = _find_section(data)
    except PmrunError:
        return data
    return data if span is None else data[: span[0]] + data[span[1] :]


def update_claude_md(existing: bytes | None, section: str) -> bytes:
    """Return CLAUDE.md with ``section`` in place; every byte outside the section is kept.

    A file without a section gets it appended after a blank line; one that has it gets
    the text between the markers replaced. The section takes the file's line endings
    (CRLF if the file uses them). Raises :class:`PmrunError` on broken markers.
    """
    if existing is None or existing == b"":
        return section.encode() + b"\n"
    span = _find_section(existing)
    # An existing section keeps its own line endings, so that a later change of style
    # around it cannot make two runs disagree; a new one follows the file's.
    sample = existing if span is None else existing[span[0] : span[1]]
    newline = b"\r\n" if b"\r\n" in sample else b"\n"
    body = section.encode().replace(b"\n", newline)
    if span is not None:
        return existing[: span[0]] + body + existing[span[1] :]
    separator = newline if existing.endswith(b"\n") else newline * 2
    return existing + separator + body + newline


# ---------------------------------------------------------------------------------------
# Planning and applying


Outcome = Literal["create", "update", "unchanged", "kept", "skipped", "protected"]


@dataclass(frozen=True)
class FileAction:
    """What ``pmrun init`` does to one file."""

    path: Path
    outcome: Outcome
    detail: str  # why, for people
    content: bytes | None = None  # the new content, for "create" and "update"
    backup: Path | None = None  # where the old content is copied first (--force only)

    @property
    def writes(self) -> bool:
        return self.outcome in ("create", "update")


@dataclass(frozen=True)
class InitPlan:
    """Everything ``pmrun init DIR`` would do, decided before anything is written."""

    directory: Path
    detection: Detection
    actions: tuple[FileAction, ...]
    notes: tuple[str, ...]  # things worth knowing that change nothing

    @property
    def protected(self) -> bool:
        """True when CLAUDE.md is left alone because this is a framework source tree."""
        return any(a.outcome == "protected" for a in self.actions)


def backup_path(path: Path, now: datetime) -> Path:
    """A free name beside ``path`` for its timestamped backup: ``CLAUDE.md.pmrun-backup-20250101-120000``."""
    stem = f"{path.name}.pmrun-backup-{now:%Y%m%d-%H%M%S}"
    candidate, n = path.with_name(stem), 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{stem}-{n}")
    return candidate


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PmrunError(f"cannot read {path}: {e.strerror}") from None


def _plan_config(directory: Path, pyproject: _Parsed, force: bool, now: datetime) -> FileAction:
    path = directory / CONFIG_NAME
    content = render_config_toml().encode()
    existing = _read_optional(path)
    if existing == content:
        return FileAction(path, "unchanged", "already holds pmrun's defaults")
    if existing is not None and not force:
        return FileAction(path, "kept", "it already exists (--force overwrites it, after a backup)")
    if existing is None:
        tool = (pyproject.data or {}).get("tool")
        if isinstance(tool, dict) and isinstance(tool.get("pmrun"), dict):
            # A pmrun.toml would be found first and hide every setting in [tool.pmrun].
            return FileAction(
                path,
                "skipped",
                "pyproject.toml configures pmrun in [tool.pmrun], which it would hide",
            )
        return FileAction(path, "create", "pmrun's defaults, commented out", content)
    return FileAction(path, "update", "replaced with pmrun's defaults (--force)", content,
                      backup_path(path, now))  # fmt: skip


def _plan_claude_md(
    directory: Path, detection: Detection, force: bool, now: datetime
) -> FileAction:
    path = directory / CLAUDE_MD
    if detection.is_framework and not force:
        return FileAction(path, "protected", "not touched in a framework source tree")
    existing = _read_optional(path)
    content = update_claude_md(existing, section_template())
    if existing is None:
        return FileAction(path, "create", "with the pmrun section for agents", content)
    if content == existing:
        return FileAction(path, "unchanged", "the pmrun section is up to date")
    how = "replaced" if _find_section(existing) is not None else "appended"
    backup = backup_path(path, now) if force else None
    return FileAction(path, "update", f"pmrun section {how}; the rest of the file is unchanged",
                      content, backup)  # fmt: skip


def plan_init(directory: Path, *, force: bool = False, now: datetime | None = None) -> InitPlan:
    """Decide what ``pmrun init`` does in ``directory`` without writing anything.

    ``force`` overrides the framework-source protection and overwrites an existing
    pmrun.toml; either way the file's old content is backed up first.
    """
    if not directory.exists():
        raise UsageError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    now = now or datetime.now()
    pyproject = _read_pyproject(directory)
    detection = _detect(directory, pyproject, _read_package_json(directory))
    actions = (
        _plan_config(directory, pyproject, force, now),
        _plan_claude_md(directory, detection, force, now),
    )
    notes = []
    if actions[0].writes:
        with contextlib.suppress(PmrunError):  # a broken parent config is not init's business
            parent = find_project_config(directory.resolve().parent)
            if parent is not None:
                notes.append(
                    f"{actions[0].path} will take precedence over {parent[0]} for this directory"
                )
    return InitPlan(directory, detection, actions, tuple(notes))


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace (or create) ``path`` with ``data`` so readers see the old or the new file, never half."""
    target = path.resolve() if path.is_symlink() else path  # write through a symlink, keep it
    try:
        mode: int | None = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    if mode is None:
        with open(target, "xb") as f:  # a new file: the umask applies as usual
            f.write(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def apply_plan(plan: InitPlan) -> None:
    """Write what ``plan`` decided: each backup before its file is replaced."""
    for action in plan.actions:
        if not action.writes:
            continue
        assert action.content is not None
        if action.backup is not None:
            try:
                shutil.copy2(action.path, action.backup)
            except OSError as e:
                raise PmrunError(
                    f"cannot back up {action.path} to {action.backup}: {e.strerror or e}"
                ) from None
        try:
            _write_atomic(action.path, action.content)
        except OSError as e:  # named after the file, not the temporary one beside it
            raise PmrunError(f"cannot write {action.path}: {e.strerror or e}") from None
