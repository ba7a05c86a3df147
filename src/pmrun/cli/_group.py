"""The click group behind every subcommand but the launcher's fast path."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import PmrunError
from . import COMMANDS

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

    Usage errors (a bad option, a value out of range) are one line on stderr, exit 2,
    instead of click's usage block."""

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
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                return None  # not built yet on this checkout
            raise
        cmd = getattr(mod, attr)
        assert isinstance(cmd, click.Command)
        return cmd


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Launch an agent: pmrun [OPTIONS] -- COMMAND [ARGS]... (see `pmrun run --help`).",
)
@click.version_option(package_name="pmrun", prog_name="pmrun")
def cli() -> None:
    """Keep fleets of AI coding agents from running a machine out of memory."""
