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


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs or is listed."""

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
