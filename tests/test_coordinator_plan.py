"""The monitor's pure decisions: what a rise broadcasts, and what to do over a threshold."""

from __future__ import annotations

import pytest

from pmrun.coordinator import policy
from pmrun.coordinator.policy import Evict, Level, PressureState, Readings

G = 1 << 30
M = 1 << 20

NORMAL = PressureState()
WARN_POOL = PressureState((("pool", Level.WARNING),))
CRIT_POOL = PressureState((("pool", Level.CRITICAL),))
CRIT_BOTH = PressureState((("pool", Level.CRITICAL), ("system", Level.CRITICAL)))


def pool_at(used: int, limit: int = G) -> Readings:
    """The pool at ``used`` of ``limit``; the system far from its threshold."""
    return Readings(used, limit, 0, 16 * G, 0.9)


@pytest.mark.parametrize(
    ("previous", "state", "expected"),
    [
        (NORMAL, NORMAL, None),  # no change
        (NORMAL, WARN_POOL, Evict(0.5 / 3, "warning", "pool")),  # warning: a third
        (NORMAL, CRIT_POOL, Evict(0.5, "critical", "pool")),  # straight to critical
        (WARN_POOL, CRIT_BOTH, Evict(0.5, "critical", "pool,system")),  # every signal named
        (CRIT_POOL, CRIT_BOTH, None),  # a second signal at the same level: no new rise
        (CRIT_POOL, WARN_POOL, None),  # falling never broadcasts
    ],
)
def test_evict_on_rise(previous, state, expected) -> None:
    assert policy.evict_on_rise(previous, state, 0.5) == expected


# (readings, pending, now, last stop, last critical evict) -> need bytes, may stop, evicts
COOL = 10.0
OVER = pool_at(G + 100 * M)  # 100 MiB over: ratio < HARD_RATIO
HARD = pool_at(int(G * 1.2))  # far over: a cooldown is not waited out
BUFFER = policy.stop_buffer_bytes(G)


@pytest.mark.parametrize(
    ("readings", "pending", "now", "last_stop", "last_evict", "expected"),
    [
        (pool_at(G // 2), 0, 100.0, None, None, None),  # under: nothing to do
        (OVER, 200 * M, 100.0, None, None, None),  # what is on its way out covers it
        (OVER, 0, 100.0, None, None, (100 * M + BUFFER, True, True)),  # first time: all
        (OVER, 40 * M, 100.0, None, None, (60 * M + BUFFER, True, True)),  # pending counts
        (OVER, 0, 100.0, 95.0, None, (100 * M + BUFFER, False, False)),  # stop cooldown
        (OVER, 0, 100.0, 90.0, None, (100 * M + BUFFER, True, True)),  # cooldown over
        (OVER, 0, 100.0, None, 95.0, (100 * M + BUFFER, True, False)),  # evicted a moment ago
        (OVER, 0, 100.0, None, 90.0, (100 * M + BUFFER, True, True)),  # evict cooldown over
        (HARD, 0, 100.0, 99.0, 99.0, (int(G * 0.2) + BUFFER, True, False)),  # hard: stop now
    ],
)
def test_plan_stop(readings, pending, now, last_stop, last_evict, expected) -> None:
    plan = policy.plan_stop(
        readings,
        CRIT_POOL,
        pending_bytes=pending,
        now_s=now,
        last_stop_s=last_stop,
        last_critical_evict_s=last_evict,
        cooldown_s=COOL,
        evict_fraction=0.5,
    )
    if expected is None:
        assert plan is None
        return
    assert plan is not None
    assert (plan.need.bytes, plan.may_stop, plan.evict is not None) == expected
    assert plan.need.reason == "pool"
    if plan.evict is not None:
        assert plan.evict == Evict(0.5, "critical", "pool")


def test_plan_stop_names_the_pool_when_no_signal_is_at_the_top_level() -> None:
    plan = policy.plan_stop(
        OVER, NORMAL, pending_bytes=0, now_s=0.0, last_stop_s=None,
        last_critical_evict_s=None, cooldown_s=COOL, evict_fraction=0.5,
    )  # fmt: skip
    assert plan is not None and plan.evict == Evict(0.5, "critical", "pool")


def test_order_figures() -> None:
    r = Readings(3 * M, 4 * M, 5 * G, 10 * G, 0.9)
    assert policy.order_figures(r) == {
        "pool_used_bytes": 3 * M,
        "pool_limit_bytes": 4 * M,
        "system_used_bytes": 5 * G,
        "system_threshold_bytes": 9 * G,
    }
