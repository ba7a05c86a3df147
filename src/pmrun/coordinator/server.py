"""The coordinator: one asyncio loop serving a Unix socket and watching memory.

:class:`Coordinator` holds the daemon's parts and wires them together: the registered
agents and services (:mod:`.pool`), the connections (:mod:`.connection`), what each
message does (:mod:`.handlers`), requests to services (:mod:`.broadcast`), the pressure
loop (:mod:`.monitor`), pause before kill (:mod:`.suspend`), wait before start
(:mod:`.admission`) and idle exit (:mod:`.lifecycle`). Here: accepting and losing
connections, what a launcher's lost connection means for its agent, the status, and
serving until asked to stop. Running it as a daemon is :mod:`.daemon`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .. import _procfs
from ..events import EventLog
from . import handlers, lifecycle, orphans, policy
from . import protocol as p
from .admission import Admission
from .broadcast import Broadcaster
from .connection import Connection
from .daemon import guard_endpoint, protect_from_oom, run, stop_on_signals
from .endpoint import Endpoint
from .monitor import Monitor
from .orphans import kill_orphans
from .policy import Level
from .pool import AgentEntry, Pool
from .settings import CoordinatorSettings
from .suspend import Suspender

__all__ = ["Coordinator", "CoordinatorSettings", "protect_from_oom", "run"]

log = logging.getLogger("pmrun.coordinator")

REFUSAL_LOG_S = 1.0  # a refused uid is logged at most this often: a flood must not fill the log


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
        self.conns: dict[int, Connection] = {}
        self.monitor = Monitor(self)  # the pressure loop
        self.broadcaster = Broadcaster(self)  # evict and heap requests to services
        self.suspend = Suspender(self, settings.pause)  # pause before kill
        self.admission = Admission(self)  # wait before start
        self.lifecycle = lifecycle.Lifecycle(self, settings.idle_exit_s)  # stop, idle exit
        self._last_refusal_logged = -1e18
        self._started = clock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._stop_holds = True  # see request_stop
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serve()

    def uptime_s(self) -> float:
        return self.clock() - self._started

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the coordinator cancels when it stops."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections ---------------------------------------------------------------------

    def accepted(self, conn: Connection) -> None:
        my_uid = os.geteuid()
        if conn.uid not in (my_uid, 0):
            now = self.clock()
            if now - self._last_refusal_logged > REFUSAL_LOG_S:
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
        conn.arm_timer()

    def dispatch(self, conn: Connection, msg: p.Message) -> None:
        handlers.dispatch(self, conn, msg)

    def lost(self, conn: Connection) -> None:
        self.conns.pop(conn.id, None)
        self.admission.drop(conn)
        for fut in conn.pending.values():
            if not fut.done():
                fut.cancel()
        for svc in self.pool.drop_connection(conn.id):
            self.events.write("service.lost", service=svc.name, pid=svc.pid, agent=svc.agent_id)
        agent = conn.agent
        if agent is None:
            return
        if agent.conn is conn:
            agent.conn = None  # nothing reaches its launcher any more
        if not conn.deregistered and not self.stopping():
            self.remove_agent(agent)
            self.spawn(self._after_launcher_lost(agent, conn.pid, conn.pid_start))

    async def _after_launcher_lost(self, agent: AgentEntry, pid: int, start: int | None) -> None:
        """A launcher's connection dropped without a deregister: if the launcher died, kill
        what is provably still its tree (its grandchildren may have escaped the parent-death
        signal). A live launcher only lost its connection and will register again.

        A launcher killed with SIGKILL closes its sockets before /proc shows it dead, so a
        launcher that still looks alive is looked at again for a moment.
        """
        proc = self.settings.proc
        alive = _procfs.same_process(pid, start, proc)
        for delay in (0.02, 0.05, 0.1, 0.2):
            if not alive:
                break
            await asyncio.sleep(delay)
            alive = _procfs.same_process(pid, start, proc)
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

    def remove_agent(self, agent: AgentEntry) -> None:
        """Forget ``agent`` everywhere (no-op if it was replaced or removed already)."""
        if self.pool.remove(agent):
            self.suspend.forget(agent.agent_id)
            self.admission.forget(agent.agent_id)

    # -- the monitor (kept here for tests and benchmarks that drive it) -------------------

    async def step(self) -> None:
        """One pass of the monitor (see :mod:`.monitor`)."""
        await self.monitor.step()

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything ``pmrun status`` shows; JSON-serializable as is."""
        s = self.settings
        now = self.clock()
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
            **self.monitor.status(),
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

    # -- serving -------------------------------------------------------------------------

    def request_stop(self, *, hold: bool = True) -> None:
        """Stop serving. ``hold``: a stop the launchers must not undo by starting another
        coordinator (not so for an idle exit, which a registration may have raced)."""
        self._stop_holds = hold
        self._stopping.set()

    async def listen(self, sock: socket.socket) -> asyncio.Server:
        """Accept connections on the listening ``sock``."""
        return await self.loop.create_unix_server(lambda: Connection(self), sock=sock)

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
        servers = [await self.listen(sock)]
        stop_on_signals(self.loop, self.request_stop)
        self.events.write(
            "coordinator.start", pid=os.getpid(), socket=self.settings.socket_path,
            settings=self.settings.public(),
        )  # fmt: skip
        await self.monitor.read()
        monitor = self.loop.create_task(self.monitor.run(self._stopping))
        if endpoint is not None:
            self.spawn(guard_endpoint(self, endpoint, servers))

        from .psi import Watch  # a memory stall wakes the monitor at once (PSI triggers)

        wake, loop = self.monitor.wake, self.loop
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
            for agent in self.pool.agents.values():  # whether its launcher may start another
                agent.send(p.Shutdown(hold=self._stop_holds))
            for c in list(self.conns.values()):
                if c.transport is not None:
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
