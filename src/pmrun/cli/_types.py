"""Click parameter types and options shared by the subcommands."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import click

from ..config import Setting


class Seconds(click.ParamType):
    """A finite number of seconds within ``[min_s, max_s]``: NaN, infinities and 1e300 would
    reach ``time.sleep`` or a socket timeout and fail there with a traceback."""

    name = "seconds"

    def __init__(self, min_s: float, max_s: float = 86400.0) -> None:
        self.min_s = min_s
        self.max_s = max_s

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            f = value
        else:
            try:
                f = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(f) or not self.min_s <= f <= self.max_s:
            self.fail(
                f"{value!r}: expected seconds from {self.min_s:g} to {self.max_s:g}", param, ctx
            )
        return f


def setting_option(setting: Setting, *, expose_value: bool = True) -> click.Option:
    """The click option of a config setting: flag, metavar, help and default from the table.

    Its value reaches the command raw (None when not given) and is parsed by
    :func:`pmrun.config.load` with every other source, so a bad value is reported as
    ``--KEY: ...`` like a bad value in a file or the environment. A switch's value is True
    when given: :attr:`Setting.flag_value` says what that means.
    """
    name = _param_name(setting)
    if setting.flag_value is not None:
        return click.Option(
            [setting.flag, name],
            is_flag=True,
            default=None,
            expose_value=expose_value,
            help=setting.option_help(),
        )
    kind = setting.kind
    choices: click.ParamType | None = None
    if kind.choices:  # a fixed set of words: completion offers them
        choices = click.Choice(kind.choices)
    elif kind.metavar in ("FILE", "PATH"):
        choices = click.Path()
    return click.Option(
        [setting.flag, name],
        metavar=kind.metavar,
        type=choices,
        expose_value=expose_value,
        help=setting.option_help(),
    )


def setting_flags(settings: Iterable[Setting], options: Mapping[str, Any]) -> dict[str, Any]:
    """What a command's keyword arguments give for ``settings``, as ``config.load`` takes flags."""
    flags: dict[str, Any] = {}
    for s in settings:
        given = options.get(_param_name(s))
        if given is not None:
            flags[s.name] = given if s.flag_value is None else s.flag_value
    return flags


def _param_name(setting: Setting) -> str:
    return setting.key.replace("-", "_")
