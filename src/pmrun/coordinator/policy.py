"""Pure decisions of the coordinator: numbers in, a decision out. No I/O, no clock.

Three signals are watched, each as a *ratio* of its threshold (1.0 = at the threshold):

- ``pool``: the agents' memory over ``--pool``;
- ``system``: system (or container) memory used, as a fraction, over ``--system-threshold``;
- ``psi``: ``/proc/pressure/memory`` "some avg10" over ``--psi-threshold``.

Each has a level with hysteresis (:func:`level_for`): *warning* from 90% of the threshold,
*critical* from the threshold itself, and a level is left only 5 points below where it
starts, so a signal hovering at a boundary does not flap. The coordinator's level is the
highest of the three.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MIB = 1 << 20


class Level(enum.IntEnum):
    NORMAL = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Hysteresis:
    """Where levels start and how far below that they end, as ratios of the threshold."""

    warn_at: float = 0.90  # the warning level starts at 90% of the threshold
    release: float = 0.05  # a level ends 5 points below where it starts (critical: < 0.95)


DEFAULT_HYSTERESIS = Hysteresis()

# At the warning level services are asked for a third of --evict-fraction (0.25 with the
# default 0.75): enough to matter, little enough that warm caches survive a brief spike.
WARNING_FRACTION_DIVISOR = 3

# A stop frees what is over the threshold plus this buffer, so that the next report,
# a few MiB higher, does not cross again at once.
STOP_BUFFER_FRACTION = 0.02  # of the threshold in bytes
STOP_BUFFER_MIN_BYTES = 16 * MIB

# In the cooldown after a stop, a signal this far over its threshold acts at once.
HARD_RATIO = 1.10


def level_for(ratio: float, previous: Level, h: Hysteresis = DEFAULT_HYSTERESIS) -> Level:
    """The level of one signal at ``ratio`` of its threshold, given its previous level."""
    if ratio >= 1.0:
        return Level.CRITICAL
    if previous == Level.CRITICAL and ratio >= 1.0 - h.release:
        return Level.CRITICAL
    if ratio >= h.warn_at:
        return Level.WARNING
    if previous >= Level.WARNING and ratio >= h.warn_at - h.release:
        return Level.WARNING
    return Level.NORMAL


def eviction_fraction(level: Level, evict_fraction: float) -> float:
    """What services are asked to drop at ``level``: all of ``--evict-fraction`` when critical."""
    if level >= Level.CRITICAL:
        return evict_fraction
    if level == Level.WARNING:
        return evict_fraction / WARNING_FRACTION_DIVISOR
    return 0.0


@dataclass(frozen=True)
class Readings:
    """One measurement of everything the coordinator watches. Sizes in bytes."""

    pool_used_bytes: int  # what the pool counts (RSS far from the limit, PSS near it)
    pool_limit_bytes: int  # --pool; 0 = no pool limit
    system_used_bytes: int  # total minus available (or the container's working set)
    system_total_bytes: int  # MemTotal, or the container's limit when smaller
    system_threshold: float  # --system-threshold, a fraction of the total
    psi_some_avg10: float | None = None  # percent of time stalled; None where PSI is absent
    psi_threshold: float | None = None  # --psi-threshold as a fraction; None = ignored

    @property
    def system_threshold_bytes(self) -> int:
        return int(self.system_total_bytes * self.system_threshold)

    def ratios(self) -> dict[str, float]:
        """Each applicable signal as a ratio of its threshold."""
        out: dict[str, float] = {}
        if self.pool_limit_bytes > 0:
            out["pool"] = self.pool_used_bytes / self.pool_limit_bytes
        if self.system_total_bytes > 0 and self.system_threshold > 0:
            out["system"] = self.system_used_bytes / self.system_threshold_bytes
        if self.psi_some_avg10 is not None and self.psi_threshold:
            out["psi"] = self.psi_some_avg10 / 100.0 / self.psi_threshold
        return out


@dataclass(frozen=True)
class PressureState:
    """The level of each signal; absent signals are normal."""

    signals: tuple[tuple[str, Level], ...] = ()

    @property
    def level(self) -> Level:
        return max((lvl for _, lvl in self.signals), default=Level.NORMAL)

    def of(self, signal: str) -> Level:
        return dict(self.signals).get(signal, Level.NORMAL)

    def crossed(self) -> list[str]:
        """The signals at the overall level (what to name as the reason)."""
        top = self.level
        return [s for s, lvl in self.signals if lvl == top and lvl > Level.NORMAL]

    def to_dict(self) -> dict[str, str]:
        return {s: lvl.label for s, lvl in self.signals}


def assess(
    readings: Readings, previous: PressureState, h: Hysteresis = DEFAULT_HYSTERESIS
) -> PressureState:
    """Every signal's level now, each with its own hysteresis."""
    return PressureState(
        tuple(
            (signal, level_for(ratio, previous.of(signal), h))
            for signal, ratio in sorted(readings.ratios().items())
        )
    )


