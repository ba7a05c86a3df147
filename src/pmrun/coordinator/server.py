"""The coordinator daemon: one asyncio loop serving a Unix socket and watching memory.

A monitor task reads system memory, PSI and the pool every 0.1 to 0.5 s depending on the
headroom left (and at once when a report moves the pool across a level), and handles pressure in this order:

1. a level rises (warning or critical, with hysteresis): broadcast ``evict`` to every
   service with the level's fraction and wait up to ``settle_s`` for the answers;
2. still over a threshold: measure again (PSS), work out the bytes that must go, pick
   victims by the policy and send ``stop`` to their launchers; then wait ``cooldown_s``
   before stopping more, unless a signal is :data:`~.policy.HARD_RATIO` over;
3. every step goes to the event log.

Connections are :class:`asyncio.Protocol` objects: frames are parsed as they arrive, a
peer of another uid is refused at once (SO_PEERCRED), and a peer that sends garbage, a
too-large frame, or an incomplete frame for too long is answered with an error or dropped
without disturbing anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from .. import _procfs, cgroups
from ..errors import PmrunError, SocketSecurityError
from ..events import EventLog, launcher_event_level
from . import lifecycle, orphans, paths, policy
from . import protocol as p
from .admission import Admission
from .endpoint import AlreadyRunning, Endpoint, reopen_log_if_deleted
from .orphans import kill_orphans
from .policy import Level
from .pool import (
    PSS_ZONE,
    AgentEntry,
    Pool,
    ServiceEntry,
    measure_pss,
)
from .settings import CoordinatorSettings
from .suspend import Suspender

log = logging.getLogger("pmrun.coordinator")

_PEERCRED = struct.Struct("3i")


class _Conn(asyncio.Protocol):
    """One client connection: an agent's launcher, a service process, or a CLI query."""

    _next_id = itertools.count(1)

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.id = next(self._next_id)
        self.transport: asyncio.Transport | None = None
        self.buffer = p.FrameBuffer()
        self.pid = 0
        self.uid = -1
        self.pid_start: int | None = None
        self.agent: AgentEntry | None = None
        self.deregistered = False
        self.pending: dict[int, asyncio.Future[tuple[p.Message, float]]] = {}
        self.bad_frames = 0
        self.in_flight = 0  # cleanup/heap requests being answered
        self.seen_frame = False
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            self.pid, self.uid, _gid = _PEERCRED.unpack(creds)
        except OSError:
            self.uid = -1
        self.coord._accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.buffer.feed(data)
        except p.FrameTooLarge as e:
            self.fail("too-large", str(e))
            return
        for frame in frames:
            if self.closed:
                return
            try:
                msg = p.decode(frame)
            except p.ProtocolError as e:
                self.bad_frames += 1
                if self.bad_frames > self.coord.settings.max_bad_frames:
                    self.fail("bad-frame", f"{e} (too many bad frames: closing)")
                    return
                self.send(p.Error(code=p.error_code(e), message=str(e)))
                continue
            self.seen_frame = True
            try:
                self.coord._dispatch(self, msg)
            except p.ProtocolError as e:
                self.send(p.Error(code="bad-frame", message=str(e)))
            except Exception:  # a bug must not take the daemon down
                log.exception("handling %s from pid %d", msg.TYPE, self.pid)
                self.send(p.Error(code="internal", message="internal error (see the log)"))
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.coord._lost(self)

    # -- helpers --

    def _arm_timer(self) -> None:
        """A new connection must send a frame, and a started frame must end, in time."""
        if self.closed:
            return  # fail() owns the timer now: it closes the connection
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        s = self.coord.settings
        if not self.seen_frame:
            self._timer = self.coord.loop.call_later(
                s.handshake_timeout_s, self.fail, "timeout", "no complete frame in time"
            )
        elif self.buffer.pending:
            self._timer = self.coord.loop.call_later(
                s.frame_timeout_s, self.fail, "timeout", "incomplete frame for too long"
            )

    def send(self, msg: p.Message) -> None:
        self.send_frame(p.encode(msg, p.MAX_REPLY_FRAME))

    def send_frame(self, frame: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        # A peer that has not read what was queued before is dropped; one large answer
        # (a status of many agents) is not a reason to.
        if self.transport.get_write_buffer_size() > self.coord.settings.max_write_buffer:
            log.warning("pid %d does not read its socket: dropping it", self.pid)
            self.closed = True
            self.transport.abort()
            return
        self.transport.write(frame)

    def fail(self, code: str, message: str) -> None:
        """Answer one error and close the connection."""
        if self.closed:
            return
        log.info("dropping connection from pid %d: %s", self.pid, message)
        self.send(p.Error(code=code, message=message))
        self.closed = True  # from now on what it sends is read and ignored
        if self._timer is not None:
            self._timer.cancel()
        # Closing with unread input would reset the connection and lose the error frame:
        # read and discard for a moment first.
        if self.transport is not None:
            self._timer = self.coord.loop.call_later(0.1, self.transport.close)


class Coordinator:
    """The daemon's state and logic; :meth:`serve` runs it until :meth:`request_stop`."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        events: EventLog | None = None,
    ) -> None:
        if settings.victim_policy not in policy.VICTIM_POLICIES:
            raise ValueError(f"unknown victim policy {settings.victim_policy!r}")
        self.settings = settings
        self.clock = clock
        self.wall = wall
        self.events = events if events is not None else EventLog(settings.events_file, clock=wall)
        self.pool = Pool()
        self.suspend = Suspender(self, settings.pause)  # pause before kill
        self.admission = Admission(self)  # wait before start
        self.lifecycle = lifecycle.Lifecycle(self, settings.idle_exit_s)  # stop, idle exit
        self.conns: dict[int, _Conn] = {}
        self.state = policy.PressureState()
        self.readings: policy.Readings | None = None
        self.psi: dict[str, float] | None = None
        self.system_source = "meminfo"
        self.use_pss = False
        self._pss_at = -1e18
        self._rss_total = 0
        self._ids = itertools.count(1)
        self._last_stop: float | None = None
        self._last_critical_evict: float | None = None
        self._last_eviction: dict[str, Any] | None = None
        self._last_decision: dict[str, Any] | None = None
        self._last_sweep = -1e18
        self._cg_layout: cgroups.Layout | None = None
        self._cg_layout_at = -1e18
        self._last_refusal_logged = -1e18
        self._started = clock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._step_lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_holds = True  # see request_stop
        self._acting = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serve()

    # -- connections ---------------------------------------------------------------------

    def _accepted(self, conn: _Conn) -> None:
        my_uid = os.geteuid()
        if conn.uid not in (my_uid, 0):
            now = self.clock()
            if now - self._last_refusal_logged > 1.0:  # a flood must not fill the log
                self._last_refusal_logged = now
                log.warning("refused a connection from uid %d (pid %d)", conn.uid, conn.pid)
                self.events.write("security.refused", "warning", uid=conn.uid, pid=conn.pid)
            conn.fail("forbidden", f"uid {conn.uid} may not use the coordinator of uid {my_uid}")
            return
        if len(self.conns) >= self.settings.max_connections:
            conn.fail("busy", f"too many connections ({self.settings.max_connections})")
            return
        conn.pid_start = orphans.start_time(conn.pid, self.settings.proc)
        self.conns[conn.id] = conn
        conn._arm_timer()

    def _lost(self, conn: _Conn) -> None:
        self.conns.pop(conn.id, None)
        self.admission.drop(conn)
        for fut in conn.pending.values():
            if not fut.done():
                fut.cancel()
        for key in [k for k in self.pool.services if k[0] == conn.id]:
            svc = self.pool.services.pop(key)
            self.events.write("service.lost", service=svc.name, pid=svc.pid, agent=svc.agent_id)
        agent = conn.agent
        stopping = self._stopping is not None and self._stopping.is_set()
        if agent is not None and not conn.deregistered and not stopping:
            self._remove_agent(agent)
            self._spawn(self._after_launcher_lost(agent, conn.pid, conn.pid_start))

    async def _after_launcher_lost(self, agent: AgentEntry, pid: int, start: int | None) -> None:
        """A launcher's connection dropped without a deregister: if the launcher died, kill
        what is provably still its tree (its grandchildren may have escaped the parent-death
        signal). A live launcher only lost its connection and will register again.

        A launcher killed with SIGKILL closes its sockets before /proc shows it dead, so a
        launcher that still looks alive is looked at again for a moment.
        """
        proc = self.settings.proc
        alive = orphans.alive(pid, start, proc)
        for delay in (0.02, 0.05, 0.1, 0.2):
            if not alive:
                break
            await asyncio.sleep(delay)
            alive = orphans.alive(pid, start, proc)
        killed: list[int] = []
        # A peer outside our pid namespace shows as pid 0 (or without a readable start
        # time): its pids are not ours to interpret, so nothing is killed for it.
        if not alive and pid > 0 and start is not None:
            killed = kill_orphans(agent.pids, agent.uid, start, proc)
        self.events.write(
            "agent.lost",
            "warning",
            agent=agent.agent_id,
            name=agent.name,
            pid=agent.launcher_pid,
            launcher_alive=alive,
            orphans_killed=killed,
        )
        if killed:
            log.warning("launcher of %s died: killed %d orphans", agent.name, len(killed))

    def _remove_agent(self, agent: AgentEntry) -> None:
        if self.pool.agents.get(agent.agent_id) is agent:
            del self.pool.agents[agent.agent_id]
            self._rss_total -= agent.rss_bytes
            self.suspend.forget(agent.agent_id)
            self.admission.forget(agent.agent_id)

    # -- messages ------------------------------------------------------------------------

    def _dispatch(self, conn: _Conn, msg: p.Message) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            conn.send(p.Error(code="unexpected", message=f"{msg.TYPE} is not a request"))
            return
        handler(self, conn, msg)

    def _on_ping(self, conn: _Conn, msg: p.Ping) -> None:
        conn.send(
            p.Pong(id=msg.id, pid=os.getpid(), uptime_s=round(self.clock() - self._started, 3))
        )

    def _on_register(self, conn: _Conn, msg: p.Register) -> None:
        old = self.pool.agents.get(msg.agent_id)
        if old is not None:  # the same agent on a new connection: forget the old one
            for c in self.conns.values():
                if c.agent is old:
                    c.agent = None
            self._remove_agent(old)
        if conn.agent is not None and conn.agent.agent_id != msg.agent_id:
            self._remove_agent(conn.agent)
        agent = AgentEntry(
            agent_id=msg.agent_id,
            name=msg.name,
            launcher_pid=msg.launcher_pid,
            launcher_start=conn.pid_start,
            child_pid=msg.child_pid,
            uid=conn.uid,
            argv=msg.argv,
            max_rss=msg.max_rss,
            warn_rss=msg.warn_rss,
            priority=msg.priority,
            backend=msg.backend,
            started=msg.started,
            rss_bytes=msg.rss,
            peak_bytes=msg.peak,
            pids=msg.pids,
            state=msg.state,
        )
        self.pool.agents[agent.agent_id] = agent
        self._rss_total += agent.rss_bytes
        self.suspend.registered(agent.agent_id, msg.pausable, msg.rss, self.clock())
        conn.agent, conn.deregistered = agent, False
        conn.send(p.Ok(id=msg.id, of="register", detail={"pool_bytes": self.settings.pool_bytes}))
        self.events.write(
            "agent.register",
            agent=agent.agent_id,
            name=agent.name,
            pid=agent.launcher_pid,
            child_pid=agent.child_pid,
            rss_bytes=agent.rss_bytes,
            max_bytes=agent.max_rss,
            priority=agent.priority,
            again=old is not None,
        )
        self._maybe_wake()

    def _on_report(self, conn: _Conn, msg: p.Report) -> None:
        agent = conn.agent
        if agent is None:
            conn.send(p.Error(code="not-registered", message="report before register"))
            return
        self._rss_total += msg.rss - agent.rss_bytes
        agent.rss_bytes, agent.peak_bytes = msg.rss, msg.peak
        if msg.pids:
            agent.pids = msg.pids
        agent.state = msg.state
        self._maybe_wake()

    def _on_event(self, conn: _Conn, msg: p.Event) -> None:
        agent = conn.agent
        reserved = ("ts", "level", "kind", "agent", "name")
        fields = {k: v for k, v in msg.fields.items() if k not in reserved}
        self.events.write(
            f"launcher.{msg.kind}"[:80],
            launcher_event_level(msg.kind),
            agent=agent.agent_id if agent else None,
            name=agent.name if agent else None,
            **fields,
        )

    def _on_deregister(self, conn: _Conn, msg: p.Deregister) -> None:
        agent = conn.agent
        if agent is not None:
            self._remove_agent(agent)
            conn.deregistered = True
            conn.agent = None
            self.events.write(
                "agent.deregister", agent=agent.agent_id, name=agent.name, report=msg.report
            )
            self.admission.note_exit(agent.name, msg.report)
            self.admission.pump()
        conn.send(p.Ok(id=msg.id, of="deregister"))

    def _on_service(self, conn: _Conn, msg: p.Service) -> None:
        key = (conn.id, msg.name)
        limit = self.settings.max_services_per_connection
        if key not in self.pool.services and (
            sum(1 for k in self.pool.services if k[0] == conn.id) >= limit
        ):
            conn.send(
                p.Error(
                    id=msg.id, code="busy", message=f"more than {limit} services on one connection"
                )
            )
            return
        self.pool.services[key] = ServiceEntry(msg.name, msg.pid, msg.agent_id, conn.id)
        conn.send(p.Ok(id=msg.id, of="service"))
        self.events.write("service.register", service=msg.name, pid=msg.pid, agent=msg.agent_id)

    def _on_service_close(self, conn: _Conn, msg: p.ServiceClose) -> None:
        svc = self.pool.services.pop((conn.id, msg.name), None)
        if svc is not None:
            self.events.write("service.close", service=svc.name, pid=svc.pid, agent=svc.agent_id)

    def _on_stats(self, conn: _Conn, msg: p.Stats) -> None:
        for name, s in msg.services.items():
            svc = self.pool.services.get((conn.id, name))
            if svc is not None:
                svc.stats = s if isinstance(s, dict) else {}
                svc.rss_bytes = msg.rss
        self._resolve(conn, msg)

    def _resolve(self, conn: _Conn, msg: p.Message) -> None:
        mid = getattr(msg, "id", None)
        fut = conn.pending.get(mid) if isinstance(mid, int) else None
        if fut is not None and not fut.done():
            fut.set_result((msg, time.monotonic()))

    def _on_answer(self, conn: _Conn, msg: p.Message) -> None:
        self._resolve(conn, msg)

    def _on_status(self, conn: _Conn, msg: p.Status) -> None:
        conn.send(p.StatusResult(id=msg.id, status=self.status()))

    def _on_cleanup(self, conn: _Conn, msg: p.Cleanup) -> None:
        self._spawn_for(conn, msg, self._cleanup(conn, msg))

    def _on_heap(self, conn: _Conn, msg: p.Heap) -> None:
        self._spawn_for(conn, msg, self._heap(conn, msg))

    def _spawn_for(self, conn: _Conn, msg: Any, coro: Any) -> None:
        """Run a request that waits for services, a few at a time per connection."""
        limit = self.settings.max_requests_per_connection
        if conn.in_flight >= limit:
            coro.close()
            conn.send(
                p.Error(id=msg.id, code="busy", message=f"more than {limit} requests in flight")
            )
            return
        conn.in_flight += 1

        async def run() -> None:
            try:
                await coro
            finally:
                conn.in_flight -= 1

        self._spawn(run())

    def _on_error(self, conn: _Conn, msg: p.Error) -> None:
        log.debug("pid %d reports an error: %s %s", conn.pid, msg.code, msg.message)
        self._resolve(conn, msg)

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- manual requests -----------------------------------------------------------------

    def _agent_filter(self, agent: str | None) -> set[str] | None:
        if agent is None:
            return None
        ids = {a.agent_id for a in self.pool.find_agents(agent)}
        # A service may name an agent whose launcher is not (yet) registered.
        ids.update(s.agent_id for s in self.pool.services.values() if s.agent_id == agent)
        return ids

    async def _cleanup(self, conn: _Conn, msg: p.Cleanup) -> None:
        ids = self._agent_filter(msg.agent)
        if ids is not None and not ids:
            conn.send(p.Error(id=msg.id, code="no-such-agent", message=f"no agent {msg.agent!r}"))
            return
        fraction = self.settings.evict_fraction if msg.fraction is None else msg.fraction
        self.events.write("cleanup.request", pid=conn.pid, agent=msg.agent, fraction=fraction)
        outcome = await self.broadcast(fraction, "manual", "cleanup", agent_ids=ids)
        conn.send(
            p.CleanupResult(
                id=msg.id,
                fraction=fraction,
                elapsed_s=outcome["elapsed_s"],
                results=outcome["answered"] + outcome["no_answer"],
            )
        )

    async def _heap(self, conn: _Conn, msg: p.Heap) -> None:
        ids = self._agent_filter(msg.agent)
        if ids is not None and not ids:
            conn.send(p.Error(id=msg.id, code="no-such-agent", message=f"no agent {msg.agent!r}"))
            return
        services = self.pool.services_of(ids)
        hid = next(self._ids)
        waits = self._ask(services, lambda: p.encode(p.Heap(id=hid, limit=msg.limit)), hid)
        answers = await self._collect(waits, self.settings.heap_timeout_s, hid)
        results = []
        for c, svcs in waits.items():
            base = {"pid": c.pid, "services": [s.name for s in svcs], "agent": svcs[0].agent_id}
            got = answers.get(c.id, (None, 0.0))[0]
            if isinstance(got, p.HeapResult) and got.results:
                results.append({**base, **got.results[0]})
            else:
                results.append({**base, "error": "no answer"})
        conn.send(p.HeapResult(id=msg.id, results=results))

    # -- broadcasts ----------------------------------------------------------------------

    def _ask(
        self, services: list[ServiceEntry], frame: Callable[[], bytes], rid: int
    ) -> dict[_Conn, list[ServiceEntry]]:
        """Send one request per connection hosting ``services``; futures registered."""
        by_conn: dict[_Conn, list[ServiceEntry]] = {}
        for svc in services:
            c = self.conns.get(svc.conn_id)
            if c is not None and not c.closed:
                by_conn.setdefault(c, []).append(svc)
        data = frame()
        for c in by_conn:
            c.pending[rid] = self.loop.create_future()
            c.send_frame(data)
        return by_conn

    async def _collect(
        self, waits: dict[_Conn, list[ServiceEntry]], timeout_s: float, rid: int
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

    async def broadcast(
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
        t0 = time.monotonic() if detected_at is None else detected_at
        eid = next(self._ids)
        services = self.pool.services_of(agent_ids)
        s = self.settings
        frame = p.encode(
            p.Evict(id=eid, fraction=fraction, level=level, reason=reason, timeout_s=s.settle_s)
        )
        sent_at = self.wall()
        waits = self._ask(services, lambda: frame, eid)
        answers = await self._collect(waits, s.settle_s, eid)
        # Logged once the answers are in: writing it first would delay reading them.
        self.events.write(
            "evict.request",
            _severity(level),
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
                v.last_eviction = {**entry, "id": eid, "ts": self.wall(), "fraction": fraction}
                answered.append(entry)
            # Credit the drop the service measured to its agent until the next report.
            drop = max(0, got.rss_before - got.rss_after)
            owner = self.pool.agents.get(svcs[0].agent_id or "")
            if owner is not None and drop:
                credit = min(drop, owner.rss_bytes)
                owner.rss_bytes -= credit
                self._rss_total -= credit
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
        self.events.write("evict.result", _severity(level), **outcome)
        self._last_eviction = {**outcome, "ts": self.wall()}
        if level == "critical":
            self._last_critical_evict = self.clock()
        return outcome

    # -- monitoring ----------------------------------------------------------------------

    def _maybe_wake(self) -> None:
        """Wake the monitor when the reported total may have moved the pool's level."""
        limit = self.settings.pool_bytes
        if limit <= 0 or self._wake is None or self._acting:
            return
        ratio = self._rss_total / limit
        current = self.state.of("pool")
        if policy.level_for(ratio, current, self.settings.hysteresis) > current:
            self._wake.set()

    async def read(self, *, fresh_pss: bool = False) -> policy.Readings:
        """Measure everything now. PSS is read near the pool limit, at most each pss_interval_s."""
        s = self.settings
        now = self.clock()
        if now - self._cg_layout_at > 60.0:  # our group rarely moves
            try:
                self._cg_layout = cgroups.locate(s.proc, s.cgroup_root)
            except PmrunError:
                self._cg_layout = None  # no memory controller: MemTotal alone
            self._cg_layout_at = now
        try:
            sysmem = cgroups.system_memory(s.proc, s.cgroup_root, self._cg_layout)
            self.system_source = sysmem.source
            total, used = sysmem.total_bytes, sysmem.used_bytes
        except (OSError, _procfs.ProcessGone, ValueError):
            total, used = 0, 0
        psi = _procfs.memory_pressure(s.proc)
        self.psi = {k: v.avg10 for k, v in psi.items()} if psi else None
        rss_total = self.pool.rss_total()
        self._rss_total = rss_total  # resynchronise the running total
        self.use_pss = s.pool_bytes > 0 and (
            rss_total >= PSS_ZONE * s.pool_bytes or self.state.level >= Level.WARNING
        )
        now = self.clock()
        if self.use_pss and (fresh_pss or now - self._pss_at >= s.pss_interval_s):
            snapshot = self.pool.pss_snapshot()
            if snapshot:
                measured = await asyncio.to_thread(measure_pss, snapshot, s.proc)
                self.pool.apply_pss(measured)
            self._pss_at = now
        readings = policy.Readings(
            pool_used_bytes=self.pool.used(self.use_pss),
            pool_limit_bytes=s.pool_bytes,
            system_used_bytes=used,
            system_total_bytes=total,
            system_threshold=s.system_threshold,
            psi_some_avg10=self.psi.get("some") if self.psi else None,
            psi_threshold=s.psi_threshold,
        )
        self.readings = readings
        return readings

    async def step(self) -> None:
        """One pass of the monitor: assess, broadcast on a rise, stop agents if still over."""
        async with self._step_lock:
            await self._step()

    async def _step(self) -> None:
        self._acting = True
        try:
            detected = time.monotonic()
            r = await self.read()
            self.suspend.observe(self.clock(), self.use_pss)
            previous = self.state
            self.state = policy.assess(r, previous, self.settings.hysteresis)
            if self.state.level != previous.level:
                self._log_pressure(previous, r)
            if self.state.level > previous.level:
                level = self.state.level
                fraction = policy.eviction_fraction(level, self.settings.evict_fraction)
                reason = ",".join(self.state.crossed())
                outcome = await self.broadcast(fraction, level.label, reason, detected_at=detected)
                if outcome["answered"] or outcome["no_answer"]:  # else nothing could have freed
                    r = await self.read(fresh_pss=True)
                before = self.state
                self.state = policy.assess(r, before, self.settings.hysteresis)
                if self.state.level != before.level:  # the services' answers relieved it
                    self._log_pressure(before, r)
            if policy.over_threshold(r):
                await self._consider_stop(r)
            else:
                self.suspend.resume_step(r, self.clock())
            self.admission.pump()
        finally:
            self._acting = False

    def _log_pressure(self, previous: policy.PressureState, r: policy.Readings) -> None:
        level = self.state.level
        self.events.write(
            "pressure",
            _severity(level.label),
            pressure=level.label,
            previous=previous.level.label,
            signals=self.state.to_dict(),
            counted="pss" if self.use_pss else "rss",
            **policy.summarize(r),
        )
        log.log(
            logging.WARNING if level > previous.level else logging.INFO,
            "pressure %s -> %s (%s)",
            previous.level.label,
            level.label,
            ", ".join(f"{k} {v:.0%}" for k, v in r.ratios().items()),
        )

    def _pending_bytes(self) -> int:
        now = self.clock()
        return sum(
            a.pool_bytes(self.use_pss)
            for a in self.pool.stopping(now, self.settings.stop_pending_s)
        ) + self.suspend.held_bytes(now, self.use_pss)

    async def _consider_stop(self, r: policy.Readings) -> None:
        s = self.settings
        now = self.clock()
        may = policy.may_stop(
            now, self._last_stop, s.cooldown_s, policy.hard_crossed(r, s.hard_ratio)
        )
        first = policy.bytes_to_free(r, self._pending_bytes())
        if first is None:
            return
        # Pause at once, on the figures eviction was just judged on: a pause is cheap and
        # undone by a resume, so it does not wait for the fresh measure a stop waits for.
        if not s.dry_run and self.suspend.pause_for(first, r, now):
            return
        if not may:  # the cooldown after a stop holds back stopping, not pausing
            return
        if self._last_critical_evict is None or now - self._last_critical_evict >= s.cooldown_s:
            reason = ",".join(self.state.crossed()) or "pool"
            await self.broadcast(s.evict_fraction, "critical", reason)
        # Check again right before acting, on fresh figures.
        r = await self.read(fresh_pss=True)
        need = policy.bytes_to_free(r, self._pending_bytes())
        if need is None:
            self.events.write("stop.avoided", "info", **policy.summarize(r))
            return
        now = self.clock()
        if not s.dry_run and self.suspend.pause_for(need, r, now):
            return  # paused instead of stopped: no work lost
        candidates = self.pool.candidates(self.use_pss, now, s.stop_pending_s)
        victims = policy.choose_victims(candidates, need.bytes, s.victim_policy)
        decision = {
            "reason": need.reason,
            "signal": need.signal,
            "needed_bytes": need.bytes,
            "pending_bytes": self._pending_bytes(),
            "policy": s.victim_policy,
            "counted": "pss" if self.use_pss else "rss",
            "dry_run": s.dry_run,
            "candidates": [c.to_dict() for c in candidates],
            "victims": [c.to_dict() for c in victims],
            "figures": dict(policy.summarize(r)),
        }
        self._last_stop = now
        self._last_decision = {**decision, "ts": self.wall()}
        self.events.write("stop.decision", "critical", **decision)
        if not victims:
            log.warning("over the %s threshold with no agent left to stop", need.signal)
            return
        for v in victims:
            agent = self.pool.agents.get(v.agent_id)
            if agent is None:
                continue
            if s.dry_run:
                log.warning("dry run: would stop %s (%s, %d bytes)", v.name, need.reason, v.bytes)
                continue
            detail = {
                "needed_bytes": need.bytes,
                "agent_bytes": v.bytes,
                "signal": need.signal,
                "pool_used_bytes": r.pool_used_bytes,
                "pool_limit_bytes": r.pool_limit_bytes,
                "system_used_bytes": r.system_used_bytes,
                "system_threshold_bytes": r.system_threshold_bytes,
            }
            sent = False
            for c in self.conns.values():
                if c.agent is agent:
                    c.send(p.Stop(reason=need.reason, detail=detail))
                    sent = True
            agent.stop_reason, agent.stop_sent_at, agent.state = need.reason, now, "stopping"
            self.events.write(
                "stop.sent", "critical", agent=agent.agent_id, name=agent.name,
                pid=agent.launcher_pid, reason=need.reason, bytes=v.bytes, delivered=sent,
            )  # fmt: skip
            log.warning("stopping %s (%s): %d bytes over", agent.name, need.reason, need.bytes)

    async def _monitor(self) -> None:
        assert self._wake is not None and self._stopping is not None
        while not self._stopping.is_set():
            sleep_s = policy.next_tick_s(
                self.readings, self.settings.tick_min_s, self.settings.tick_s
            )
            timer = self.loop.call_later(sleep_s, self._wake.set)
            await self._wake.wait()
            timer.cancel()
            self._wake.clear()
            try:
                await self.step()
                await self._sweep_cgroups()
                self.lifecycle.tick()
            except Exception:  # the monitor must never die
                log.exception("monitor step failed")

    async def _sweep_cgroups(self) -> None:
        now = self.clock()
        if now - self._last_sweep < self.settings.orphan_sweep_s:
            return
        self._last_sweep = now
        try:
            cleaned = await asyncio.to_thread(cgroups.cleanup_orphans)
        except Exception as e:  # a cgroup tree in a state we did not foresee: log, carry on
            log.warning("cgroups.cleanup_orphans failed: %s", e)
            return
        if cleaned:
            self.events.write("cgroups.cleaned", "warning", paths=[str(x) for x in cleaned])

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything ``pmrun status`` shows; JSON-serializable as is."""
        s = self.settings
        r = self.readings
        now = self.clock()
        cooldown_left = None
        if self._last_stop is not None:
            cooldown_left = round(max(0.0, s.cooldown_s - (now - self._last_stop)), 3)
        out: dict[str, Any] = {
            "version": p.VERSION,
            "ts": self.wall(),
            "coordinator": {
                "pid": os.getpid(),
                "uid": os.geteuid(),
                "uptime_s": round(now - self._started, 3),
                "socket": s.socket_path,
                "events": s.events_file,
                "dry_run": s.dry_run,
                "victim_policy": s.victim_policy,
                "evict_fraction": s.evict_fraction,
                "warning_fraction": policy.eviction_fraction(Level.WARNING, s.evict_fraction),
                "settle_s": s.settle_s,
                "cooldown_s": s.cooldown_s,
                "connections": len(self.conns),
            },
            "system": {
                "total_bytes": r.system_total_bytes if r else None,
                "used_bytes": r.system_used_bytes if r else None,
                "source": self.system_source,
                "threshold": s.system_threshold,
                "threshold_bytes": r.system_threshold_bytes if r else None,
                "psi": (
                    None
                    if self.psi is None
                    else {"some_avg10": self.psi.get("some"), "full_avg10": self.psi.get("full")}
                ),
                "psi_threshold": s.psi_threshold,
            },
            "pool": {
                "used_bytes": self.pool.used(self.use_pss),
                "limit_bytes": s.pool_bytes,
                "rss_bytes": self.pool.rss_total(),
                "counted": "pss" if self.use_pss else "rss",
            },
            "pressure": {
                "level": self.state.level.label,
                "signals": self.state.to_dict(),
                "ratios": {k: round(v, 4) for k, v in r.ratios().items()} if r else {},
                "last_eviction": self._last_eviction,
                "last_decision": self._last_decision,
                "cooldown_left_s": cooldown_left,
            },
        }
        out.update(self.pool.status(self.wall()))
        self.suspend.annotate(out["agents"], now)
        out["waiting"] = self.admission.status(self.wall())
        out["coordinator"]["pause"] = {
            "enabled": s.pause.enabled,
            "max_pause_s": s.pause.max_pause_s,
            "paused": len(self.suspend.paused()),
        }
        return out

    # -- lifecycle -----------------------------------------------------------------------

    def request_stop(self, *, hold: bool = True) -> None:
        """Stop serving. ``hold``: a stop the launchers must not undo by starting another
        coordinator (not so for an idle exit, which a registration may have raced)."""
        self._stop_holds = hold
        if self._stopping is not None:
            self._stopping.set()

    async def serve(
        self,
        sock: socket.socket,
        *,
        ready: Callable[[], None] | None = None,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Serve on the listening ``sock`` until :meth:`request_stop` (or SIGTERM/SIGINT).

        With ``endpoint`` (the daemon's lock and socket), its path is watched too."""
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        metrics = None
        if self.settings.metrics_port is not None:
            # Before serving the socket, so that a busy port fails the start.
            from ..diagnostics.metrics import on_loop, start_metrics_server

            metrics = start_metrics_server(
                self.settings.metrics_port,
                on_loop(self.loop, self.status),
                host=self.settings.metrics_host,
            )
            log.info("metrics on %s", metrics.url)
        server = await self.loop.create_unix_server(lambda: _Conn(self), sock=sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                self.loop.add_signal_handler(sig, self.request_stop)
        self.events.write(
            "coordinator.start", pid=os.getpid(), socket=self.settings.socket_path,
            settings=self.settings.public(),
        )  # fmt: skip
        await self.read()
        monitor = self.loop.create_task(self._monitor())
        servers = [server]
        if endpoint is not None:
            self._spawn(self._guard_endpoint(endpoint, servers))

        from .psi import Watch  # a memory stall wakes the monitor at once (PSI triggers)

        wake, loop = self._wake, self.loop
        psi_watch = Watch(
            lambda: loop.call_soon_threadsafe(wake.set), f"{self.settings.proc}/pressure/memory"
        )
        if ready is not None:
            ready()
        try:
            await self._stopping.wait()
        finally:
            for srv in servers:
                srv.close()
            for c in list(self.conns.values()):
                if c.transport is not None:
                    if c.agent is not None:  # whether its launcher may start another
                        c.send(p.Shutdown(hold=self._stop_holds))
                    c.transport.close()
            monitor.cancel()
            psi_watch.close()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await monitor
            if metrics is not None:
                await asyncio.to_thread(metrics.close)
            self.events.write("coordinator.stop", pid=os.getpid())
            self.events.close()

    async def _guard_endpoint(self, endpoint: Endpoint, servers: list[asyncio.Server]) -> None:
        """Every ``socket_check_s``: keep the socket path leading here (a /tmp cleaner may
        delete the socket, the lock or the directory), or stop if another coordinator took
        the path meanwhile, so that there is always exactly one pool."""
        assert self._stopping is not None
        failing = False  # said once until it works again: a planted file must not fill the log
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.socket_check_s)
            try:
                outcome = await asyncio.to_thread(endpoint.check)
            except (OSError, SocketSecurityError) as e:
                if not failing:
                    log.warning("cannot restore the socket %s: %s", endpoint.socket_path, e)
                failing = True
                continue
            failing = False
            if outcome == Endpoint.LOST:
                log.warning(
                    "another coordinator took %s (its lock was deleted): stopping, "
                    "its agents reconnect there", endpoint.socket_path,
                )  # fmt: skip
                self.events.write("coordinator.superseded", "warning", pid=os.getpid())
                self.request_stop()
                return
            if outcome == Endpoint.REBOUND:
                servers.append(
                    await self.loop.create_unix_server(lambda: _Conn(self), sock=endpoint.sock)
                )
                servers.pop(0).close()  # listening on a deleted path: nobody can reach it
                log.warning("the socket %s was deleted: bound it again", endpoint.socket_path)
                self.events.write("coordinator.rebound", "warning", socket=endpoint.socket_path)
            self.events.reopen_if_moved()
            if await asyncio.to_thread(reopen_log_if_deleted, endpoint.socket_path):
                log.warning("coordinator.log was deleted: logging to a new one")


_HANDLERS: dict[type, Callable[[Coordinator, _Conn, Any], None]] = {
    p.Ping: Coordinator._on_ping,
    p.Register: Coordinator._on_register,
    p.Report: Coordinator._on_report,
    p.Event: Coordinator._on_event,
    p.Deregister: Coordinator._on_deregister,
    p.Service: Coordinator._on_service,
    p.ServiceClose: Coordinator._on_service_close,
    p.Stats: Coordinator._on_stats,
    p.Evicted: Coordinator._on_answer,
    p.HeapResult: Coordinator._on_answer,
    p.Status: Coordinator._on_status,
    p.Cleanup: Coordinator._on_cleanup,
    p.Heap: Coordinator._on_heap,
    p.Error: Coordinator._on_error,
    p.Admit: lambda coord, conn, msg: coord.admission.request(conn, msg),
    p.Shutdown: lambda coord, conn, msg: coord.lifecycle.on_shutdown(conn, msg),
}


def _severity(level: str) -> str:
    return {"warning": "warning", "critical": "critical"}.get(level, "info")


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# -- running the daemon ------------------------------------------------------------------


def protect_from_oom(score: int) -> bool:
    """Lower our ``oom_score_adj`` so the OOM killer prefers the agents; True if it took.

    Needs root with CAP_SYS_RESOURCE; some kernels ignore the write silently, so the value
    is read back.
    """
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(score))
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read()) == score
    except (OSError, ValueError):
        return False


