"""``pmrun shim install|remove|list|env``: run programs started by name under pmrun."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ._group import one_line_errors

_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the shim directory (default: $PMRUN_SHIM_DIR or $XDG_DATA_HOME/pmrun/shims)",
)


_SHIM_EXAMPLES = """\b
Examples:
  pmrun shim install claude --max-rss 2G
  pmrun shim list
  pmrun shim env --shell bash
  pmrun shim remove claude"""


@click.group(
    "shim", context_settings={"help_option_names": ["-h", "--help"]}, epilog=_SHIM_EXAMPLES
)
def shim_command() -> None:
    """Run programs started by name (claude, node, ...) under pmrun, like pyenv's shims.

    \b
    pmrun shim install claude --max-rss 2G
    eval "$(pmrun shim env)"        # in ~/.bashrc, ~/.zshrc; fish: pmrun shim env | source
    claude ...                      # now runs as: pmrun --name claude --max-rss 2G -- claude ...

    Limits: the launcher options given at install, then `[shim.NAME]` tables in pmrun.toml or
    the user config (`[shim.claude]` `max-rss = "3G"`), which win.
    """


@shim_command.command(
    "install", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@_DIR
@click.argument("name")
@click.argument("launcher_options", nargs=-1, type=click.UNPROCESSED)
@one_line_errors
def install_command(name: str, launcher_options: tuple[str, ...], directory: Path | None) -> None:
    """Write the shim for NAME; LAUNCHER_OPTIONS (--max-rss 2G, ...) are stored in it."""
    from .. import shim

    path = shim.install(name, list(launcher_options), directory)
    real = shim.find_real(name)
    click.echo(f"installed {path}" + ("" if real else f" ({name} is not on PATH yet)"))
    d = str(path.parent)
    if d not in os.environ.get("PATH", "").split(os.pathsep):
        click.echo('not on PATH yet: eval "$(pmrun shim env)"', err=True)


@shim_command.command("remove")
@_DIR
@click.argument("names", nargs=-1, required=True)
@one_line_errors
def remove_command(names: tuple[str, ...], directory: Path | None) -> None:
    """Remove the shims for NAMES (only files pmrun wrote)."""
    from .. import shim

    for name in names:
        click.echo(f"removed {shim.remove(name, directory)}")


@shim_command.command("list")
@_DIR
@one_line_errors
def list_command(directory: Path | None) -> None:
    """Each shim, the options stored in it and the program it runs now."""
    from .. import shim

    shims = shim.list_shims(directory)
    if not shims:
        click.echo(f"no shims in {directory or shim.shim_dir()}")
        return
    for s in shims:
        flags = " ".join(s.flags) or "-"
        click.echo(f"{s.name}\t{flags}\t{s.target or '(not found further down PATH)'}")


@shim_command.command("env")
@_DIR
@click.option(
    "--shell",
    type=click.Choice(["bash", "zsh", "fish", "sh"]),
    default=None,
    help="output for this shell (default: from $SHELL)",
)
@one_line_errors
def env_command(shell: str | None, directory: Path | None) -> None:
    """Print the line that puts the shim directory first on PATH: eval "$(pmrun shim env)"."""
    from .. import shim

    if shell is None:
        base = os.path.basename(os.environ.get("SHELL", "sh"))
        shell = base if base in ("bash", "zsh", "fish") else "sh"
    click.echo(shim.env_script(shell, directory), nl=False)
