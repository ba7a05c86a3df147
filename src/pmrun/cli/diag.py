"""``pmrun status``, ``top``, ``events``, ``heap`` and ``plot``: a thin shell over pmrun.diagnostics.

Exit status of each: 0 done (``status`` also when no coordinator runs: it says so),
1 failed (no coordinator where one is needed, no such agent or process, a file that
cannot be written), 2 bad arguments or input (a bad time, a file that is not a recording).
Errors are one line on stderr: ``pmrun: error: ...``.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import click

from ..errors import CoordinatorUnavailable, PmrunError, UsageError
from ._group import one_line_errors
from ._types import Seconds

SOCKET_HELP = "The coordinator's socket (default: $PMRUN_SOCKET, the config, else $XDG_RUNTIME_DIR/pmrun/coordinator.sock)."
socket_option = click.option("--socket", "socket_path", metavar="PATH", help=SOCKET_HELP)


def _resolve_socket(value: str | None) -> tuple[str, Any]:
    """The socket path as the coordinator resolves it (flag > env > config > default), and the config."""
    from .. import config as config_mod
    from ..coordinator.paths import resolve_socket_path

    cfg = config_mod.load({"coordinator.socket": value} if value else {})
    return resolve_socket_path(cfg["coordinator.socket"]), cfg


def _print(renderable: Any) -> None:
    """Print a rich renderable; piped, as plain text, unwrapped, without trailing padding."""
    from rich.console import Console

    console = Console()
    if console.is_terminal:
        console.print(renderable)
        return
    console = Console(width=max(console.width, 160))  # a wrapped line is harder to grep
    with console.capture() as captured:
        console.print(renderable)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _dump(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


# ---------------------------------------------------------------------------------------
# pmrun status


_STATUS_EXAMPLES = """\b
Examples:
  pmrun status
  pmrun status --socket /tmp/fleet.sock
  pmrun status --json > status.json"""

_TOP_EXAMPLES = """\b
Examples:
  pmrun top
  pmrun top -d 0.5                               # refresh twice a second
  pmrun top -n 1 > snapshot.txt"""

_EVENTS_EXAMPLES = """\b
Examples:
  pmrun events -n 20                             # the last 20 events
  pmrun events --kind evict --kind stop --since 10m
  pmrun events -f --agent planner                # follow one agent until Ctrl-C"""

_HEAP_EXAMPLES = """\b
Examples:
  pmrun heap planner                             # an agent named in `pmrun status`
  pmrun --trace-heap --name planner -- python agent.py   # adds allocation sites
  pmrun heap --pid 1234                          # any process tree, no coordinator"""

_PLOT_EXAMPLES = """\b
Examples:
  pmrun --record run.jsonl -- node agent.js
  pmrun plot run.jsonl                           # writes run.png
  pmrun plot run.jsonl -o run.svg"""


@click.command("status", epilog=_STATUS_EXAMPLES)
@socket_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the same as JSON ("coordinator": null when none runs).',
)
@one_line_errors
def status_command(socket_path: str | None, as_json: bool) -> None:
    """One screen of this host's memory: system memory and its threshold, PSI, the
    pool, the pressure level, and every agent (tree RSS, peak, limits, age, state) with
    the services in it (bytes held, last eviction).

    Without a coordinator it shows what it can measure itself and says so.

    Exit status: 0 (also without a coordinator), 1 the coordinator refused, failed or
    cannot be reached (permission denied, hung), or the socket path is not a socket.
    """
    from ..diagnostics import status

    path, _cfg = _resolve_socket(socket_path)
    doc = status.gather(path)
    if as_json:
        _dump(doc)
        return
    _print(status.render(doc))


# ---------------------------------------------------------------------------------------
# pmrun top


