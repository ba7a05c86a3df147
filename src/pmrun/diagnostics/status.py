"""One screen of the host: memory, PSI, the pool, pressure, agents and their services.

:func:`gather` returns the ``pmrun status --json`` document. With a coordinator it is the
coordinator's own status (``Coordinator.status()``: ``coordinator``, ``system``, ``pool``,
``pressure``, ``agents`` with their ``services``, loose ``services``) plus ``socket`` and
``ts``; without one, the same keys, with ``"coordinator": null``, what this process can
measure itself in ``system``, and no pool, pressure, agents or services.

:func:`render` turns that document into rich renderables; ``pmrun top`` shows the same,
sorted by RSS, every refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import _procfs
from ..sizes import format_size

Status = dict[str, Any]

LEVEL_STYLE = {"normal": "green", "warning": "yellow", "critical": "bold red", "manual": "cyan"}


# -- gathering ---------------------------------------------------------------------------


def local_system(proc: str = _procfs.PROC) -> dict[str, Any]:
    """System memory and PSI measured here, in the coordinator's ``system`` shape (no threshold)."""
    from ..cgroups import system_memory

    mem = system_memory(proc)
    psi = _procfs.memory_pressure(proc)
    return {
        "total_bytes": mem.total_bytes,
        "used_bytes": mem.used_bytes,
        "source": mem.source,
        "threshold": None,
        "threshold_bytes": None,
        "psi": None
        if psi is None
        else {
            "some_avg10": psi["some"].avg10 if "some" in psi else None,
            "full_avg10": psi["full"].avg10 if "full" in psi else None,
        },
        "psi_threshold": None,
    }


