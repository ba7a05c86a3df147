"""The coordinator's monitor: measure, assess the pressure level, and act on it.

Every 0.1 to 0.5 s depending on the headroom left (and at once when a report moves the
pool across a level, or a PSI trigger fires) it reads system memory, PSI and the pool,
and handles pressure in this order:

1. a level rises (warning or critical, with hysteresis): broadcast ``evict`` to every
   service with the level's fraction and wait up to ``settle_s`` for the answers;
2. still over a threshold: pause growing agents if that covers the need; else measure
   again (PSS), work out the bytes that must go, pick victims by the policy and send
   ``stop`` to their launchers; then wait ``cooldown_s`` before stopping more, unless a
   signal is :data:`~.policy.HARD_RATIO` over;
3. every step goes to the event log.

The decisions are :mod:`.policy`'s (:func:`~.policy.assess`, :func:`~.policy.evict_on_rise`,
:func:`~.policy.plan_stop`, :func:`~.policy.choose_victims`); this module measures and acts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import _procfs, cgroups
from ..errors import PmrunError
from . import policy
from . import protocol as p
from .broadcast import severity
from .policy import Level
from .pool import PSS_ZONE, measure_pss

if TYPE_CHECKING:
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")

CGROUP_LAYOUT_S = 60.0  # our own cgroup is looked up again this often: it rarely moves


class Monitor:
    """The pressure state of one coordinator and the loop that keeps it current."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.state = policy.PressureState()
        self.readings: policy.Readings | None = None
        self.psi: dict[str, float] | None = None
        self.system_source = "meminfo"
        self.use_pss = False  # the pool counts PSS (near its limit) rather than RSS
        self.last_stop: float | None = None
        self.last_decision: dict[str, Any] | None = None
        self._pss_at = -1e18
        self._last_sweep = -1e18
        self._cg_layout: cgroups.Layout | None = None
        self._cg_layout_at = -1e18
        self._step_lock = asyncio.Lock()
        self._acting = False
        self.wake = asyncio.Event()

    def maybe_wake(self) -> None:
        """Wake the monitor when the reported total may have moved the pool's level."""
        s = self.coord.settings
        if s.pool_bytes <= 0 or self._acting:
            return
        ratio = self.coord.pool.reported_bytes / s.pool_bytes
        current = self.state.of("pool")
        if policy.level_for(ratio, current, s.hysteresis) > current:
            self.wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Step until ``stopping`` is set; a failing step is logged, never fatal."""
        loop = asyncio.get_running_loop()
        s = self.coord.settings
        while not stopping.is_set():
            sleep_s = policy.next_tick_s(self.readings, s.tick_min_s, s.tick_s)
            timer = loop.call_later(sleep_s, self.wake.set)
            await self.wake.wait()
            timer.cancel()
            self.wake.clear()
            try:
                await self.step()
                await self._sweep_cgroups()
                self.coord.lifecycle.tick()
            except Exception:  # the monitor must never die
                log.exception("monitor step failed")

    async def read(self, *, fresh_pss: bool = False) -> policy.Readings:
        """Measure everything now. PSS is read near the pool limit, at most each pss_interval_s."""
        coord, s = self.coord, self.coord.settings
        now = coord.clock()
        if now - self._cg_layout_at > CGROUP_LAYOUT_S:
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
        self.use_pss = s.pool_bytes > 0 and (
            coord.pool.rss_total() >= PSS_ZONE * s.pool_bytes or self.state.level >= Level.WARNING
        )
        now = coord.clock()
        if self.use_pss and (fresh_pss or now - self._pss_at >= s.pss_interval_s):
            snapshot = coord.pool.pss_snapshot()
            if snapshot:
                measured = await asyncio.to_thread(measure_pss, snapshot, s.proc)
                coord.pool.apply_pss(measured)
            self._pss_at = now
        readings = policy.Readings(
            pool_used_bytes=coord.pool.used(self.use_pss),
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
        """One pass of the monitor: assess, broadcast on a rise, pause or stop if still over."""
        async with self._step_lock:
            self._acting = True
            try:
                await self._step()
            finally:
                self._acting = False

    async def _step(self) -> None:
        coord, h = self.coord, self.coord.settings.hysteresis
        detected = time.monotonic()
        r = await self.read()
        coord.suspend.observe(coord.clock(), self.use_pss)
        previous = self.state
        self.state = policy.assess(r, previous, h)
        if self.state.level != previous.level:
            self._log_pressure(previous, r)
        rise = policy.evict_on_rise(previous, self.state, coord.settings.evict_fraction)
        if rise is not None:
            outcome = await coord.broadcaster.evict(
                rise.fraction, rise.level, rise.reason, detected_at=detected
            )
            if outcome["answered"] or outcome["no_answer"]:  # else nothing could have freed
                r = await self.read(fresh_pss=True)
            before = self.state
            self.state = policy.assess(r, before, h)
            if self.state.level != before.level:  # the services' answers relieved it
                self._log_pressure(before, r)
        if policy.over_threshold(r):
            await self._over_threshold(r)
        else:
            coord.suspend.resume_step(r, coord.clock())
        coord.admission.pump()

    def _log_pressure(self, previous: policy.PressureState, r: policy.Readings) -> None:
        level = self.state.level
        self.coord.events.write(
            "pressure",
            severity(level.label),
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

    def pending_bytes(self) -> int:
        """Memory on its way out (agents told to stop) or held aside (paused agents)."""
        coord = self.coord
        now = coord.clock()
        return sum(
            a.pool_bytes(self.use_pss)
            for a in coord.pool.stopping(now, coord.settings.stop_pending_s)
        ) + coord.suspend.held_bytes(now, self.use_pss)

    async def _over_threshold(self, r: policy.Readings) -> None:
        coord, s = self.coord, self.coord.settings
        now = coord.clock()
        plan = policy.plan_stop(
            r,
            self.state,
            pending_bytes=self.pending_bytes(),
            now_s=now,
            last_stop_s=self.last_stop,
            last_critical_evict_s=coord.broadcaster.last_critical_at,
            cooldown_s=s.cooldown_s,
            evict_fraction=s.evict_fraction,
            hard_ratio=s.hard_ratio,
        )
        if plan is None:
            return
        # Pause at once, on the figures eviction was just judged on: a pause is cheap and
        # undone by a resume, so it does not wait for the fresh measure a stop waits for.
        if not s.dry_run and coord.suspend.pause_for(plan.need, r, now):
            return
        if not plan.may_stop:
            return
        if plan.evict is not None:
            await coord.broadcaster.evict(plan.evict.fraction, plan.evict.level, plan.evict.reason)
        # Check again right before acting, on fresh figures.
        r = await self.read(fresh_pss=True)
        need = policy.bytes_to_free(r, self.pending_bytes())
        if need is None:
            coord.events.write("stop.avoided", "info", **policy.summarize(r))
            return
        now = coord.clock()
        if not s.dry_run and coord.suspend.pause_for(need, r, now):
            return  # paused instead of stopped: no work lost
        self._stop(need, r, now)

    def _stop(self, need: policy.Need, r: policy.Readings, now: float) -> None:
        """Pick victims for ``need`` and tell their launchers to stop them."""
        coord, s = self.coord, self.coord.settings
        candidates = coord.pool.candidates(self.use_pss, now, s.stop_pending_s)
        victims = policy.choose_victims(candidates, need.bytes, s.victim_policy)
        decision = {
            "reason": need.reason,
            "signal": need.signal,
            "needed_bytes": need.bytes,
            "pending_bytes": self.pending_bytes(),
            "policy": s.victim_policy,
            "counted": "pss" if self.use_pss else "rss",
            "dry_run": s.dry_run,
            "candidates": [c.to_dict() for c in candidates],
            "victims": [c.to_dict() for c in victims],
            "figures": dict(policy.summarize(r)),
        }
        self.last_stop = now
        self.last_decision = {**decision, "ts": coord.wall()}
        coord.events.write("stop.decision", "critical", **decision)
        if not victims:
            log.warning("over the %s threshold with no agent left to stop", need.signal)
            return
        for v in victims:
            agent = coord.pool.agents.get(v.agent_id)
            if agent is None:
                continue
            if s.dry_run:
                log.warning("dry run: would stop %s (%s, %d bytes)", v.name, need.reason, v.bytes)
                continue
            detail = {
                "needed_bytes": need.bytes,
                "agent_bytes": v.bytes,
                "signal": need.signal,
                **policy.order_figures(r),
            }
            sent = agent.send(p.Stop(reason=need.reason, detail=detail))
            agent.stop_reason, agent.stop_sent_at, agent.state = need.reason, now, "stopping"
            coord.events.write(
                "stop.sent", "critical", agent=agent.agent_id, name=agent.name,
                pid=agent.launcher_pid, reason=need.reason, bytes=v.bytes, delivered=sent,
            )  # fmt: skip
            log.warning("stopping %s (%s): %d bytes over", agent.name, need.reason, need.bytes)

    async def _sweep_cgroups(self) -> None:
        now = self.coord.clock()
        if now - self._last_sweep < self.coord.settings.orphan_sweep_s:
            return
        self._last_sweep = now
        try:
            cleaned = await asyncio.to_thread(cgroups.cleanup_orphans)
        except Exception as e:  # a cgroup tree in a state we did not foresee: log, carry on
            log.warning("cgroups.cleanup_orphans failed: %s", e)
            return
        if cleaned:
            self.coord.events.write("cgroups.cleaned", "warning", paths=[str(x) for x in cleaned])

    def status(self) -> dict[str, Any]:
        """The ``system``, ``pool`` and ``pressure`` sections of the status."""
        coord, s, r = self.coord, self.coord.settings, self.readings
        cooldown_left = None
        if self.last_stop is not None:
            cooldown_left = round(max(0.0, s.cooldown_s - (coord.clock() - self.last_stop)), 3)
        psi = self.psi
        return {
            "system": {
                "total_bytes": r.system_total_bytes if r else None,
                "used_bytes": r.system_used_bytes if r else None,
                "source": self.system_source,
                "threshold": s.system_threshold,
                "threshold_bytes": r.system_threshold_bytes if r else None,
                "psi": (
                    None
                    if psi is None
                    else {"some_avg10": psi.get("some"), "full_avg10": psi.get("full")}
                ),
                "psi_threshold": s.psi_threshold,
            },
            "pool": {
                "used_bytes": coord.pool.used(self.use_pss),
                "limit_bytes": s.pool_bytes,
                "rss_bytes": coord.pool.rss_total(),
                "counted": "pss" if self.use_pss else "rss",
            },
            "pressure": {
                "level": self.state.level.label,
                "signals": self.state.to_dict(),
                "ratios": {k: round(v, 4) for k, v in r.ratios().items()} if r else {},
                "last_eviction": coord.broadcaster.last_eviction,
                "last_decision": self.last_decision,
                "cooldown_left_s": cooldown_left,
            },
        }
