"""The click group behind every subcommand but the launcher's fast path."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import PmrunError
from . import COMMANDS
from .run_help import EXIT_STATUS, LAUNCH_SYNOPSIS, launch_params

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn a :class:`PmrunError` raised by a command into one stderr line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PmrunError as e:
            click.echo(f"pmrun: error: {e}", err=True)
            click.get_current_context().exit(int(e.exit_code))

    return wrapper  # type: ignore[return-value]


# The launcher's options sit on the group only for `pmrun --help` and completion of
# `pmrun --<TAB>`: main() sends every launch to the fast parser, never through click.
_LAUNCH_PARAMS = launch_params()
_LAUNCH_NAMES = {p.name for p in _LAUNCH_PARAMS}


class OneLineUsageError(click.ClickException):
    """A click usage error shown as pmrun shows every error: one line, and where to look."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message())
        self.command_path = error.ctx.command_path if error.ctx is not None else "pmrun"

    def show(self, file: Any = None) -> None:
        click.echo(f"pmrun: error: {self.message} (see {self.command_path} --help)", err=True)


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs or is listed.

    Its help shows both forms of pmrun: the launcher (synopsis and options) and the
    subcommands. Usage errors (a bad option, a value out of range) are one line on
    stderr, exit 2, instead of click's usage block.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise OneLineUsageError(e) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, LAUNCH_SYNOPSIS)
        formatter.write_usage(ctx.command_path, "SUBCOMMAND [ARGS]...", prefix="  or:  ")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        launch: list[tuple[str, str]] = []
        own: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                (launch if param.name in _LAUNCH_NAMES else own).append(record)
        with formatter.section("Launch options (before COMMAND; also in `pmrun run --help`)"):
            formatter.write_dl(launch)
        with formatter.section("Options"):
            formatter.write_dl(own)
        with formatter.section("Subcommands (each has --help)"):
            rows = []
            for name in self.list_commands(ctx):
                cmd = self.get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(formatter.width - 6 - 12)))
            formatter.write_dl(rows)


EPILOG = f"""{EXIT_STATUS}

\b
Examples:
  pmrun --max-rss 1G -- node agent.js     # one agent; a coordinator starts on demand
  pmrun status                            # every agent, its memory and the pool
  pmrun events -n 20                      # what the coordinator did lately
  eval "$(pmrun completion bash)"         # shell completion (also zsh, fish)"""


@click.group(
    cls=LazyGroup,
    params=_LAUNCH_PARAMS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EPILOG,
)
@click.version_option(None, "-V", "--version", package_name="pmrun", prog_name="pmrun")
def cli() -> None:
    """Keep fleets of AI coding agents from running a machine out of memory.

    The first form runs COMMAND (and every process it starts) under memory limits, as
    one agent of this host's fleet; the second runs a subcommand.
    """
