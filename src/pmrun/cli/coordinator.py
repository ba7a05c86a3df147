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
from ._types import Seconds

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _config(flags: dict[str, Any]) -> config_mod.Config:
    return config_mod.load({f"coordinator.{k}": v for k, v in flags.items()})


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


@click.command("coordinator", epilog=_COORDINATOR_EXAMPLES)
@click.option(
    "--socket",
    "socket_",
    metavar="PATH",
    help="Unix socket to serve [env PMRUN_SOCKET; default "
    "$XDG_RUNTIME_DIR/pmrun/coordinator.sock].",
)
@click.option(
    "--pool",
    metavar="SIZE",
    help="Limit on the sum of all agents' memory, e.g. 2G [env PMRUN_POOL; default 2G].",
)
@click.option(
    "--system-threshold",
    metavar="FRACTION",
    help="Act when this much of system (or container) memory is used, e.g. 80% [default 80%].",
)
@click.option(
    "--psi-threshold",
    metavar="FRACTION",
    help="Act when /proc/pressure/memory 'some avg10' passes this; 'off' ignores PSI "
    "[default 10%].",
)
@click.option(
    "--evict-fraction",
    metavar="FRACTION",
    help="Fraction services are asked to drop at the critical level (a third of it "
    "at the warning level) [default 0.75].",
)
@click.option(
    "--victim-policy",
    type=click.Choice(["largest", "newest", "priority"]),
    help="Order in which agents are stopped within a priority [default largest].",
)
@click.option(
    "--events",
    metavar="PATH",
    help="Event log, JSON lines [default: events.jsonl next to the socket].",
)
@click.option(
    "--dry-run", is_flag=True, default=None, help="Log what would be stopped; stop nothing."
)
@click.option(
    "--cooldown",
    metavar="SECONDS",
    help="After stopping agents, wait this long before stopping more (unless a "
    "limit is crossed by 10%) [default 5].",
)
@click.option(
    "--settle",
    metavar="SECONDS",
    help="How long an eviction broadcast waits for the services' answers [default 0.5].",
)
@click.option(
    "--metrics-port",
    metavar="PORT",
    help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics [default: off].",
)
@click.option(
    "--no-pause",
    "no_pause",
    is_flag=True,
    default=None,
    help="Stop agents at once under pressure instead of pausing growing ones first.",
)
@click.option(
    "--max-pause",
    metavar="SECONDS",
    help="How long a paused agent may wait for memory before it may be stopped [default 120].",
)
@click.option(
    "--idle-exit",
    metavar="SECONDS|off",
    help="Exit after this long with no agent registered [default: off; 600 when started "
    "on demand].",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    default="info",
    show_default=True,
    help="Verbosity of the log on stderr.",
)
@one_line_errors
def coordinator_command(
    socket_: str | None,
    pool: str | None,
    system_threshold: str | None,
    psi_threshold: str | None,
    evict_fraction: str | None,
    victim_policy: str | None,
    events: str | None,
    dry_run: bool | None,
    cooldown: str | None,
    settle: str | None,
    metrics_port: str | None,
    no_pause: bool | None,
    max_pause: str | None,
    idle_exit: str | None,
    log_level: str,
) -> None:
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
    cfg = _config(
        {
            "socket": socket_,
            "pool": pool,
            "system-threshold": system_threshold,
            "psi-threshold": psi_threshold,
            "evict-fraction": evict_fraction,
            "victim-policy": victim_policy,
            "events": events,
            "dry-run": dry_run,
            "cooldown": cooldown,
            "settle": settle,
            "metrics-port": metrics_port,
            "pause": False if no_pause else None,
            "max-pause": max_pause,
            "idle-exit": idle_exit,
        }
    )
    settings = CoordinatorSettings.from_config(cfg)
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


@click.command("cleanup", epilog=_CLEANUP_EXAMPLES)
@click.option(
    "--socket", "socket_", metavar="PATH", help="The coordinator's socket [env PMRUN_SOCKET]."
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
    socket_: str | None, agent: str | None, fraction: str | None, as_json: bool, timeout: float
) -> None:
    """Ask every registered service to free memory now (emergency cleanup).

    Prints what each service freed: the bytes it accounted and the drop of its process's
    RSS. Stops no agent. Exit status: 0 done, 1 no coordinator answers or no such agent,
    2 bad arguments.
    """
    from ..coordinator import query
    from ..sizes import parse_fraction

    cfg = _config({"socket": socket_})
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
