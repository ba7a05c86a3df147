"""Wait before start: the coordinator's queue of launchers whose agents do not fit yet.

A launcher asks (``admit``) before it runs its command; the answer (``admission``) is
*start* or *wait*, and a waiting launcher gets a second answer when its agent fits. The
decision is :func:`~.policy.admit`'s; this module keeps the queue (FIFO within priority),
what was admitted a moment ago and has not grown into its size yet (a reservation), and
the peaks recent agents of each name reached, from which an agent's size is expected when
``--expect`` does not say.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import policy
from . import protocol as p

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")

RESERVE_S = 30.0  # an admitted agent that never registers stops holding its size then
PEAKS_KEPT = 5  # recent peaks remembered per name
LOG_TAIL_BYTES = 1 << 20  # how much of the event log is read back for learned sizes


def report_peak(report: Any) -> int:
    """An exit report's peak: the sampled tree peak, or the kernel's peak of the command
    (``ru_maxrss``) when larger: a short agent can reach its peak between two samples."""
    if not isinstance(report, dict):
        return 0
    peaks = [report.get("peak_rss_bytes"), report.get("ru_maxrss_bytes")]
    return max((v for v in peaks if isinstance(v, int) and not isinstance(v, bool)), default=0)


@dataclass
class _Entry:
    conn: Connection
    msg: p.Admit
    waiting: policy.Waiting
    source: str  # where expect_bytes came from: flag, learned, warn-rss
    queued_at: float  # monotonic
    told_to_wait: bool = False


@dataclass
class _Reservation:
    expect_bytes: int
    admitted_at: float
    seen: bool = False  # registered since


class Admission:
    """The queue of one coordinator."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self._queue: dict[int, _Entry] = {}  # seq -> entry
        self._seq = itertools.count(1)
        self._reserved: dict[str, _Reservation] = {}
        self._peaks: dict[str, collections.deque[int]] = {}
        self._loaded = False

    def forget(self, agent_id: str) -> None:
        """The agent left the pool: it holds no reservation any more."""
        self._reserved.pop(agent_id, None)

    # -- expected sizes --------------------------------------------------------------------

    def note_exit(self, name: str, report: dict[str, Any]) -> None:
        """An agent ended: remember its peak for the next agent of that name."""
        peak = report_peak(report)
        if peak:
            self._peaks.setdefault(name, collections.deque(maxlen=PEAKS_KEPT)).append(peak)

    def _load_log(self) -> None:
        """Peaks from the tail of the event log: what agents of each name reached before."""
        self._loaded = True
        path = self.coord.settings.events_file
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
                lines = f.read().splitlines()
        except OSError:
            return
        found: dict[str, list[int]] = {}
        for line in lines:
            if b'"agent.deregister"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            report = e.get("report") if isinstance(e, dict) else None
            if isinstance(report, dict) and isinstance(e.get("name"), str):
                peak = report_peak(report)
                if peak:
                    found.setdefault(e["name"], []).append(peak)
        for name, peaks in found.items():
            known = self._peaks.setdefault(name, collections.deque(maxlen=PEAKS_KEPT))
            for peak in peaks[-PEAKS_KEPT:]:
                known.appendleft(peak)

    def expected(self, msg: p.Admit) -> tuple[int | None, str]:
        """(bytes, source): --expect, else learned from recent peaks, else unknown (None):
        then the agent starts below the warning level (:func:`~.policy.admit`)."""
        if msg.expect is not None:
            return msg.expect, "flag"
        if not self._loaded:
            self._load_log()
        peak = policy.learned_peak(self._peaks.get(msg.name, ()))
        if peak is not None:
            return peak, "learned"
        return None, "warning-level"

    # -- the queue -------------------------------------------------------------------------

    def _figures(self) -> dict[str, int]:
        c = self.coord
        r = c.monitor.readings
        return {
            "pool_used": c.pool.used(c.monitor.use_pss),
            "pool_limit": c.settings.pool_bytes,
            "system_used": r.system_used_bytes if r else 0,
            "system_threshold": r.system_threshold_bytes if r else 0,
        }

    def _reserved_bytes(self, now: float) -> int:
        total = 0
        agents = self.coord.pool.agents
        for agent_id, res in list(self._reserved.items()):
            agent = agents.get(agent_id)
            if agent is not None:
                res.seen = True
                total += max(0, res.expect_bytes - agent.pool_bytes(self.coord.monitor.use_pss))
            elif res.seen or now - res.admitted_at > RESERVE_S:
                del self._reserved[agent_id]
            else:
                total += res.expect_bytes
        return total

    def request(self, conn: Connection, msg: p.Admit) -> None:
        """An ``admit``: answer at once, start or wait."""
        expect, source = self.expected(msg)
        now = self.coord.clock()
        w = policy.Waiting(next(self._seq), msg.agent_id, msg.priority, expect)
        self._queue[w.seq] = _Entry(conn, msg, w, source, now)
        started = self.pump()
        if w.seq in started:
            return
        e = self._queue[w.seq]
        e.told_to_wait = True
        ahead = self._ahead(w)
        f = self._figures()
        used, limit = self._short_of(f, expect or 0)
        conn.send(
            p.Admission(id=msg.id, start=False, ahead=ahead, expect_bytes=expect or 0,
                        expect_source=source, used_bytes=used, limit_bytes=limit, why="queued")
        )  # fmt: skip
        self.coord.events.write(
            "admission.wait", "warning", agent=msg.agent_id, name=msg.name, pid=conn.pid,
            expect_bytes=expect, expect_source=e.source, ahead=ahead, used_bytes=used,
            limit_bytes=limit,
        )  # fmt: skip

    def _ahead(self, w: policy.Waiting) -> int:
        return sum(
            1
            for e in self._queue.values()
            if (-e.waiting.priority, e.waiting.seq) < (-w.priority, w.seq)
        )

    @staticmethod
    def _short_of(f: dict[str, int], expect: int) -> tuple[int, int]:
        """(used, limit) of the signal the agent does not fit under (the pool if both)."""
        if f["pool_limit"] > 0 and f["pool_used"] + expect > f["pool_limit"]:
            return f["pool_used"], f["pool_limit"]
        if f["system_threshold"] > 0:
            return f["system_used"], f["system_threshold"]
        return f["pool_used"], f["pool_limit"]

    def drop(self, conn: Connection) -> None:
        """A connection closed: whatever it queued leaves the queue."""
        for seq in [s for s, e in self._queue.items() if e.conn is conn]:
            del self._queue[seq]

    def pump(self) -> set[int]:
        """Start whoever fits now; returns their sequence numbers."""
        if not self._queue:
            return set()
        now = self.coord.clock()
        reserved = self._reserved_bytes(now)
        f = self._figures()
        idle = not self.coord.pool.agents and reserved == 0
        chosen = policy.admit(
            [e.waiting for e in self._queue.values()],
            pool_used=f["pool_used"], pool_limit=f["pool_limit"], system_used=f["system_used"],
            system_threshold=f["system_threshold"], reserved_bytes=reserved, idle=idle,
        )  # fmt: skip
        done: set[int] = set()
        for w in chosen:
            e = self._queue.pop(w.seq)
            need = w.expect_bytes or 0
            fit = w.expect_bytes is None or policy.fits(
                reserved + need, f["pool_used"], f["pool_limit"], f["system_used"],
                f["system_threshold"],
            )  # fmt: skip
            reserved += need
            if need:
                self._reserved[w.agent_id] = _Reservation(need, now)
            why = "fits" if fit else "alone"
            used, limit = self._short_of(f, need)
            e.conn.send(
                p.Admission(id=e.msg.id, start=True, ahead=0, expect_bytes=need,
                            expect_source=e.source, used_bytes=used, limit_bytes=limit, why=why)
            )  # fmt: skip
            waited = now - e.queued_at
            if e.told_to_wait or why != "fits":
                self.coord.events.write(
                    "admission.start", agent=w.agent_id, name=e.msg.name, pid=e.conn.pid,
                    expect_bytes=w.expect_bytes, expect_source=e.source, why=why,
                    waited_s=round(waited, 3),
                )  # fmt: skip
            done.add(w.seq)
        return done

    def status(self, now_wall: float) -> list[dict[str, Any]]:
        now = self.coord.clock()
        out = []
        for e in sorted(self._queue.values(), key=lambda e: (-e.waiting.priority, e.waiting.seq)):
            out.append(
                {
                    "id": e.msg.agent_id,
                    "name": e.msg.name,
                    "pid": e.conn.pid,
                    "priority": e.msg.priority,
                    "expect_bytes": e.waiting.expect_bytes,
                    "expect_source": e.source,
                    "waiting_s": round(now - e.queued_at, 3),
                    "ahead": self._ahead(e.waiting),
                    "state": "waiting",
                }
            )
        return out