def over_threshold(readings: Readings) -> bool:
    """True when some signal is at or above its threshold (stopping agents is on the table)."""
    return any(r >= 1.0 for r in readings.ratios().values())


def hard_crossed(readings: Readings, hard_ratio: float = HARD_RATIO) -> bool:
    """True when some signal is so far over that a cooldown is not waited out."""
    return any(r >= hard_ratio for r in readings.ratios().values())


def may_stop(now_s: float, last_stop_s: float | None, cooldown_s: float, hard: bool) -> bool:
    """Whether stopping (more) agents is allowed now: after the cooldown, or on a hard crossing."""
    return hard or last_stop_s is None or now_s - last_stop_s >= cooldown_s


def stop_buffer_bytes(threshold_bytes: int) -> int:
    return max(STOP_BUFFER_MIN_BYTES, int(threshold_bytes * STOP_BUFFER_FRACTION))


@dataclass(frozen=True)
class Need:
    """How many bytes must go, and why (the reason the stopped agents are given)."""

    bytes: int
    reason: str  # "pool" or "system-pressure"
    signal: str  # "pool", "system" or "psi"


def bytes_to_free(readings: Readings, pending_bytes: int = 0) -> Need | None:
    """What must be freed to get every signal back under its threshold, plus a buffer.

    ``pending_bytes`` is held by agents already told to stop: it is on its way out and
    must not cost another agent. PSI has no byte figure; over its threshold with nothing
    pending, it asks for one buffer's worth (so at least one agent). None: nothing to do.
    """
    needs: list[Need] = []
    if readings.pool_limit_bytes > 0 and readings.pool_used_bytes >= readings.pool_limit_bytes:
        over = readings.pool_used_bytes - readings.pool_limit_bytes
        n = over + stop_buffer_bytes(readings.pool_limit_bytes) - pending_bytes
        needs.append(Need(n, "pool", "pool"))
    ratios = readings.ratios()
    if ratios.get("system", 0.0) >= 1.0:
        over = readings.system_used_bytes - readings.system_threshold_bytes
        n = over + stop_buffer_bytes(readings.system_threshold_bytes) - pending_bytes
        needs.append(Need(n, "system-pressure", "system"))
    if ratios.get("psi", 0.0) >= 1.0 and pending_bytes == 0:
        n = stop_buffer_bytes(readings.system_threshold_bytes)
        needs.append(Need(n, "system-pressure", "psi"))
    needs = [n for n in needs if n.bytes > 0]
    if not needs:
        return None
    # The largest need wins; on a tie the pool's (listed first) is the reason given.
    return max(needs, key=lambda n: n.bytes)


@dataclass(frozen=True)
class Evict:
    """An ``evict`` broadcast to every service."""

    fraction: float  # of what each service holds
    level: str  # "warning" or "critical", as the services are told
    reason: str  # the signals crossed, comma-separated


def evict_on_rise(
    previous: PressureState, state: PressureState, evict_fraction: float
) -> Evict | None:
    """The broadcast a rise of the overall level calls for; None when it did not rise."""
    if state.level <= previous.level:
        return None
    fraction = eviction_fraction(state.level, evict_fraction)
    return Evict(fraction, state.level.label, ",".join(state.crossed()))