@click.command("top", epilog=_TOP_EXAMPLES)
@socket_option
@click.option(
    "--interval",
    "-d",
    "interval_s",
    type=Seconds(0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between refreshes.",
)
@click.option(
    "--iterations",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Stop after N refreshes (default: until q or Ctrl-C).",
)
@one_line_errors
def top_command(socket_path: str | None, interval_s: float, iterations: int | None) -> None:
    """The status screen, agents sorted by RSS, refreshed live until q or Ctrl-C.

    Exit status: 0 (q, Ctrl-C, SIGTERM or the last of --iterations).
    """
    from ..diagnostics import status
    from ..diagnostics.top import run_top

    path, _cfg = _resolve_socket(socket_path)
    code = run_top(lambda: status.gather(path), interval_s=interval_s, iterations=iterations)
    click.get_current_context().exit(code)


# ---------------------------------------------------------------------------------------
# pmrun events


@click.command("events", epilog=_EVENTS_EXAMPLES)
@socket_option
@click.option(
    "--events",
    "events_path",
    metavar="PATH",
    help="The event log (default: the running coordinator's, else events.jsonl next to the socket).",
)
@click.option("--agent", metavar="NAME|ID", help="Only events about this agent.")
@click.option(
    "--since",
    metavar="TIME",
    help="Only events since TIME: a duration ago (30s, 10m, 2h, 1d) or an ISO time.",
)
@click.option("--until", metavar="TIME", help="Only events until TIME (same forms as --since).")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only this kind (repeatable); a prefix before the dot matches all its kinds: evict, stop, agent, launcher, pressure.",
)
@click.option(
    "--level",
    type=click.Choice(["info", "warning", "critical", "error"]),
    help="Only events at this level or above.",
)
@click.option(
    "--lines",
    "-n",
    "last",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Only the last N matching events (before following).",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing events as they are written, until Ctrl-C."
)
@click.option("--json", "as_json", is_flag=True, help="Print each event as its raw JSON line.")
@one_line_errors
def events_command(
    socket_path: str | None,
    events_path: str | None,
    agent: str | None,
    since: str | None,
    until: str | None,
    kinds: tuple[str, ...],
    level: str | None,
    last: int | None,
    follow: bool,
    as_json: bool,
) -> None:
    """The coordinator's event log: pressure changes, warnings, evictions, stops, kills,
    cleanups, agents and services coming and going. Times are local.

    Exit status: 0 (also when nothing matches; Ctrl-C ends --follow), 1 no event log,
    2 a time that cannot be read.
    """
    import time

    from ..coordinator.paths import default_events_path
    from ..diagnostics import events as view

    path, cfg = _resolve_socket(socket_path)
    log_path = (
        events_path
        or _running_events_path(path)
        or cfg["coordinator.events"]
        or default_events_path(path)
    )
    now = time.time()
    since_ts = view.parse_time(since, now) if since else None
    until_ts = view.parse_time(until, now) if until else None
    if not follow and not os.path.exists(log_path):
        raise PmrunError(
            f"no event log at {log_path}: no coordinator has run with this socket yet "
            "(or give its log with --events PATH)"
        )
    if os.path.isdir(log_path):
        raise UsageError(f"{log_path} is a directory: give the event log file with --events")
    try:
        _show_events(log_path, since_ts, until_ts, kinds, agent, level, last, follow, as_json)
    except OSError as e:
        if e.errno == errno.EPIPE:  # the reader of our output went away: click's to handle
            raise
        raise PmrunError(f"cannot read the event log {log_path}: {e.strerror or e}") from None


def _show_events(
    log_path: str,
    since_ts: float | None,
    until_ts: float | None,
    kinds: tuple[str, ...],
    agent: str | None,
    level: str | None,
    last: int | None,
    follow: bool,
    as_json: bool,
) -> None:
    from .. import events as event_log
    from ..diagnostics import events as view

    def show(e: dict[str, Any]) -> None:
        click.echo(json.dumps(e, separators=(",", ":")) if as_json else view.format_event(e))

    offset = view.end_offset(log_path)
    for e in event_log.read_events(
        log_path,
        since=since_ts,
        until=until_ts,
        kinds=kinds or None,
        agent=agent,
        min_level=level,
        limit=last,
    ):
        show(e)
    if not follow:
        return
    keep = view.event_filter(
        since=since_ts, until=until_ts, kinds=list(kinds), agent=agent, min_level=level
    )
    try:
        for e in view.follow(log_path, keep, offset=offset):
            show(e)  # click.echo flushes: a reader sees each event at once
    except KeyboardInterrupt:
        pass


def _running_events_path(socket_path: str) -> str | None:
    """The log a running coordinator writes (it may have been given --events), if one runs."""
    from ..diagnostics._query import coordinator_status

    try:
        status = coordinator_status(socket_path)
    except PmrunError:
        return None
    events = ((status or {}).get("coordinator") or {}).get("events")
    return events if isinstance(events, str) and events else None


# ---------------------------------------------------------------------------------------
# pmrun heap


