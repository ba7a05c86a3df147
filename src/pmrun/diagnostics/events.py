"""``pmrun events``: the coordinator's event log, filtered, followed and put in words.

Reading and filtering are :mod:`pmrun.events`'s; this module parses the user's time
filters (``10m``, an ISO time), follows a growing log (also across truncation and
replacement), and formats one event as one line for people.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from ..errors import UsageError
from ..sizes import format_size

Event = dict[str, Any]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

FOLLOW_INTERVAL_S = 0.25  # how often --follow looks for new lines: fast enough to read along


def parse_time(text: str, now: float) -> float:
    """``"10m"`` (ago: s, m, h, d; a bare number is seconds) or an ISO time, as Unix time.

    An ISO time without a zone is local time, as ``date`` prints it.
    """
    m = _DURATION.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[(m.group(2) or "").lower()]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}: expected a duration ago (30s, 10m, 2h, 1d) or an ISO time "
            "(2024-05-01T14:30, 2024-05-01 14:30:00+02:00)"
        ) from None
    try:
        return when.timestamp()  # naive = local time
    except (ValueError, OverflowError, OSError):  # year 1 in a zone east of UTC, ...
        raise UsageError(
            f"invalid time {text!r}: out of the range this system can represent"
        ) from None


def event_filter(
    *,
    since: float | None = None,
    until: float | None = None,
    kinds: list[str] | None = None,
    agent: str | None = None,
    min_level: str | None = None,
) -> Callable[[Event], bool]:
    """A predicate with :func:`pmrun.events.read_events`'s filter semantics, for ``--follow``."""
    # TODO(events): pmrun.events exposes its filter only privately; ask for a public
    # ``matches(event, ...)`` and use it here.
    from ..events import matches

    kind_set = set(kinds) if kinds else None
    return lambda e: matches(e, since, until, kind_set, agent, min_level)


def follow(
    path: str,
    keep: Callable[[Event], bool],
    *,
    offset: int,
    interval_s: float = FOLLOW_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """Events appended to ``path`` from byte ``offset`` on, forever (like ``tail -F``).

    The file is held open, so a log replaced by another file (rotation) is noticed even
    when the new file gets the old inode number; it is then read from its start, as is a
    truncated log. A partial last line waits for its end. A missing log is waited for.
    """
    from ..events import parse_lines

    f: IO[bytes] | None = None
    pending = b""
    try:
        while True:
            if f is None:
                f = _open(path)
                if f is not None and offset <= os.fstat(f.fileno()).st_size:
                    f.seek(offset)
                offset = 0  # a file opened later is a new one: read it whole
            data = f.read() if f is not None else b""
            if data:
                *lines, pending = (pending + data).split(b"\n")
                for e in parse_lines(lines):
                    if keep(e):
                        yield e
                continue
            if f is not None and _replaced(path, f):
                f.close()
                f, pending = None, b""
                continue
            if f is not None and os.fstat(f.fileno()).st_size < f.tell():
                f.seek(0)  # truncated
                pending = b""
                continue
            sleep(interval_s)
    finally:
        if f is not None:
            f.close()


def _open(path: str) -> IO[bytes] | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _replaced(path: str, f: IO[bytes]) -> bool:
    """Whether ``path`` now names another file than the open ``f`` (or none)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    own = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)


def end_offset(path: str) -> int:
    """Where a follower starts after the lines read so far: the end of the last whole line."""
    from ..events import read_new

    return read_new(path, 0)[1]


# -- for people ---------------------------------------------------------------------------

_LEVEL_WIDTH = 8
_SKIP = {"ts", "level", "kind", "agent", "name"}


def _value(key: str, v: Any) -> str:
    if (
        isinstance(v, int)
        and not isinstance(v, bool)
        and (key.endswith("bytes") or key in ("rss", "bytes", "peak", "max_rss", "warn_rss"))
    ):
        return format_size(v)
    if isinstance(v, float):
        return f"{v:.3g}"
    text = str(v).replace("\n", "\\n")  # one event, one line
    return text if len(text) <= 60 else text[:59] + "…"


def _who(e: Event) -> str:
    name, agent = e.get("name"), e.get("agent")
    return str(name or agent or e.get("service") or "-")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def summary(e: Event) -> str:
    """What happened, in a few words, for the kinds worth reading at a glance."""
    kind = str(e.get("kind", ""))
    if kind == "pressure":
        ratios = e.get("ratios") or {}
        figures = ", ".join(f"{k} {v:.0%}" for k, v in ratios.items() if isinstance(v, int | float))
        text = f"{e.get('previous', '?')} -> {e.get('pressure', '?')}"
        return f"{text} ({figures})" if figures else text
    if kind == "coordinator.start":
        return f"pid {e.get('pid')} serving {e.get('socket')}"
    if kind == "evict.request":
        n = len(e.get("services") or [])
        return f"asked {n} service(s) to drop {e.get('fraction', 0):.0%} ({e.get('reason', '')})"
    if kind == "evict.result":
        answered = e.get("answered") or []
        missing = e.get("no_answer") or []
        text = (
            f"freed {format_size(e.get('freed_bytes') or 0)} from {len(answered)} service(s)"
            f" in {_duration(e.get('elapsed_s'))}"
        )
        return text + (f", {len(missing)} did not answer" if missing else "")
    if kind == "stop.decision":
        victims = ", ".join(
            f"{v.get('name')} ({format_size(v.get('bytes') or 0)})" for v in e.get("victims") or []
        )
        head = f"{e.get('reason', '?')}: {format_size(e.get('needed_bytes') or 0)} must go"
        dry = " [dry run]" if e.get("dry_run") else ""
        return f"{head}; stopping {victims or 'nobody (no candidate)'}{dry}"
    if kind == "stop.sent":
        return f"stop ({e.get('reason', '?')}) sent to pid {e.get('pid')}, {format_size(e.get('bytes') or 0)}"
    if kind == "agent.deregister":
        report = e.get("report") or {}
        if report:
            return (
                f"exited: {report.get('reason', '?')}, status {report.get('exit_status', '?')}, "
                f"peak {format_size(report.get('peak_rss_bytes') or 0)}"
            )
    return " ".join(f"{k}={_value(k, v)}" for k, v in e.items() if k not in _SKIP and v is not None)


def format_event(e: Event) -> str:
    """One line: local time, level, kind, agent, what happened."""
    ts = e.get("ts")
    when = (
        dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if isinstance(ts, int | float)
        else "?"
    )
    level = str(e.get("level", "")).upper()
    return f"{when}  {level:<{_LEVEL_WIDTH}} {e.get('kind', '?'):<18} {_who(e):<14} {summary(e)}".rstrip()
