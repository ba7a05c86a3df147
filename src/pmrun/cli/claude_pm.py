"""``pmrun claude-pm``: run claude-multiagent-pm under pmrun without touching its code."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from typing import Any

import click

from ..errors import PmrunError
from ._group import one_line_errors

_PROBE = (
    "import importlib.util, json, sysconfig; print(json.dumps({"
    "'site': sysconfig.get_paths()['purelib'], "
    "'pmrun': importlib.util.find_spec('pmrun') is not None, "
    "'claude_pm': importlib.util.find_spec('claude_pm') is not None}))"
)


class _RunByDefault(click.Group):
    """``pmrun claude-pm -- ARGS`` is ``pmrun claude-pm run -- ARGS``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


_CLAUDE_PM_EXAMPLES = """\b
Examples:
  pmrun claude-pm -- --version
  pmrun claude-pm install-hook --python ~/.venvs/claude-pm/bin/python
  PMRUN_CLAUDE_PM=1 claude-pm
  pmrun claude-pm remove-hook"""


@click.group(
    "claude-pm",
    cls=_RunByDefault,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_CLAUDE_PM_EXAMPLES,
)
def claude_pm_command() -> None:
    """Run claude-multiagent-pm 1.4.7 under pmrun: its prompt cache is pmrun's, every agent
    it spawns runs through pmrun (named after its type), its cleanup handlers answer the
    coordinator.

    \b
    pmrun claude-pm -- ARGS       the framework's claude-pm command with ARGS, under pmrun
    pmrun claude-pm install-hook  then PMRUN_CLAUDE_PM=1 switches it on in any program
    """


@claude_pm_command.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_command(args: tuple[str, ...]) -> None:
    """Run the framework's ``claude-pm`` command with ARGS, with pmrun installed.

    Limits come from pmrun's settings (PMRUN_MAX_RSS, pmrun.toml [agent], ...). Exit
    status: the framework's; 127 if it is not installed for this Python.
    """
    env = {**os.environ, "PMRUN_CLAUDE_PM": "1"}
    argv = [sys.executable, "-m", "pmrun.integrations.claude_pm", *args]
    os.execve(sys.executable, argv, env)


def _probe(python: str | None) -> dict[str, Any]:
    import importlib.util
    import json

    if python is None:
        return {
            "site": sysconfig.get_paths()["purelib"],
            "pmrun": True,
            "claude_pm": importlib.util.find_spec("claude_pm") is not None,
        }
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        found: dict[str, Any] = json.loads(out)
        return found
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise PmrunError(f"{python}: not a Python interpreter that answers ({e})") from None


_PYTHON = click.option(
    "--python",
    metavar="PATH",
    help="The framework's interpreter (its venv's bin/python) [default: this pmrun's].",
)


@claude_pm_command.command("install-hook")
@_PYTHON
@one_line_errors
def install_hook_command(python: str | None) -> None:
    """Write a .pth hook into the framework's site-packages: from then on, a program of that
    venv started with PMRUN_CLAUDE_PM=1 runs the framework under pmrun. Without the
    variable the hook does nothing. Exit status: 0 done, 1 pmrun is not installed there."""
    from ..integrations import claude_pm

    found = _probe(python)
    shown = python or sys.executable
    if not found["pmrun"]:
        raise PmrunError(f"pmrun is not installed for {shown}: install it there first")
    path = claude_pm.install_hook(found["site"])
    click.echo(f"wrote {path}")
    if not found["claude_pm"]:
        click.echo(f"note: claude-multiagent-pm is not installed for {shown} (yet)", err=True)
    click.echo(f"switch it on with: export {claude_pm.ENV}=1")


@claude_pm_command.command("remove-hook")
@_PYTHON
@one_line_errors
def remove_hook_command(python: str | None) -> None:
    """Remove the .pth hook from the framework's site-packages (0 also if it was not there)."""
    from ..integrations import claude_pm

    removed = claude_pm.remove_hook(_probe(python)["site"])
    click.echo(f"removed {removed}" if removed else "no hook installed: nothing to do")


__all__ = ["claude_pm_command"]
