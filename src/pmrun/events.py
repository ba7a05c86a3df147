"""The coordinator's event log: append-only JSON lines, one event per line.

Every event is an object with ``ts`` (unix time, seconds), ``level`` (``info``,
``warning``, ``critical`` or ``error``: the pressure level where there is one) and
``kind`` (``pressure``, ``evict.request``, ``evict.result``, ``stop.decision``, ...; see
docs/protocol.md), plus fields of its kind. Each line is written with one ``write(2)`` on
an ``O_APPEND`` descriptor, so concurrent writers never interleave within a line.

The writer never raises: a log that cannot be written (unwritable path, full disk) is
reported once to stderr through :mod:`logging` and the coordinator goes on serving. The
reader skips lines it cannot parse (a torn last line after a crash).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger("pmrun.events")

LEVELS = ("debug", "info", "warning", "critical", "error")

# What a launcher reports over its link (logged as ``launcher.KIND``), and at what level:
# the one table the launcher, the coordinator and the tests' fake launcher share, so that
# `pmrun events --level warning` shows every agent a launcher stopped.
LAUNCHER_EVENTS = {
    "warn": "warning",  # the tree passed --warn-rss
    "stop": "critical",  # the launcher is stopping its tree (its own limit or an order)
    "kill": "critical",  # SIGKILL after the grace, or at once
    "pause": "warning",  # the tree is frozen at the coordinator's request
    "resume": "info",  # ... and thawed
}


def launcher_event_level(kind: str) -> str:
    """The level a launcher's event is logged at; an unknown kind is ``info``."""
    return LAUNCHER_EVENTS.get(kind, "info")


class EventLog:
    """Appends events to ``path`` (created 0600). ``clock`` gives unix time for ``ts``."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._fd: int | None = None
        self._failing = False  # an error was reported; report again only after a success
        self._torn = False  # a write was cut short: the next line must start on a new one
        self.written = 0
        self.failed = 0

    def _open(self) -> int:
        if self._fd is None:
            from .coordinator.paths import open_private
            from .errors import PmrunError

            try:  # ours, no symlink, no hang on a FIFO without a reader
                self._fd = open_private(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, devices=True
                )
            except PmrunError as e:
                raise OSError(errno.EPERM, str(e)) from None
        return self._fd

    def write(self, kind: str, level: str = "info", /, **fields: Any) -> dict[str, Any]:
        """Append one event and return it (as written, or as it would have been)."""
        event: dict[str, Any] = {"ts": round(self._clock(), 6), "level": level, "kind": kind}
        event.update(fields)
        try:
            line = json.dumps(event, separators=(",", ":"), default=str) + "\n"
        except (TypeError, ValueError) as e:
            line = json.dumps({"ts": event["ts"], "level": "error", "kind": "event.unencodable",
                               "of": kind, "error": str(e)}) + "\n"  # fmt: skip
        data = line.encode()
        if self._torn:
            data = b"\n" + data  # end the torn line: it stays unreadable, this one does not
        try:
            fd = self._open()
            n = os.write(fd, data)
            if n != len(data):
                self._torn = n > 0 or self._torn
                raise OSError(28, "short write (disk full?)")
            self._torn = False
        except OSError as e:
            self.failed += 1
            if not self._failing:
                self._failing = True
                log.error("cannot write the event log %s: %s (going on without it)", self.path, e)
            self._reset()
        else:
            self.written += 1
            if self._failing:
                self._failing = False
                log.warning("event log %s is writable again", self.path)
        return event

    def reopen_if_moved(self) -> None:
        """Write to the file at ``path`` again if ours was deleted or replaced (a /tmp
        cleaner): events written to an unlinked file would never be read."""
        if self._fd is None:
            return
        try:
            st, now = os.fstat(self._fd), os.stat(self.path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return
        except OSError:
            pass
        self._reset()

    def _reset(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def close(self) -> None:
        self._reset()


def matches(
    event: dict[str, Any],
    since: float | None,
    until: float | None,
    kinds: set[str] | None,
    agent: str | None,
    min_level: str | None,
) -> bool:
    ts = event.get("ts")
    if not isinstance(ts, int | float):
        return False
    if since is not None and ts < since:
        return False
    if until is not None and ts > until:
        return False
    if kinds is not None:
        kind = str(event.get("kind", ""))
        # "evict" matches "evict.request" and "evict.result"
        if kind not in kinds and kind.split(".", 1)[0] not in kinds:
            return False
    if agent is not None and not _mentions_agent(event, agent):
        return False
    if min_level is not None:
        lvl = event.get("level")
        if lvl not in LEVELS or LEVELS.index(lvl) < LEVELS.index(min_level):
            return False
    return True


def _mentions_agent(event: dict[str, Any], agent: str) -> bool:
    if agent in (event.get("agent"), event.get("name")):
        return True
    for key in ("victims", "candidates", "answered"):
        for item in event.get(key) or ():
            if isinstance(item, dict) and agent in (item.get("agent"), item.get("name")):
                return True
    return False


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Events from raw lines; lines that are not a JSON object are skipped."""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def read_events(
    path: str,
    *,
    since: float | None = None,
    until: float | None = None,
    kinds: Iterable[str] | None = None,
    agent: str | None = None,
    min_level: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Events of the log at ``path``, oldest first, filtered.

    ``since``/``until``: unix times, inclusive. ``kinds``: exact kinds or their prefix
    before the dot (``"evict"``). ``agent``: an agent's id or name, matched in the event's
    ``agent``/``name`` and in its victims, candidates and answers. ``min_level``: one of
    :data:`LEVELS`. ``limit``: keep only the last ``limit``. A missing file has no events.
    """
    if min_level is not None and min_level not in LEVELS:
        raise ValueError(f"min_level must be one of {', '.join(LEVELS)}")
    kind_set = set(kinds) if kinds is not None else None
    try:
        with open(path, "rb") as f:
            events = [
                e for e in parse_lines(f) if matches(e, since, until, kind_set, agent, min_level)
            ]
    except FileNotFoundError:
        return []
    if limit is not None:
        events = events[-limit:] if limit > 0 else []
    return events


def read_new(path: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte ``offset`` and the offset to pass next time (``follow``).

    A partial last line is left for the next call. A log shorter than ``offset`` (replaced)
    is read from its start.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    return list(parse_lines(data[:end].splitlines())), offset + end
