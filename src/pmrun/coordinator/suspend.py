"""Pause before kill: the coordinator's side of freezing agents instead of stopping them.

The decisions are :mod:`.policy`'s (:func:`~.policy.choose_pauses`,
:func:`~.policy.choose_resume`, :func:`~.policy.held_aside_bytes`); this module keeps what
they need (when each agent was paused, its recent growth, whether it opted out), sends
``pause``/``resume`` on the agent's own launcher connection and writes the events. The
launcher freezes its own tree (``pmrun._pause``) and thaws it by itself when the
connection drops, so nothing here can leave an agent frozen.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import policy
from . import protocol as p

if TYPE_CHECKING:
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")


@dataclass
class _Track:
    """What the pause decision remembers of one agent."""

    pausable: bool = False
    history: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )  # (monotonic, pool bytes)
    paused_at: float | None = None  # monotonic
    paused_wall: float | None = None
    paused_bytes: int = 0
    pauses: int = 0
    paused_total_s: float = 0.0


class Suspender:
    """Per-agent pause state of one coordinator, and the orders that change it."""

    def __init__(self, coord: Coordinator, settings: policy.PauseSettings) -> None:
        self.coord = coord
        self.settings = settings
        self._tracks: dict[str, _Track] = {}
        self._last_resume: float | None = None

    # -- bookkeeping (called by the server) -------------------------------------------------

    def registered(self, agent_id: str, pausable: bool, rss_bytes: int, now: float) -> None:
        """A (re-)registration: a launcher that reconnects has resumed its tree by itself.

        Its figure then starts the growth history: an agent that grows before the next
        monitor step would otherwise show none.
        """
        t = self._tracks[agent_id] = _Track(pausable=pausable)
        t.history.append((now, rss_bytes))

    def forget(self, agent_id: str) -> None:
        self._tracks.pop(agent_id, None)

    def _track(self, agent_id: str) -> _Track:
        return self._tracks.setdefault(agent_id, _Track())

    def observe(self, now: float, use_pss: bool) -> None:
        """Record each agent's figure (for its growth); called once per monitor step."""
        window = self.settings.growth_window_s
        for a in self.coord.pool.agents.values():
            h = self._track(a.agent_id).history
            h.append((now, a.pool_bytes(use_pss)))
            while h and now - h[0][0] > window:
                h.popleft()
        for gone in set(self._tracks) - set(self.coord.pool.agents):
            del self._tracks[gone]

    def _growth(self, t: _Track, now_bytes: int) -> int:
        return now_bytes - min((b for _, b in t.history), default=now_bytes)

    def view(self, now: float, use_pss: bool) -> list[policy.Pausable]:
        """Every agent as the pause decision sees it."""
        out = []
        for a in self.coord.pool.agents.values():
            t = self._track(a.agent_id)
            b = a.pool_bytes(use_pss)
            out.append(
                policy.Pausable(
                    agent_id=a.agent_id,
                    name=a.name,
                    bytes=b,
                    priority=a.priority,
                    started=a.started,
                    growth_bytes=self._growth(t, b),
                    max_rss=a.max_rss,
                    pausable=t.pausable,
                    paused_at=t.paused_at,
                    stopping=a.stop_sent_at is not None or a.state == "stopping",
                    rss_bytes=a.rss_bytes,
                )
            )
        return out

    def held_bytes(self, now: float, use_pss: bool) -> int:
        """Memory held aside by paused agents (and runaways): not a reason to stop anyone."""
        if not self.settings.enabled:
            return 0
        return policy.held_aside_bytes(self.view(now, use_pss), now, self.settings.max_pause_s)

    def paused(self) -> list[str]:
        return [k for k, t in self._tracks.items() if t.paused_at is not None]

    # -- orders ----------------------------------------------------------------------------

    def pause_for(self, need: policy.Need, r: policy.Readings, now: float) -> bool:
        """Pause the fewest growing agents whose memory covers ``need``; True if any was."""
        if not self.settings.enabled:
            return False
        use_pss = self.coord.monitor.use_pss
        view = self.view(now, use_pss)
        chosen = policy.choose_pauses(view, need.bytes, self.settings)
        if not chosen:
            return False
        paused_any = False
        figures = dict(policy.summarize(r))
        for c in chosen:
            agent = self.coord.pool.agents.get(c.agent_id)
            if agent is None:
                continue
            detail = {
                "needed_bytes": need.bytes,
                "agent_bytes": c.bytes,
                "growth_bytes": c.growth_bytes,
                "signal": need.signal,
                "max_pause_s": self.settings.max_pause_s,
                **policy.order_figures(r),
            }
            delivered = agent.send(p.Pause(reason=need.reason, detail=detail))
            if not delivered:  # no connection to its launcher: nobody could pause it
                continue
            t = self._track(c.agent_id)
            t.paused_at, t.paused_wall, t.paused_bytes = now, self.coord.wall(), c.bytes
            t.pauses += 1
            agent.state = "paused"
            self.coord.events.write(
                "agent.pause", "warning", agent=agent.agent_id, name=agent.name,
                pid=agent.launcher_pid, reason=need.reason, bytes=c.bytes,
                growth_bytes=c.growth_bytes, needed_bytes=need.bytes, delivered=delivered,
                candidates=[v.to_dict() for v in view if v.paused_at is None],
                figures=figures,
            )  # fmt: skip
            log.warning("pausing %s (%s): %d bytes over", agent.name, need.reason, need.bytes)
            paused_any = True
        return paused_any

    def resume_step(self, r: policy.Readings, now: float) -> None:
        """Resume one paused agent if headroom is back (see :func:`~.policy.choose_resume`)."""
        view = self.view(now, self.coord.monitor.use_pss)
        pick = policy.choose_resume(view, r, now, self._last_resume, self.settings)
        if pick is None:
            return
        self.resume(pick.agent_id, now, r, why="headroom")

    def resume(self, agent_id: str, now: float, r: policy.Readings | None, why: str) -> None:
        t = self._tracks.get(agent_id)
        agent = self.coord.pool.agents.get(agent_id)
        if t is None or t.paused_at is None or agent is None:
            return
        paused_s = now - t.paused_at
        t.paused_total_s += paused_s
        t.paused_at = t.paused_wall = None
        self._last_resume = now
        detail: dict[str, Any] = {"paused_s": round(paused_s, 3), "why": why}
        if r is not None:
            detail.update(policy.order_figures(r))
        delivered = agent.send(p.Resume(detail=detail))
        if agent.state == "paused":
            agent.state = "running"
        self.coord.events.write(
            "agent.resume", agent=agent.agent_id, name=agent.name, pid=agent.launcher_pid,
            delivered=delivered, bytes=agent.pool_bytes(self.coord.monitor.use_pss), **detail,
        )  # fmt: skip
        log.info("resuming %s after %.1f s (%s)", agent.name, paused_s, why)

    # -- status ----------------------------------------------------------------------------

    def annotate(self, agents: list[dict[str, Any]], now: float) -> None:
        """Add ``paused_s`` (None when running) and pause counts to status rows."""
        for d in agents:
            t = self._tracks.get(str(d.get("id")))
            if t is None:
                d.setdefault("paused_s", None)
                continue
            d["paused_s"] = None if t.paused_at is None else round(now - t.paused_at, 3)
            if t.paused_at is not None and d.get("state") != "stopping":
                d["state"] = "paused"
            d["pausable"] = t.pausable
            d["pauses"] = t.pauses
            d["paused_total_s"] = round(
                t.paused_total_s + (0.0 if t.paused_at is None else now - t.paused_at), 3
            )
