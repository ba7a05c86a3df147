"""The coordinator's lifecycle beyond serving: a clean stop on request, and exiting when idle.

``pmrun coordinator stop`` sends ``shutdown``: the coordinator answers, logs it and stops
as on SIGTERM. Its launchers notice the closed connection, resume any paused agent and go
on enforcing their own limits (and register again if a coordinator serves the socket
later). A coordinator started on demand exits by itself once no agent has been
registered, nobody has waited to start and no connection has been open for
``--idle-exit`` seconds (600 by default when started on demand, never when started by
hand), as ssh-agent's ``-t`` lets keys expire.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import protocol as p

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")

ON_DEMAND_ENV = "PMRUN_ON_DEMAND"  # set by spawn_coordinator for the daemon it starts
ON_DEMAND_IDLE_EXIT_S = 600.0
SHUTDOWN_FLUSH_S = 0.05  # lets the ``ok`` reach the client before the socket closes


def idle_exit_s(config: Any, environ: Mapping[str, str] = os.environ) -> float | None:
    """``coordinator.idle-exit``, or 600 s for a daemon started on demand that was not told."""
    value = config["coordinator.idle-exit"]
    if config.source("coordinator.idle-exit") == "default" and environ.get(ON_DEMAND_ENV) == "1":
        return ON_DEMAND_IDLE_EXIT_S
    return value


def idle_expired(idle_since: float | None, now: float, limit_s: float | None) -> bool:
    """Whether a coordinator idle since ``idle_since`` (None: busy) should exit now."""
    return limit_s is not None and idle_since is not None and now - idle_since >= limit_s


class Lifecycle:
    """Idle tracking and the shutdown request of one coordinator."""

    def __init__(self, coord: Coordinator, idle_exit_s: float | None) -> None:
        self.coord = coord
        self.idle_exit_s = idle_exit_s
        self.idle_since: float | None = coord.clock()

    def busy(self) -> bool:
        c = self.coord
        return bool(c.pool.agents or c.admission.status(0.0) or c.conns)

    def tick(self) -> None:
        """Called after each monitor step: exit once idle for ``idle_exit_s``."""
        now = self.coord.clock()
        if self.busy():
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        if idle_expired(self.idle_since, now, self.idle_exit_s):
            idle_s = round(now - self.idle_since, 3)
            log.info("no agent for %.0f s: exiting (--idle-exit)", idle_s)
            self.coord.events.write("coordinator.idle-exit", idle_s=idle_s)
            self.coord.request_stop(hold=False)  # one that raced in may start another

    def on_shutdown(self, conn: Connection, msg: p.Shutdown) -> None:
        conn.send(p.Ok(id=msg.id, of="shutdown", detail={"pid": os.getpid()}))
        log.info("shutdown requested by pid %d", conn.pid)
        self.coord.events.write(
            "coordinator.shutdown", pid=conn.pid, agents=len(self.coord.pool.agents)
        )
        self.coord.loop.call_later(SHUTDOWN_FLUSH_S, self.coord.request_stop)
