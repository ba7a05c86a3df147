"""``pmrun coordinator`` (the daemon, in the foreground) and ``pmrun cleanup``."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from .. import config as config_mod
from ..sizes import format_size
from ._group import one_line_errors
from ._types import Seconds, setting_flags, setting_option

_LOG_LEVELS = ("debug", "info", "warning", "error")


_COORDINATOR_EXAMPLES = """\b
Examples:
  pmrun coordinator --pool 8G                    # in a terminal of its own; Ctrl-C stops it
  pmrun coordinator --socket /tmp/fleet.sock --pool 600M &
  PMRUN_SOCKET=/tmp/fleet.sock pmrun -- node agent.js"""

_CLEANUP_EXAMPLES = """\b
Examples:
  pmrun cleanup                                  # every service drops its --evict-fraction
  pmrun cleanup --agent planner --fraction 50%
  pmrun cleanup --json"""


# Every coordinator setting is a flag of `pmrun coordinator`.
_SETTINGS = tuple(s for s in config_mod.SETTINGS if s.section == "coordinator")


def _coordinator_params() -> list[click.Parameter]:
    """One option per coordinator setting, and the log's verbosity."""
    params: list[click.Parameter] = [setting_option(s) for s in _SETTINGS]
    params.append(
        click.Option(
            ["--log-level"],
            type=click.Choice(_LOG_LEVELS),
            default="info",
            show_default=True,
            help="Verbosity of the log on stderr.",
        )
    )
    return params


@click.command("coordinator", epilog=_COORDINATOR_EXAMPLES, params=_coordinator_params())
@one_line_errors
def coordinator_command(log_level: str, **options: Any) -> None:
    """Run the coordinator in the foreground (logs on stderr; stop with Ctrl-C or SIGTERM).

    Keeps the sum of all pmrun agents under --pool and system memory under
    --system-threshold: first services are asked to free memory, then, if still over,
    the fewest agents needed are stopped. `pmrun -- CMD` starts one on demand, so
    running it by hand is only needed to choose its settings or watch its log.
    Exits 0 at once if a coordinator already serves the socket.
    """
    from ..coordinator.server import CoordinatorSettings, run

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s pmrun coordinator[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    settings = CoordinatorSettings.from_config(config_mod.load(setting_flags(_SETTINGS, options)))
    sys.exit(run(settings))


def _cleanup_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["SERVICE", "PID", "AGENT", "FREED", "RSS DROP", "TIME"]]
    for r in results:
        row = [str(r.get("service", "?")), str(r.get("pid", "")), str(r.get("agent") or "-")]
        if r.get("error"):
            rows.append([*row, str(r["error"]), "", ""])
            continue
        seconds = r.get("seconds")
        rows.append(
            [
                *row,
                format_size(r["bytes"]) if isinstance(r.get("bytes"), int) else "?",
                format_size(r["rss_drop"]) if isinstance(r.get("rss_drop"), int) else "?",
                f"{seconds * 1000:.0f} ms" if isinstance(seconds, int | float) else "",
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


@click.command(
    "cleanup",
    epilog=_CLEANUP_EXAMPLES,
    params=[setting_option(config_mod.BY_NAME["coordinator.socket"])],
)
@click.option("--agent", metavar="NAME", help="Only the services of this agent (name or id).")
@click.option(
    "--fraction",
    metavar="FRACTION",
    help="What to ask services to drop, e.g. 50% [default: the coordinator's --evict-fraction].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--timeout",
    type=Seconds(0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the coordinator.",
)
@one_line_errors
def cleanup_command(
    socket: str | None, agent: str | None, fraction: str | None, as_json: bool, timeout: float
) -> None:
    """Ask every registered service to free memory now (emergency cleanup).

    Prints what each service freed: the bytes it accounted and the drop of its process's
    RSS. Stops no agent. Exit status: 0 done, 1 no coordinator answers or no such agent,
    2 bad arguments.
    """
    from ..coordinator import query
    from ..sizes import parse_fraction

    cfg = config_mod.load({"coordinator.socket": socket})
    f = parse_fraction(fraction) if fraction is not None else None
    result = query.cleanup(cfg["coordinator.socket"] or None, agent=agent, fraction=f,
                           timeout_s=timeout)  # fmt: skip
    if as_json:
        click.echo(
            json.dumps(
                {
                    "fraction": result.fraction,
                    "elapsed_s": result.elapsed_s,
                    "results": result.results,
                },
                indent=2,
            )
        )
        return
    if not result.results:
        scope = f" in agent {agent}" if agent else ""
        click.echo(
            f"no services registered{scope}: nothing to ask (fraction {result.fraction:.0%})"
        )
        return
    click.echo(format_table(_cleanup_rows(result.results)))
    freed = sum(r.get("bytes") or 0 for r in result.results if not r.get("error"))
    drop = sum(r.get("rss_drop") or 0 for r in result.results if not r.get("error"))
    silent = sum(1 for r in result.results if r.get("error"))
    tail = f", {silent} failed or did not answer" if silent else ""
    click.echo(
        f"asked {len(result.results)} services for {result.fraction:.0%}: freed {format_size(freed)} "
        f"accounted, RSS fell by {format_size(drop)} in {result.elapsed_s * 1000:.0f} ms{tail}"
    )