def gather(
    socket_path: str,
    *,
    query: Callable[[str], Status | None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Status:
    """The status document (module docstring); ``query`` asks the coordinator (None: none runs)."""
    if query is None:
        from ._query import coordinator_status

        query = coordinator_status
    status = query(socket_path)
    if status is None:
        return {
            "ts": clock(),
            "socket": socket_path,
            "coordinator": None,
            "system": local_system(),
            "pool": None,
            "pressure": None,
            "agents": [],
            "services": [],
        }
    return {"ts": clock(), "socket": socket_path, **status}


def no_coordinator_line(socket_path: str) -> str:
    return (
        f"no coordinator running on {socket_path} (agents register with it; "
        "start one with `pmrun coordinator` or run any agent)"
    )


# -- formatting --------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h03m``, ``3d04h``: two units at most, like ``ps`` and ``top``."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _size(n: Any) -> str:
    return format_size(n) if isinstance(n, int | float) and not isinstance(n, bool) else "-"


def _percent(part: Any, whole: Any) -> str:
    if not isinstance(part, int | float) or not isinstance(whole, int | float) or whole <= 0:
        return ""
    return f" ({part / whole:.0%})"


def eviction_text(last: dict[str, Any] | None, now: float) -> str:
    """A service's last eviction: ``"freed 4.0M 1m05s ago"`` (or its error)."""
    if not last:
        return "never evicted"
    ago = f" {format_age(now - last['ts'])} ago" if isinstance(last.get("ts"), int | float) else ""
    if last.get("error"):
        return f"eviction failed{ago}: {last['error']}"
    freed = last.get("bytes")
    return f"freed {_size(freed)}{ago}" if freed is not None else f"evicted{ago}"


def summary_lines(status: Status) -> list[tuple[str, str]]:
    """(label, text) lines above the table: system, PSI, pool, pressure."""
    lines: list[tuple[str, str]] = []
    sysm = status.get("system") or {}
    total, used = sysm.get("total_bytes"), sysm.get("used_bytes")
    text = f"{_size(used)} used of {_size(total)}{_percent(used, total)}"
    if sysm.get("threshold") is not None:
        text += f", threshold {sysm['threshold']:.0%} = {_size(sysm.get('threshold_bytes'))}"
    source = sysm.get("source")
    if source and source != "meminfo":
        text += f"  [{source}]"
    lines.append(("memory", text))
    psi = sysm.get("psi")
    if psi is None:
        lines.append(("PSI", "not available (kernel without CONFIG_PSI, or psi=0)"))
    else:
        some, full = psi.get("some_avg10"), psi.get("full_avg10")
        text = f"some {some if some is not None else '-'}%, full {full if full is not None else '-'}% (avg10)"
        if sysm.get("psi_threshold") is not None:
            text += f", threshold {sysm['psi_threshold']:.0%}"
        lines.append(("PSI", text))
    pool = status.get("pool")
    if pool is not None:
        limit = pool.get("limit_bytes")
        used = pool.get("used_bytes")
        if limit:
            text = f"{_size(used)} of {_size(limit)}{_percent(used, limit)}"
        else:
            text = f"{_size(used)} (no pool limit)"
        lines.append(("pool", f"{text}, counted by {str(pool.get('counted', 'rss')).upper()}"))
    pressure = status.get("pressure")
    if pressure is not None:
        level = str(pressure.get("level", "?"))
        signals = {k: v for k, v in (pressure.get("signals") or {}).items() if v != "normal"}
        extra = ", ".join(f"{k} {v}" for k, v in signals.items())
        lines.append(("pressure", level + (f" ({extra})" if extra else "")))
    return lines


AGENT_COLUMNS = ("NAME", "PID", "MEMORY", "PEAK", "WARN", "MAX", "AGE", "BACKEND", "STATE")


def agent_rows(status: Status, *, sort_by_rss: bool = False) -> list[tuple[str, list[str]]]:
    """Table rows, each ``(kind, cells)``: an ``agent`` row, then its ``service`` rows.

    Services whose agent is not registered come last, under ``(no agent)``.
    """
    now = float(status.get("ts") or time.time())
    agents = list(status.get("agents") or [])
    if sort_by_rss:
        agents.sort(key=lambda a: a.get("rss_bytes") or 0, reverse=True)
    rows: list[tuple[str, list[str]]] = []
    for a in agents:
        state = str(a.get("state", "?"))
        if a.get("paused_s") is not None and state == "paused":
            state = f"paused {format_age(a['paused_s'])}"
        if a.get("stop_reason"):
            state += f" ({a['stop_reason']})"
        rows.append(
            (
                "agent",
                [
                    str(a.get("name", "?")),
                    str(a.get("pid", "?")),
                    _size(a.get("rss_bytes")),
                    _size(_peak(a)),
                    _size(a.get("warn_bytes")),
                    _size(a.get("max_bytes")),
                    format_age(a.get("age_s")),
                    backend_cell(a.get("backend") or {}),
                    state,
                ],
            )
        )
        rows.extend(_service_rows(a.get("services") or [], now))
    for wt in status.get("waiting") or []:  # launchers waiting before start
        state = f"waiting {format_age(wt.get('waiting_s'))}, {wt.get('ahead', 0)} ahead"
        rows.append(
            ("agent", [str(wt.get("name", "?")), str(wt.get("pid", "?")),
                       f"({_size(wt.get('expect_bytes'))})", "", "", "", "", "", state])
        )  # fmt: skip
    loose = status.get("services") or []
    if loose:
        rows.append(("agent", ["(no agent)", "", "", "", "", "", "", "", ""]))
        rows.extend(_service_rows(loose, now))
    return rows


def backend_cell(backend: dict[str, Any]) -> str:
    """The BACKEND column: a v2 group's memory PSI (some avg10, read here: status runs on
    the agents' host); for sampling, whether a cgroup was refused (the reason is in --json)."""
    name = str(backend.get("name", "?"))
    if name == "cgroup-v2" and isinstance(backend.get("group"), str):
        from ..cgroups import group_pressure

        psi = group_pressure(backend["group"])
        if psi and "some" in psi:
            return f"{name} psi {psi['some']:.1f}%"
    if name == "sampling" and str(backend.get("reason", "")).startswith("no cgroup"):
        return "sampling (no cgroup)"
    return name


def _peak(agent: dict[str, Any]) -> Any:
    """The peak, never below the current figure (a launcher may not report its peak)."""
    peak, rss = agent.get("peak_bytes"), agent.get("rss_bytes")
    if isinstance(peak, int) and isinstance(rss, int):
        return max(peak, rss)
    return peak if peak is not None else rss


def _service_rows(services: list[dict[str, Any]], now: float) -> list[tuple[str, list[str]]]:
    rows = []
    for s in services:
        held = s.get("bytes")
        rows.append(
            (
                "service",
                [
                    f"  └ {s.get('name', '?')}",
                    str(s.get("pid", "")),
                    f"{_size(held)} held" if held is not None else "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    eviction_text(s.get("last_eviction"), now),
                ],
            )
        )
    return rows


def header_line(status: Status) -> str:
    c = status.get("coordinator")
    if c is None:
        return no_coordinator_line(str(status.get("socket")))
    extra = " (dry run: stops nothing)" if c.get("dry_run") else ""
    return (
        f"coordinator pid {c.get('pid')} on {c.get('socket', status.get('socket'))}, "
        f"up {format_age(c.get('uptime_s'))}{extra}"
    )


def render(status: Status, *, sort_by_rss: bool = False) -> Any:
    """A rich renderable of the whole screen (``pmrun status``, and each frame of ``top``)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text(header_line(status), style="bold" if status.get("coordinator") else "yellow")
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    for label, text in summary_lines(status):
        style = ""
        if label == "pressure":
            style = LEVEL_STYLE.get(text.split(" ", 1)[0], "")
        summary.add_row(label, Text(text, style=style))
    parts: list[Any] = [head, summary]
    if status.get("coordinator") is not None:
        rows = agent_rows(status, sort_by_rss=sort_by_rss)
        if rows:
            table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1))
            for i, name in enumerate(AGENT_COLUMNS):
                table.add_column(name, justify="right" if 1 <= i <= 5 else "left", no_wrap=i < 7)
            for kind, cells in rows:
                table.add_row(*cells, style="dim" if kind == "service" else None)
            parts += [Text(""), table]
        else:
            parts += [Text(""), Text("no agents registered")]
    return Group(*parts)
