"""The coordinator's state: registered agents and services, and what the pool counts.

What the pool counts
--------------------
The pool is the sum, over registered agents, of each agent's memory:

- far from the thresholds, the figure its launcher reports (the tree's RSS, or for a
  cgroup backend the group's anonymous memory plus swap): cheap, sent at most every
  few hundred ms;
- near them (from :data:`PSS_ZONE` of the pool, or at the warning level of any signal),
  the *proportional set size* of the agent's reported processes, read by the coordinator
  from ``/proc/PID/smaps_rollup``: a page shared by N processes counts 1/N to each, so
  forked workers and shared libraries are not counted twice. Between two PSS reads
  (at most one per second) the figure follows the reported RSS's changes. An agent whose
  processes cannot be read (no pids reported, e.g. a cgroup backend) keeps its reported
  figure.

System memory (container-aware) is :func:`pmrun.cgroups.system_memory`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _procfs
from .policy import Candidate

if TYPE_CHECKING:
    from . import protocol as p
    from .connection import Connection

PSS_ZONE = 0.80  # pool used / pool limit from which PSS replaces RSS


@dataclass
class AgentEntry:
    """One registered agent. Sizes in bytes, times in seconds."""

    agent_id: str
    name: str
    launcher_pid: int
    launcher_start: int | None  # the launcher's start time (ticks): its identity with the pid
    child_pid: int
    uid: int  # the launcher's uid from SO_PEERCRED, not from the message
    argv: list[str]
    max_rss: int | None
    warn_rss: int | None
    priority: int
    backend: dict[str, Any]
    started: float  # unix time
    rss_bytes: int = 0
    peak_bytes: int = 0
    pids: list[list[int]] = field(default_factory=list)
    state: str = "running"
    pss_bytes: int | None = None  # last PSS of its processes
    rss_at_pss: int = 0  # its reported figure when PSS was read
    stop_reason: str | None = None
    stop_sent_at: float | None = None  # monotonic
    # Its launcher's connection while both are registered (the pool links the two).
    conn: Connection | None = field(default=None, repr=False, compare=False)

    def send(self, msg: p.Message) -> bool:
        """Send ``msg`` to its launcher; False when no connection leads there."""
        if self.conn is None:
            return False
        self.conn.send(msg)
        return True

    def pool_bytes(self, use_pss: bool) -> int:
        """What this agent counts in the pool (see the module docstring)."""
        if use_pss and self.pss_bytes is not None:
            return max(0, self.pss_bytes + (self.rss_bytes - self.rss_at_pss))
        return self.rss_bytes

    def to_status(self, now_wall: float) -> dict[str, Any]:
        return {
            "id": self.agent_id,
            "name": self.name,
            "pid": self.launcher_pid,
            "child_pid": self.child_pid,
            "uid": self.uid,
            "argv": self.argv,
            "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes,
            "peak_bytes": self.peak_bytes,
            "warn_bytes": self.warn_rss,
            "max_bytes": self.max_rss,
            "priority": self.priority,
            "started": self.started,
            "age_s": round(max(0.0, now_wall - self.started), 3),
            "state": self.state,
            "stop_reason": self.stop_reason,
            "backend": self.backend,
            "processes": len(self.pids),
        }


@dataclass
class ServiceEntry:
    """One registered cleanup handler (a process may register several on one connection)."""

    name: str
    pid: int
    agent_id: str | None
    conn_id: int
    stats: dict[str, Any] = field(default_factory=dict)
    rss_bytes: int = 0  # the service process's RSS at its last stats
    last_eviction: dict[str, Any] | None = None

    def to_status(self) -> dict[str, Any]:
        held = self.stats.get("bytes") if isinstance(self.stats, dict) else None
        return {
            "name": self.name,
            "pid": self.pid,
            "agent": self.agent_id,
            "bytes": held if isinstance(held, int) else None,
            "process_rss_bytes": self.rss_bytes,
            "stats": self.stats,
            "last_eviction": self.last_eviction,
        }


class Pool:
    """Agents by id and services by (connection, name).

    Read them freely; change them through the methods, which keep the running total of
    the reported figures (:attr:`reported_bytes`) and the agent-connection links.
    """

    def __init__(self) -> None:
        self.agents: dict[str, AgentEntry] = {}
        self.services: dict[tuple[int, str], ServiceEntry] = {}
        self.reported_bytes = 0  # sum of the agents' reported figures, kept on every change

    # -- agents ----------------------------------------------------------------------------

    def add(self, agent: AgentEntry, conn: Connection) -> None:
        """Register ``agent``, whose launcher speaks on ``conn`` (its id must be free)."""
        assert agent.agent_id not in self.agents, agent.agent_id
        self.agents[agent.agent_id] = agent
        self.reported_bytes += agent.rss_bytes
        agent.conn, conn.agent, conn.deregistered = conn, agent, False

    def remove(self, agent: AgentEntry) -> bool:
        """Forget ``agent`` and unlink its connection; False if it was not registered."""
        if self.agents.get(agent.agent_id) is not agent:
            return False
        del self.agents[agent.agent_id]
        self.reported_bytes -= agent.rss_bytes
        if agent.conn is not None and agent.conn.agent is agent:
            agent.conn.agent = None
        agent.conn = None
        return True

    def report(
        self, agent: AgentEntry, rss: int, peak: int, pids: list[list[int]], state: str
    ) -> None:
        """A launcher's report: its tree's figure, peak, processes (kept if none) and state."""
        if self.agents.get(agent.agent_id) is agent:
            self.reported_bytes += rss - agent.rss_bytes
        agent.rss_bytes, agent.peak_bytes = rss, peak
        if pids:
            agent.pids = pids
        agent.state = state

    def credit(self, agent_id: str | None, drop_bytes: int) -> None:
        """Take what a service of the agent measured it freed off the agent's figure, until
        the agent's next report."""
        agent = self.agents.get(agent_id or "")
        if agent is not None and drop_bytes > 0:
            credit = min(drop_bytes, agent.rss_bytes)
            agent.rss_bytes -= credit
            self.reported_bytes -= credit

    def rss_total(self) -> int:
        return sum(a.rss_bytes for a in self.agents.values())

    def used(self, use_pss: bool) -> int:
        return sum(a.pool_bytes(use_pss) for a in self.agents.values())

    def stopping(self, now: float, pending_s: float) -> list[AgentEntry]:
        """Agents told to stop less than ``pending_s`` ago: their memory is on its way out."""
        return [
            a
            for a in self.agents.values()
            if a.stop_sent_at is not None and now - a.stop_sent_at < pending_s
        ]

    def candidates(self, use_pss: bool, now: float, pending_s: float) -> list[Candidate]:
        """Agents that may be stopped: all but those already stopping."""
        busy = {a.agent_id for a in self.stopping(now, pending_s)}
        return [
            Candidate(a.agent_id, a.name, a.pool_bytes(use_pss), a.priority, a.started)
            for a in self.agents.values()
            if a.agent_id not in busy and a.state not in ("exited", "stopping")
        ]

    def find_agents(self, name_or_id: str) -> list[AgentEntry]:
        """Agents whose id or name is ``name_or_id``."""
        if name_or_id in self.agents:
            return [self.agents[name_or_id]]
        return [a for a in self.agents.values() if a.name == name_or_id]

    def services_of(self, agent_ids: set[str] | None) -> list[ServiceEntry]:
        """Services of the given agents (every service when None)."""
        if agent_ids is None:
            return list(self.services.values())
        return [s for s in self.services.values() if s.agent_id in agent_ids]

    def pss_snapshot(self) -> dict[str, tuple[list[int], int]]:
        """What a PSS refresh needs: agent id -> (pids, its reported figure now)."""
        return {
            a.agent_id: ([p for p, _ in a.pids], a.rss_bytes)
            for a in self.agents.values()
            if a.pids
        }

    def apply_pss(self, measured: dict[str, tuple[int | None, int]]) -> None:
        for agent_id, (pss, rss_then) in measured.items():
            a = self.agents.get(agent_id)
            if a is not None and pss is not None:
                a.pss_bytes, a.rss_at_pss = pss, rss_then

    # -- services --------------------------------------------------------------------------

    def add_service(
        self, conn_id: int, name: str, pid: int, agent_id: str | None, limit: int
    ) -> bool:
        """Register (or register again) a service; False if its connection has ``limit``."""
        key = (conn_id, name)
        if key not in self.services and len(self.services_on(conn_id)) >= limit:
            return False
        self.services[key] = ServiceEntry(name, pid, agent_id, conn_id)
        return True

    def close_service(self, conn_id: int, name: str) -> ServiceEntry | None:
        return self.services.pop((conn_id, name), None)

    def services_on(self, conn_id: int) -> list[ServiceEntry]:
        return [s for k, s in self.services.items() if k[0] == conn_id]

    def drop_connection(self, conn_id: int) -> list[ServiceEntry]:
        """Forget the services a closed connection hosted; returns them."""
        gone = self.services_on(conn_id)
        for svc in gone:
            del self.services[(conn_id, svc.name)]
        return gone

    def record_stats(self, conn_id: int, stats: dict[str, Any], rss_bytes: int) -> None:
        """A service process's stats (per service name) and its RSS."""
        for name, s in stats.items():
            svc = self.services.get((conn_id, name))
            if svc is not None:
                svc.stats = s if isinstance(s, dict) else {}
                svc.rss_bytes = rss_bytes

    # -- status ----------------------------------------------------------------------------

    def status(self, now_wall: float) -> dict[str, Any]:
        agents = []
        for a in sorted(self.agents.values(), key=lambda a: a.started):
            d = a.to_status(now_wall)
            d["services"] = [s.to_status() for s in self.services_of({a.agent_id})]
            agents.append(d)
        known = set(self.agents)
        loose = [s.to_status() for s in self.services.values() if s.agent_id not in known]
        return {"agents": agents, "services": loose}


def measure_pss(
    snapshot: dict[str, tuple[list[int], int]], proc: str = _procfs.PROC
) -> dict[str, tuple[int | None, int]]:
    """PSS of each agent's processes (blocking I/O: run it off the event loop).

    An agent none of whose processes could be read gets None (keep its reported figure).
    """
    out: dict[str, tuple[int | None, int]] = {}
    for agent_id, (pids, rss_then) in snapshot.items():
        total, readable = 0, False
        for pid in pids:
            try:
                total += _procfs.uss_pss(pid, proc)[1]
                readable = True
            except (_procfs.ProcessGone, OSError, ValueError):
                continue
        out[agent_id] = (total if readable else None, rss_then)
    return out