@dataclass(frozen=True)
class StopPlan:
    """What the monitor does over a threshold, in order: pause for ``need``; else, if
    ``may_stop``, broadcast ``evict`` (unless None), measure again and stop victims."""

    need: Need  # on the figures at hand: what a pause must cover
    may_stop: bool  # False in the cooldown after a stop: it holds back stopping, not pausing
    evict: Evict | None  # the critical broadcast first; None within its own cooldown


def plan_stop(
    readings: Readings,
    state: PressureState,
    *,
    pending_bytes: int,
    now_s: float,
    last_stop_s: float | None,
    last_critical_evict_s: float | None,
    cooldown_s: float,
    evict_fraction: float,
    hard_ratio: float = HARD_RATIO,
) -> StopPlan | None:
    """The next move over a threshold (see :class:`StopPlan`); None: nothing must go."""
    need = bytes_to_free(readings, pending_bytes)
    if need is None:
        return None
    may = may_stop(now_s, last_stop_s, cooldown_s, hard_crossed(readings, hard_ratio))
    evict = None
    if may and (last_critical_evict_s is None or now_s - last_critical_evict_s >= cooldown_s):
        evict = Evict(evict_fraction, Level.CRITICAL.label, ",".join(state.crossed()) or "pool")
    return StopPlan(need, may, evict)


@dataclass(frozen=True)
class Candidate:
    """An agent that may be stopped, with the figures the decision uses."""

    agent_id: str
    name: str
    bytes: int  # what stopping it frees (its PSS near the thresholds, else its RSS)
    priority: int  # higher is spared longer
    started: float  # unix time

    def to_dict(self) -> dict[str, object]:
        return {**_agent_row(self), "started": self.started}


def _agent_row(a: Candidate | Pausable) -> dict[str, object]:
    """What an event shows of an agent a decision weighed."""
    return {"agent": a.agent_id, "name": a.name, "bytes": a.bytes, "priority": a.priority}


VICTIM_POLICIES = ("largest", "newest", "priority")


def choose_victims(
    candidates: Iterable[Candidate], needed_bytes: int, policy: str
) -> list[Candidate]:
    """The agents to stop, in order, until their bytes cover ``needed_bytes``.

    Priority always comes first: an agent is chosen only when no lower-priority agent is
    left. Within a priority the policy decides:

    - ``largest``: the largest first (fewest agents stopped);
    - ``newest``: the most recently started first (least work lost);
    - ``priority``: the smallest agent that alone covers what is still needed, else the
      largest (least memory lost).
    """
    if policy not in VICTIM_POLICIES:
        raise ValueError(f"unknown victim policy {policy!r}")
    left = list(candidates)
    chosen: list[Candidate] = []
    remaining = needed_bytes
    while remaining > 0 and left:
        low = min(c.priority for c in left)
        group = [c for c in left if c.priority == low]
        if policy == "largest":
            pick = min(group, key=lambda c: (-c.bytes, -c.started, c.agent_id))
        elif policy == "newest":
            pick = min(group, key=lambda c: (-c.started, -c.bytes, c.agent_id))
        else:
            fits = [c for c in group if c.bytes >= remaining]
            if fits:
                pick = min(fits, key=lambda c: (c.bytes, -c.started, c.agent_id))
            else:
                pick = min(group, key=lambda c: (-c.bytes, -c.started, c.agent_id))
        chosen.append(pick)
        left.remove(pick)
        remaining -= pick.bytes
    return chosen


# How fast system memory can plausibly fill: one process faulting in fresh pages manages
# about 3-5 GB/s on current x86 servers (a bytearray(b"x") * n loop measured ~4 GiB/s here).
FILL_RATE_BYTES_PER_S = 4 << 30


def next_tick_s(readings: Readings | None, min_s: float = 0.1, max_s: float = 0.5) -> float:
    """How long the monitor may sleep: the time memory would need to reach the warning
    level at :data:`FILL_RATE_BYTES_PER_S`, between ``min_s`` and ``max_s`` (as earlyoom
    sizes its poll interval from the headroom left). The pool needs no polling: a report
    that moves it wakes the monitor at once.
    """
    if readings is None:
        return min_s
    ratios = readings.ratios()
    if ratios.get("psi", 0.0) >= DEFAULT_HYSTERESIS.warn_at - DEFAULT_HYSTERESIS.release:
        return min_s
    if "system" not in ratios:
        return max_s
    warn_bytes = readings.system_threshold_bytes * DEFAULT_HYSTERESIS.warn_at
    headroom = max(0.0, warn_bytes - readings.system_used_bytes)
    return min(max_s, max(min_s, headroom / FILL_RATE_BYTES_PER_S))


