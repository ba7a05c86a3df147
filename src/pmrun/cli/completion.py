"""``pmrun completion bash|zsh|fish``: print click's shell completion script for pmrun."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command(
    "completion",
    epilog="""\b
Examples:
  eval "$(pmrun completion bash)"        # in ~/.bashrc
  eval "$(pmrun completion zsh)"         # in ~/.zshrc, after compinit
  pmrun completion fish > ~/.config/fish/completions/pmrun.fish""",
)
@click.argument("shell", type=click.Choice(SHELLS))
def completion_command(shell: str) -> None:
    """Print the completion script for SHELL: subcommands, their options, launch options.

    The same as `_PMRUN_COMPLETE=SHELL_source pmrun` (click's own mechanism).
    """
    from click.shell_completion import get_completion_class

    from ._group import cli

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None  # every name in SHELLS is one of click's
    click.echo(comp_cls(cli, {}, "pmrun", "_PMRUN_COMPLETE").source(), nl=False)
