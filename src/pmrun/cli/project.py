"""``pmrun init`` and ``pmrun config``: a project's settings file, its CLAUDE.md, its effective settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import config as config_mod
from ..errors import ExitCode, UsageError
from ._group import one_line_errors


def _warn(message: str) -> None:
    click.echo(f"pmrun: warning: {message}", err=True)


# ---------------------------------------------------------------------------------------
# pmrun init

_VERBS = {  # outcome -> (done, --dry-run)
    "create": ("created", "would create"),
    "update": ("updated", "would update"),
    "unchanged": ("unchanged", "unchanged"),
    "kept": ("kept", "would keep"),
    "skipped": ("not written", "would not write"),
    "protected": ("left alone", "would leave alone"),
}


_INIT_EXAMPLES = """\b
Examples:
  pmrun init                                     # this directory
  pmrun init --dry-run ~/src/myproject"""

_CONFIG_EXAMPLES = """\b
Examples:
  pmrun config
  pmrun config --set agent.max-rss=2G
  PMRUN_MAX_RSS=2G pmrun config --json"""


@click.command("init", epilog=_INIT_EXAMPLES)
@click.argument("directory", required=False, default=".", type=click.Path(path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Deploy CLAUDE.md even in a framework source tree, and overwrite an existing "
    "pmrun.toml; a timestamped backup of each changed file is saved first.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done; write nothing.")
@one_line_errors
def init_command(directory: Path, force: bool, dry_run: bool) -> None:
    """Set up DIRECTORY (default: here) for agents run under pmrun.

    Writes pmrun.toml (pmrun's defaults, commented out) unless one exists, and puts the
    instructions for agents in CLAUDE.md between <!-- pmrun:begin --> and
    <!-- pmrun:end -->, keeping the rest of the file byte for byte. Running it again
    changes nothing. In the framework's own source tree CLAUDE.md is left alone.

    Exit status: 0 done (or nothing to do), 1 a file could not be read or written,
    2 bad arguments (e.g. no such directory), 3 framework source tree: CLAUDE.md left alone.
    """
    from ..init import apply_plan, plan_init

    plan = plan_init(directory, force=force)
    for problem in plan.detection.problems:
        _warn(f"{problem}; not used to detect a framework source tree")
    if not dry_run:
        apply_plan(plan)
    for action in plan.actions:
        if action.backup is not None:
            verb = "would back up" if dry_run else "backed up"
            click.echo(f"{verb:<17} {action.path} to {action.backup.name}")
        verb = _VERBS[action.outcome][1 if dry_run else 0]
        click.echo(f"{verb:<17} {action.path}: {action.detail}")
    if plan.protected:
        click.echo(f"{directory} is a framework source tree; found:")
        for reason in plan.detection.reasons:
            click.echo(f"  - {reason}")
        click.echo(
            "Its CLAUDE.md is its developers' own. To add the pmrun section anyway: "
            f"pmrun init --force {directory} (a timestamped backup is saved first)."
        )
    for note in plan.notes:
        click.echo(f"note: {note}")
    click.get_current_context().exit(ExitCode.PROTECTED if plan.protected else ExitCode.OK)


# ---------------------------------------------------------------------------------------
# pmrun config


def display_value(setting: config_mod.Setting, value: Any) -> str:
    """A setting's value for people, as its kind shows it (1G, 80%, 5s, off); ``""`` for empty."""
    return setting.display(value) or '""'


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name.strip() not in config_mod.BY_NAME:
            known = ", ".join(config_mod.BY_NAME)
            raise UsageError(f"--set {pair!r}: expected SETTING=VALUE with a SETTING of {known}")
        flags[name.strip()] = raw
    return flags


@click.command("config", epilog=_CONFIG_EXAMPLES)
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SETTING=VALUE",
    help="Resolve as if this were given as a command-line flag (e.g. agent.max-rss=2G).",
)
@one_line_errors
def config_command(as_json: bool, sets: tuple[str, ...]) -> None:
    """Print every setting's effective value and where it came from.

    Sources, highest first: flag, env PMRUN_*, project (pmrun.toml or [tool.pmrun] in
    pyproject.toml, nearest the current directory), user ($XDG_CONFIG_HOME/pmrun/config.toml),
    default. A bad value anywhere is an error (exit status 2).
    """
    cfg = config_mod.load(_parse_sets(sets))
    user_path = config_mod.user_config_path()
    if as_json:
        settings = {
            s.name: {
                "value": cfg[s.name],
                "display": display_value(s, cfg[s.name]),
                "source": cfg.source(s.name),
                "env": s.env,
                "help": s.help,
            }
            for s in config_mod.SETTINGS
        }
        doc = {"files": [str(p) for p in cfg.files], "user_file": str(user_path)}
        click.echo(json.dumps({**doc, "settings": settings}, indent=2))
        return
    project = next((p for p in cfg.files if p != user_path), None)
    user_state = "" if user_path.is_file() else " (none)"
    click.echo(f"project file: {project or '(none)'}")
    click.echo(f"user file:    {user_path}{user_state}")
    click.echo("")
    rows = [("SETTING", "VALUE", "SOURCE")]
    rows += [
        (s.name, display_value(s, cfg[s.name]), cfg.source(s.name)) for s in config_mod.SETTINGS
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for name, value, source in rows:
        click.echo(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip())