def summarize(readings: Readings) -> Mapping[str, object]:
    """The figures a decision was made on, for the event log."""
    return {
        "pool_used_bytes": readings.pool_used_bytes,
        "pool_limit_bytes": readings.pool_limit_bytes,
        "system_used_bytes": readings.system_used_bytes,
        "system_total_bytes": readings.system_total_bytes,
        "system_threshold_bytes": readings.system_threshold_bytes,
        "psi_some_avg10": readings.psi_some_avg10,
        "ratios": {k: round(v, 4) for k, v in readings.ratios().items()},
    }


ORDER_FIGURES = (
    "pool_used_bytes",
    "pool_limit_bytes",
    "system_used_bytes",
    "system_threshold_bytes",
)


def order_figures(readings: Readings) -> dict[str, object]:
    """The figures a pause, resume or stop order gives the launcher (for its event)."""
    figures = summarize(readings)
    return {k: figures[k] for k in ORDER_FIGURES}


# -- pause before kill --------------------------------------------------------------------
# When eviction was not enough, agents whose growth drives the pressure are frozen (their
# launchers do it) instead of stopped: a paused agent loses no work. Its memory stays in
# the pool, but it is *held aside* like a stopping agent's (:func:`bytes_to_free`'s
# ``pending_bytes``) for up to ``max_pause_s``: the running agents finish and free theirs,
# then the paused ones resume, one at a time. A paused agent that still does not fit after
# ``max_pause_s`` is no longer held aside, so the stop path takes over as before.


@dataclass(frozen=True)
class PauseSettings:
    """How the coordinator pauses and resumes agents. Times in seconds."""

    enabled: bool = True  # --no-pause on the coordinator: stop at once, as before
    max_pause_s: float = 120.0  # --max-pause: after this a paused agent may be stopped
    # Resume only once every signal is this far below its threshold (the warning level's
    # own exit, 0.85): resuming at 0.99 would cross again at the agent's next megabyte.
    resume_below: float = DEFAULT_HYSTERESIS.warn_at - DEFAULT_HYSTERESIS.release
    resume_interval_s: float = 1.0  # one resume, then let its growth show before the next
    growth_window_s: float = 10.0  # how far back an agent's growth is looked at
    min_growth_bytes: int = 8 * MIB  # less growth than this does not drive the pressure


@dataclass(frozen=True)
class Pausable:
    """An agent as the pause decision sees it. Sizes in bytes, times monotonic seconds."""

    agent_id: str
    name: str
    bytes: int  # what it counts in the pool
    priority: int
    started: float  # unix time (newest = largest)
    growth_bytes: int  # its growth over the window (now minus the window's minimum)
    max_rss: int | None  # its own limit: over it, it is a runaway its launcher stops
    pausable: bool = True  # False: started with --no-pause
    paused_at: float | None = None  # when it was paused; None = running
    stopping: bool = False  # told to stop, or its launcher is stopping it
    rss_bytes: int | None = None  # as its launcher counts it (its limit's measure); None = bytes

    @property
    def runaway(self) -> bool:
        """Over its own ``--max-rss``, as its launcher counts it (PSS would be less)."""
        own = self.bytes if self.rss_bytes is None else self.rss_bytes
        return self.max_rss is not None and own >= self.max_rss

    def to_dict(self) -> dict[str, object]:
        return {**_agent_row(self), "growth_bytes": self.growth_bytes}


def held_aside_bytes(agents: Iterable[Pausable], now_s: float, max_pause_s: float) -> int:
    """Memory the pressure decision treats as on its way out without stopping anyone:
    agents paused less than ``max_pause_s`` ago, and runaways (their launcher stops them)."""
    total = 0
    for a in agents:
        if a.stopping:
            continue  # already counted as pending by the stop path
        if a.runaway or (a.paused_at is not None and now_s - a.paused_at < max_pause_s):
            total += a.bytes
    return total


