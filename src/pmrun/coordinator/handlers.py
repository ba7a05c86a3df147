"""What the coordinator does with each message a client sends: one function a type.

Each handler answers on the connection the message came on; changes to the registered
agents and services go through the :class:`~.pool.Pool`. Requests that wait for
services (``cleanup``, ``heap``) run as tasks, a few at a time per connection.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..events import launcher_event_level
from . import protocol as p
from .pool import AgentEntry

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")

Handler = Callable[["Coordinator", "Connection", Any], None]


def dispatch(coord: Coordinator, conn: Connection, msg: p.Message) -> None:
    """Handle one decoded message (a reply-only type is answered with ``unexpected``)."""
    handler = HANDLERS.get(type(msg))
    if handler is None:
        conn.send(p.Error(code="unexpected", message=f"{msg.TYPE} is not a request"))
        return
    handler(coord, conn, msg)


# -- launchers ---------------------------------------------------------------------------


def on_ping(coord: Coordinator, conn: Connection, msg: p.Ping) -> None:
    conn.send(p.Pong(id=msg.id, pid=os.getpid(), uptime_s=round(coord.uptime_s(), 3)))


def on_register(coord: Coordinator, conn: Connection, msg: p.Register) -> None:
    old = coord.pool.agents.get(msg.agent_id)
    if old is not None:  # the same agent on a new connection: forget the old one
        coord.remove_agent(old)
    if conn.agent is not None and conn.agent.agent_id != msg.agent_id:
        coord.remove_agent(conn.agent)
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
    coord.pool.add(agent, conn)
    coord.suspend.registered(agent.agent_id, msg.pausable, msg.rss, coord.clock())
    conn.send(p.Ok(id=msg.id, of="register", detail={"pool_bytes": coord.settings.pool_bytes}))
    coord.events.write(
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
    coord.monitor.maybe_wake()


def on_report(coord: Coordinator, conn: Connection, msg: p.Report) -> None:
    if conn.agent is None:
        conn.send(p.Error(code="not-registered", message="report before register"))
        return
    coord.pool.report(conn.agent, msg.rss, msg.peak, msg.pids, msg.state)
    coord.monitor.maybe_wake()


def on_event(coord: Coordinator, conn: Connection, msg: p.Event) -> None:
    agent = conn.agent
    reserved = ("ts", "level", "kind", "agent", "name")
    fields = {k: v for k, v in msg.fields.items() if k not in reserved}
    coord.events.write(
        f"launcher.{msg.kind}"[:80],
        launcher_event_level(msg.kind),
        agent=agent.agent_id if agent else None,
        name=agent.name if agent else None,
        **fields,
    )


def on_deregister(coord: Coordinator, conn: Connection, msg: p.Deregister) -> None:
    agent = conn.agent
    if agent is not None:
        coord.remove_agent(agent)
        conn.deregistered = True
        coord.events.write(
            "agent.deregister", agent=agent.agent_id, name=agent.name, report=msg.report
        )
        coord.admission.note_exit(agent.name, msg.report)
        coord.admission.pump()
    conn.send(p.Ok(id=msg.id, of="deregister"))


# -- services ----------------------------------------------------------------------------


def on_service(coord: Coordinator, conn: Connection, msg: p.Service) -> None:
    limit = coord.settings.max_services_per_connection
    if not coord.pool.add_service(conn.id, msg.name, msg.pid, msg.agent_id, limit):
        conn.send(
            p.Error(id=msg.id, code="busy", message=f"more than {limit} services on one connection")
        )
        return
    conn.send(p.Ok(id=msg.id, of="service"))
    coord.events.write("service.register", service=msg.name, pid=msg.pid, agent=msg.agent_id)


def on_service_close(coord: Coordinator, conn: Connection, msg: p.ServiceClose) -> None:
    svc = coord.pool.close_service(conn.id, msg.name)
    if svc is not None:
        coord.events.write("service.close", service=svc.name, pid=svc.pid, agent=svc.agent_id)


def on_stats(coord: Coordinator, conn: Connection, msg: p.Stats) -> None:
    coord.pool.record_stats(conn.id, msg.services, msg.rss)
    on_answer(coord, conn, msg)


def on_answer(coord: Coordinator, conn: Connection, msg: p.Message) -> None:
    """An answer to a request of ours (``evicted``, ``heap_result``, ``stats``, ``error``)."""
    mid = getattr(msg, "id", None)
    fut = conn.pending.get(mid) if isinstance(mid, int) else None
    if fut is not None and not fut.done():
        fut.set_result((msg, time.monotonic()))  # real time, as the evict's elapsed_s


def on_error(coord: Coordinator, conn: Connection, msg: p.Error) -> None:
    log.debug("pid %d reports an error: %s %s", conn.pid, msg.code, msg.message)
    on_answer(coord, conn, msg)


# -- queries -----------------------------------------------------------------------------


def on_status(coord: Coordinator, conn: Connection, msg: p.Status) -> None:
    conn.send(p.StatusResult(id=msg.id, status=coord.status()))


def _agent_filter(coord: Coordinator, agent: str | None) -> set[str] | None:
    """The agent ids a request names (None: every agent)."""
    if agent is None:
        return None
    ids = {a.agent_id for a in coord.pool.find_agents(agent)}
    # A service may name an agent whose launcher is not (yet) registered.
    ids.update(s.agent_id for s in coord.pool.services.values() if s.agent_id == agent)
    return ids


def _spawn_for(
    coord: Coordinator, conn: Connection, msg: p.Cleanup | p.Heap, coro: Coroutine[Any, Any, None]
) -> None:
    """Run a request that waits for services, a few at a time per connection."""
    limit = coord.settings.max_requests_per_connection
    if conn.in_flight >= limit:
        coro.close()
        conn.send(p.Error(id=msg.id, code="busy", message=f"more than {limit} requests in flight"))
        return
    conn.in_flight += 1

    async def run() -> None:
        try:
            await coro
        finally:
            conn.in_flight -= 1

    coord.spawn(run())


def on_cleanup(coord: Coordinator, conn: Connection, msg: p.Cleanup) -> None:
    _spawn_for(coord, conn, msg, _cleanup(coord, conn, msg))


def on_heap(coord: Coordinator, conn: Connection, msg: p.Heap) -> None:
    _spawn_for(coord, conn, msg, _heap(coord, conn, msg))


def _no_such_agent(conn: Connection, msg: p.Cleanup | p.Heap, ids: set[str] | None) -> bool:
    """Answer ``no-such-agent`` when the request names an agent nobody knows."""
    if ids is not None and not ids:
        conn.send(p.Error(id=msg.id, code="no-such-agent", message=f"no agent {msg.agent!r}"))
        return True
    return False


async def _cleanup(coord: Coordinator, conn: Connection, msg: p.Cleanup) -> None:
    ids = _agent_filter(coord, msg.agent)
    if _no_such_agent(conn, msg, ids):
        return
    fraction = coord.settings.evict_fraction if msg.fraction is None else msg.fraction
    coord.events.write("cleanup.request", pid=conn.pid, agent=msg.agent, fraction=fraction)
    outcome = await coord.broadcaster.evict(fraction, "manual", "cleanup", agent_ids=ids)
    conn.send(
        p.CleanupResult(
            id=msg.id,
            fraction=fraction,
            elapsed_s=outcome["elapsed_s"],
            results=outcome["answered"] + outcome["no_answer"],
        )
    )


async def _heap(coord: Coordinator, conn: Connection, msg: p.Heap) -> None:
    ids = _agent_filter(coord, msg.agent)
    if _no_such_agent(conn, msg, ids):
        return
    results = await coord.broadcaster.heap(ids, msg.limit)
    conn.send(p.HeapResult(id=msg.id, results=results))


def on_admit(coord: Coordinator, conn: Connection, msg: p.Admit) -> None:
    coord.admission.request(conn, msg)


def on_shutdown(coord: Coordinator, conn: Connection, msg: p.Shutdown) -> None:
    coord.lifecycle.on_shutdown(conn, msg)


HANDLERS: dict[type, Handler] = {
    p.Ping: on_ping,
    p.Register: on_register,
    p.Report: on_report,
    p.Event: on_event,
    p.Deregister: on_deregister,
    p.Service: on_service,
    p.ServiceClose: on_service_close,
    p.Stats: on_stats,
    p.Evicted: on_answer,
    p.HeapResult: on_answer,
    p.Status: on_status,
    p.Cleanup: on_cleanup,
    p.Heap: on_heap,
    p.Error: on_error,
    p.Admit: on_admit,
    p.Shutdown: on_shutdown,
}
