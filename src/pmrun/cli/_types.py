"""Click parameter types shared by the subcommands."""

from __future__ import annotations

import math
from typing import Any

import click


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