def choose_pauses(
    agents: Iterable[Pausable], needed_bytes: int, s: PauseSettings = PauseSettings()
) -> list[Pausable]:
    """The agents to pause, in order, until the memory they hold covers ``needed_bytes``.

    Only agents that grew by ``min_growth_bytes`` within the window (they drive the
    pressure), are under their own limit (a runaway is its launcher's to stop), did not opt
    out and are neither paused nor stopping. Lowest priority first, then the newest. One
    agent always keeps running (the oldest of the highest priority), so that someone
    finishes and frees memory: pausing everyone would only wait for ``max_pause_s``.
    """
    everyone = list(agents)
    running = [a for a in everyone if a.paused_at is None and not a.stopping and not a.runaway]
    eligible = [a for a in running if a.pausable and a.growth_bytes >= s.min_growth_bytes]
    order = sorted(eligible, key=lambda a: (a.priority, -a.started, a.agent_id))
    keep = len(running)
    chosen: list[Pausable] = []
    remaining = needed_bytes
    for a in order:
        if remaining <= 0 or keep <= 1:
            break
        chosen.append(a)
        keep -= 1
        remaining -= max(a.bytes, 1)
    return chosen


def choose_resume(
    agents: Iterable[Pausable],
    readings: Readings,
    now_s: float,
    last_resume_s: float | None,
    s: PauseSettings = PauseSettings(),
) -> Pausable | None:
    """The paused agent to resume now, if any: highest priority first, then the oldest.

    Only when every signal is below ``resume_below`` of its threshold (hysteresis: the
    pressure's own exit from the warning level) and ``resume_interval_s`` after the last
    resume, so that a resumed agent's growth shows before the next one starts.
    """
    paused = [a for a in agents if a.paused_at is not None and not a.stopping]
    if not paused:
        return None
    if last_resume_s is not None and now_s - last_resume_s < s.resume_interval_s:
        return None
    if any(r >= s.resume_below for r in readings.ratios().values()):
        return None
    return min(paused, key=lambda a: (-a.priority, a.started, a.agent_id))


# -- wait before start (admission) ---------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """A launcher waiting to start its agent."""

    seq: int  # arrival order
    agent_id: str
    priority: int  # higher starts first
    expect_bytes: int | None  # the agent's expected peak; None = unknown (see admit)


def fits(
    extra_bytes: int, pool_used: int, pool_limit: int, system_used: int, system_threshold: int
) -> bool:
    """Whether ``extra_bytes`` more keeps the pool and the system under their thresholds."""
    if pool_limit > 0 and pool_used + extra_bytes > pool_limit:
        return False
    return not (system_threshold > 0 and system_used + extra_bytes > system_threshold)


def admit(
    queue: Iterable[Waiting],
    *,
    pool_used: int,
    pool_limit: int,
    system_used: int,
    system_threshold: int,
    reserved_bytes: int,
    idle: bool,
) -> list[Waiting]:
    """The waiting agents that may start now, in order: FIFO within priority (higher first).

    ``reserved_bytes`` is what agents started a moment ago are still expected to grow by.
    An agent of unknown size starts while everything stays under the warning level (90% of
    each threshold), so that a first run of an agent never waits on a guess. The queue is
    strict: one that does not fit holds back those behind it (a small agent
    never overtakes a large one forever). Never a deadlock: on an ``idle`` pool (no agent
    running or reserved) the first in line starts even if it cannot fit, alone.
    """
    order = sorted(queue, key=lambda w: (-w.priority, w.seq))
    chosen: list[Waiting] = []
    extra = reserved_bytes
    for w in order:
        need = w.expect_bytes or 0
        scale = 1.0 if w.expect_bytes is not None else DEFAULT_HYSTERESIS.warn_at
        limits = (int(pool_limit * scale), int(system_threshold * scale))
        if fits(extra + need, pool_used, limits[0], system_used, limits[1]):
            chosen.append(w)
            extra += need
        elif idle and not chosen:
            chosen.append(w)  # too big for the machine: it starts alone
            break
        else:
            break
    return chosen


def learned_peak(peaks: Iterable[int]) -> int | None:
    """The expected peak from recent peaks of agents with the same name: the largest."""
    return max(peaks, default=None)
