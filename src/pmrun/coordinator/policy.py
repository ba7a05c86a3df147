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
class Candidate:
    """An agent that may be stopped, with the figures the decision uses."""

    agent_id: str
    name: str
    bytes: int  # what stopping it frees (its PSS near the thresholds, else its RSS)
    priority: int  # higher is spared longer
    started: float  # unix time

    def to_dict(self) -> dict[str, object]:
        return {
            "agent": self.agent_id,
            "name": self.name,
            "bytes": self.bytes,
            "priority": self.priority,
            "started": self.started,
        }


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