@click.command("heap", epilog=_HEAP_EXAMPLES)
@click.argument("agent", required=False)
@click.option(
    "--pid",
    type=click.IntRange(min=1),
    metavar="PID",
    help="Break down the tree of this process instead (no coordinator needed).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 200),
    default=15,
    show_default=True,
    help="Object types and allocation sites per service.",
)
@socket_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the answers and the breakdown as JSON."
)
@one_line_errors
def heap_command(
    agent: str | None, pid: int | None, limit: int, socket_path: str | None, as_json: bool
) -> None:
    """What holds AGENT's memory (a name or id from `pmrun status`).

    Python services in the agent (registered through pmrun.client) report their
    biggest object types and, under `pmrun --trace-heap`, their biggest allocation
    sites. Every agent also gets a per-process breakdown: RSS, PSS (shared pages split
    among their sharers), USS (what only that process holds) and swap.

    Exit status: 0, 1 no coordinator, no such agent or process, 2 bad arguments.
    """
    from ..diagnostics import heap

    if agent is None and pid is None:
        raise UsageError("name an AGENT (see `pmrun status`) or a process tree with --pid PID")
    if agent is not None and pid is not None:
        raise UsageError("give an AGENT or --pid PID, not both")
    if pid is not None:
        b = heap.tree_breakdown(pid)
        if not b.processes and not b.unreadable:
            raise PmrunError(f"no process {pid}")
        if as_json:
            _dump({"pid": pid, "breakdown": b.to_dict()})
        else:
            _print_breakdown(f"process tree of {pid}", b)
        return

    assert agent is not None  # for mypy: checked above
    from ..diagnostics._query import coordinator_status, heap_answers

    path, _cfg = _resolve_socket(socket_path)
    status = coordinator_status(path)
    if status is None:
        raise CoordinatorUnavailable(
            f"no coordinator running on {path}, so no agents to name; "
            "break down any process tree with --pid PID"
        )
    agents = [a for a in status.get("agents") or [] if agent in (a.get("id"), a.get("name"))]
    loose = [s for s in status.get("services") or [] if s.get("agent") == agent]
    if not agents and not loose:
        names = (
            ", ".join(sorted({str(a.get("name")) for a in status.get("agents") or []})) or "none"
        )
        raise PmrunError(f"no agent {agent!r} is registered (agents: {names})")
    has_services = bool(loose) or any(a.get("services") for a in agents)
    answers = heap_answers(path, agent, limit) if has_services else []
    breakdowns = [(a, heap.breakdown(heap.agent_pids(int(a["pid"])))) for a in agents]
    if as_json:
        _dump(
            {
                "agent": agent,
                "services": answers,
                "agents": [
                    {
                        "id": a.get("id"),
                        "name": a.get("name"),
                        "pid": a.get("pid"),
                        "breakdown": b.to_dict(),
                    }
                    for a, b in breakdowns
                ],
            }
        )
        return
    for answer in answers:
        for line in heap.answer_lines(answer):
            click.echo(line)
        click.echo("")
    if not has_services:
        click.echo(f"{agent}: no Python services registered (pmrun.client); per-process breakdown:")
    for a, b in breakdowns:
        _print_breakdown(f"agent {a.get('name')} ({a.get('id')}, launcher pid {a.get('pid')})", b)


def _print_breakdown(title: str, b: Any) -> None:
    from ..diagnostics import heap

    click.echo(title)
    for line in heap.table_lines(heap.breakdown_table(b)):
        click.echo(line)
    if b.unreadable:
        click.echo(
            f"not readable (another user's, or ptrace-protected): {', '.join(map(str, b.unreadable))}"
        )


# ---------------------------------------------------------------------------------------
# pmrun plot


@click.command("plot", epilog=_PLOT_EXAMPLES)
@click.argument("recording", metavar="FILE")
@click.option(
    "--output",
    "-o",
    metavar="OUT",
    help="The image to write; its extension picks the format (default: FILE with .png).",
)
@one_line_errors
def plot_command(recording: str, output: str | None) -> None:
    """Draw a recording made with `pmrun --record FILE -- cmd`: RSS over time per
    process and for the whole tree, the warn and max limits, and where the warning,
    evictions, the stop and the kill happened.

    Exit status: 0, 1 the image cannot be written or the recording has no samples,
    2 FILE is missing or not a recording.
    """
    from ..diagnostics.plot import load_recording, plot_recording

    rec = load_recording(recording)
    out = output or os.path.splitext(recording)[0] + ".png"
    summary = plot_recording(rec, out)
    click.echo(
        f"wrote {out}: {summary.samples} samples, {len(rec.per_process)} processes, "
        f"{len(summary.markers)} markers; {summary.title.splitlines()[-1]}"
    )
