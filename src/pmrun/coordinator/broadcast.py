"""Requests from the coordinator to services: ``evict`` and ``heap``, and their answers.

One frame goes to each connection that hosts one of the services asked (a process may
register several); the answers are awaited together, up to a timeout, and a service
that does not answer in time is reported as such rather than waited for.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import protocol as p

if TYPE_CHECKING:
    from .connection import Connection
    from .pool import ServiceEntry
    from .server import Coordinator

Waits = dict["Connection", list["ServiceEntry"]]


def severity(pressure: str) -> str:
    """The event level of something done at a pressure level ("manual" is info)."""
    return {"warning": "warning", "critical": "critical"}.get(pressure, "info")


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class Broadcaster:
    """The requests in flight to services and the last eviction's outcome."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self._ids = itertools.count(1)
        self.last_eviction: dict[str, Any] | None = None  # for status
        self.last_critical_at: float | None = None  # the coordinator's clock

    def _ask(self, services: list[ServiceEntry], frame: Callable[[], bytes], rid: int) -> Waits:
        """Send one request per connection hosting ``services``; futures registered."""
        by_conn: Waits = {}
        for svc in services:
            c = self.coord.conns.get(svc.conn_id)
            if c is not None and not c.closed:
                by_conn.setdefault(c, []).append(svc)
        data = frame()
        for c in by_conn:
            c.pending[rid] = self.coord.loop.create_future()
            c.send_frame(data)
        return by_conn

    async def _collect(
        self, waits: Waits, timeout_s: float, rid: int
    ) -> dict[int, tuple[p.Message, float]]:
        """Connection id -> (answer, when it arrived) for those that answered in time."""
        futs = [c.pending[rid] for c in waits if rid in c.pending]
        if futs:
            await asyncio.wait(futs, timeout=timeout_s)
        out: dict[int, tuple[p.Message, float]] = {}
        for c in waits:
            fut = c.pending.pop(rid, None)
            if fut is not None and fut.done() and not fut.cancelled():
                out[c.id] = fut.result()
            elif fut is not None:
                fut.cancel()
        return out

    async def heap(self, agent_ids: set[str] | None, limit: int) -> list[dict[str, Any]]:
        """Each service process's heap summary (or ``"error": "no answer"``)."""
        services = self.coord.pool.services_of(agent_ids)
        hid = next(self._ids)
        waits = self._ask(services, lambda: p.encode(p.Heap(id=hid, limit=limit)), hid)
        answers = await self._collect(waits, self.coord.settings.heap_timeout_s, hid)
        results = []
        for c, svcs in waits.items():
            base = {"pid": c.pid, "services": [s.name for s in svcs], "agent": svcs[0].agent_id}
            got = answers.get(c.id, (None, 0.0))[0]
            if isinstance(got, p.HeapResult) and got.results:
                results.append({**base, **got.results[0]})
            else:
                results.append({**base, "error": "no answer"})
        return results

    async def evict(
        self,
        fraction: float,
        level: str,
        reason: str,
        *,
        agent_ids: set[str] | None = None,
        detected_at: float | None = None,
    ) -> dict[str, Any]:
        """Ask services to evict ``fraction``; wait up to ``settle_s``; log and return the outcome.

        ``elapsed_s`` runs from ``detected_at`` (the crossing, or now; ``time.monotonic()``,
        real time even when the policy's clock is injected) to the last answer.
        """
        coord = self.coord
        t0 = time.monotonic() if detected_at is None else detected_at
        eid = next(self._ids)
        services = coord.pool.services_of(agent_ids)
        settle_s = coord.settings.settle_s
        frame = p.encode(
            p.Evict(id=eid, fraction=fraction, level=level, reason=reason, timeout_s=settle_s)
        )
        sent_at = coord.wall()
        waits = self._ask(services, lambda: frame, eid)
        answers = await self._collect(waits, settle_s, eid)
        # Logged once the answers are in: writing it first would delay reading them.
        coord.events.write(
            "evict.request",
            severity(level),
            ts=round(sent_at, 6),
            id=eid,
            pressure=level,
            reason=reason,
            fraction=round(fraction, 4),
            services=[{"service": v.name, "pid": v.pid, "agent": v.agent_id} for v in services],
        )
        answered: list[dict[str, Any]] = []
        no_answer: list[dict[str, Any]] = []
        last = t0
        for c, svcs in waits.items():
            got, at = answers.get(c.id, (None, 0.0))
            if not isinstance(got, p.Evicted):
                for v in svcs:
                    no_answer.append({"service": v.name, "pid": v.pid, "agent": v.agent_id,
                                      "error": "no answer"})  # fmt: skip
                continue
            last = max(last, at)
            by_name = {r.get("name"): r for r in got.results if isinstance(r, dict)}
            for v in svcs:
                r = by_name.get(v.name, {"error": "not in the answer"})
                entry = {
                    "service": v.name,
                    "pid": v.pid,
                    "agent": v.agent_id,
                    "bytes": _int_or_none(r.get("bytes")),
                    "rss_drop": _int_or_none(r.get("rss_drop")),
                    "seconds": r.get("seconds"),
                    "answered_s": round(at - t0, 6),
                }
                if r.get("error"):
                    entry["error"] = str(r["error"])[:300]
                v.last_eviction = {**entry, "id": eid, "ts": coord.wall(), "fraction": fraction}
                answered.append(entry)
            # Credit the drop the service measured to its agent until the next report.
            coord.pool.credit(svcs[0].agent_id, got.rss_before - got.rss_after)
        elapsed = (last if not no_answer else max(last, time.monotonic())) - t0
        outcome = {
            "id": eid,
            "pressure": level,
            "reason": reason,
            "fraction": fraction,
            "answered": answered,
            "no_answer": no_answer,
            "freed_bytes": sum(a["bytes"] or 0 for a in answered),
            "rss_drop_bytes": sum(a["rss_drop"] or 0 for a in answered),
            "elapsed_s": round(elapsed, 6),
        }
        coord.events.write("evict.result", severity(level), **outcome)
        self.last_eviction = {**outcome, "ts": coord.wall()}
        if level == "critical":
            self.last_critical_at = coord.clock()
        return outcome