def run(settings: CoordinatorSettings, *, ready: Callable[[], None] | None = None) -> int:
    """Run a coordinator in the foreground until SIGTERM/SIGINT. Returns the exit status.

    Another coordinator already serving this socket is not an error: it returns 0 at once.
    """
    try:
        paths.prepare_dir(settings.socket_path)
        endpoint = Endpoint(settings.socket_path)
    except AlreadyRunning:
        log.info("a coordinator already serves %s", settings.socket_path)
        return 0
    except OSError as e:  # EACCES, EADDRINUSE, a read-only directory: one line, exit 1
        raise PmrunError(
            f"cannot serve {paths.shown(settings.socket_path)}: {e.strerror or e}"
        ) from None
    try:
        if protect_from_oom(settings.oom_score_adj):
            log.info("oom_score_adj set to %d", settings.oom_score_adj)
        elif os.geteuid() == 0:
            log.info("could not lower oom_score_adj (no CAP_SYS_RESOURCE?)")
        coord = Coordinator(settings)
        log.info(
            "serving %s (pool %d bytes, pid %d, events %s%s)",
            settings.socket_path, settings.pool_bytes, os.getpid(), settings.events_file,
            ", dry run" if settings.dry_run else "",
        )  # fmt: skip
        asyncio.run(coord.serve(endpoint.sock, ready=ready, endpoint=endpoint))
        log.info("stopped")
        return 0
    finally:
        endpoint.close()
