"""The edges of the pure decisions: exactly at a limit, one byte either side, ties.

Written against the mutants that survived the broader tables (scripts/mutation): each
case pins a comparison or a tie-break the other tests left free.
"""

from __future__ import annotations

import pytest

from pmrun import policy as launch_policy
from pmrun.coordinator import policy
from pmrun.coordinator.policy import Candidate, Level, PressureState, Readings

MIB = 1 << 20
BUFFER = policy.STOP_BUFFER_MIN_BYTES


def r(pool_used=0, pool_limit=0, sys_used=0, sys_total=0, threshold=0.8, psi=None, psi_t=None):
    return Readings(pool_used, pool_limit, sys_used, sys_total, threshold, psi, psi_t)


# -- bytes_to_free ----------------------------------------------------------------------


def test_a_pool_exactly_at_its_limit_must_shed_the_buffer() -> None:
    need = policy.bytes_to_free(r(pool_used=1000 * MIB, pool_limit=1000 * MIB))
    assert need == policy.Need(max(BUFFER, 20 * MIB), "pool", "pool")


def test_a_pool_one_byte_under_its_limit_needs_nothing() -> None:
    assert policy.bytes_to_free(r(pool_used=1000 * MIB - 1, pool_limit=1000 * MIB)) is None


def test_a_one_byte_pool_limit_is_a_limit() -> None:
    need = policy.bytes_to_free(r(pool_used=1, pool_limit=1))
    assert need is not None and need.bytes == BUFFER


def test_system_exactly_at_its_threshold_must_shed_the_buffer_less_what_is_pending() -> None:
    readings = r(sys_used=8000 * MIB, sys_total=10_000 * MIB)
    assert readings.system_threshold_bytes == 8000 * MIB
    need = policy.bytes_to_free(readings)
    assert need == policy.Need(160 * MIB, "system-pressure", "system")
    assert policy.bytes_to_free(readings, pending_bytes=60 * MIB) == policy.Need(
        100 * MIB, "system-pressure", "system"
    )
    assert policy.bytes_to_free(readings, pending_bytes=160 * MIB) is None


def test_no_system_figure_means_no_system_need() -> None:
    # Without a total there is no system ratio at all: the pool alone speaks.
    assert policy.bytes_to_free(r(sys_used=10 * MIB, sys_total=0)) is None


def test_psi_exactly_at_its_threshold_asks_for_one_buffer_unless_a_stop_is_pending() -> None:
    readings = r(sys_total=10_000 * MIB, psi=10.0, psi_t=0.10)
    assert policy.bytes_to_free(readings) == policy.Need(160 * MIB, "system-pressure", "psi")
    assert policy.bytes_to_free(readings, pending_bytes=1) is None
    assert policy.bytes_to_free(r(sys_total=10_000 * MIB, psi=9.99, psi_t=0.10)) is None


def test_a_need_of_exactly_one_byte_is_still_a_need() -> None:
    readings = r(pool_used=1000 * MIB, pool_limit=1000 * MIB)
    need = policy.bytes_to_free(readings, pending_bytes=20 * MIB - 1)
    assert need is not None and need.bytes == 1
    assert policy.bytes_to_free(readings, pending_bytes=20 * MIB) is None


# -- ratios and levels ---------------------------------------------------------------------


def test_ratios_need_a_limit_a_total_and_a_threshold() -> None:
    assert r(pool_used=5, pool_limit=1).ratios() == {"pool": 5.0}
    assert r(sys_used=1, sys_total=1, threshold=1.0).ratios() == {"system": 1.0}
    assert r(sys_used=1, sys_total=10, threshold=0.0).ratios() == {}


def test_assess_uses_the_hysteresis_it_is_given() -> None:
    loose = policy.Hysteresis(warn_at=0.5, release=0.05)
    state = policy.assess(r(pool_used=60, pool_limit=100), PressureState(), loose)
    assert state.of("pool") == Level.WARNING
    assert (
        policy.assess(r(pool_used=60, pool_limit=100), PressureState()).of("pool") == Level.NORMAL
    )


def test_crossed_names_only_the_signals_at_the_top_level() -> None:
    state = PressureState(
        (("pool", Level.WARNING), ("psi", Level.NORMAL), ("system", Level.CRITICAL))
    )
    assert state.crossed() == ["system"]
    assert PressureState((("pool", Level.NORMAL),)).crossed() == []


# -- choose_victims -------------------------------------------------------------------------


def c(agent_id: str, mib: int, started: float = 0.0, priority: int = 0) -> Candidate:
    return Candidate(agent_id, agent_id, mib * MIB, priority, started)


def test_an_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown victim policy 'oldest'"):
        policy.choose_victims([c("a", 1)], 1, "oldest")


def test_one_byte_still_needed_costs_one_more_agent() -> None:
    chosen = policy.choose_victims([c("a", 10), c("b", 5)], 10 * MIB + 1, "largest")
    assert [x.agent_id for x in chosen] == ["a", "b"]


def test_largest_breaks_a_size_tie_by_the_newest() -> None:
    chosen = policy.choose_victims([c("old", 10, 1.0), c("new", 10, 2.0)], 1, "largest")
    assert [x.agent_id for x in chosen] == ["new"]


def test_newest_breaks_a_start_tie_by_the_largest() -> None:
    chosen = policy.choose_victims([c("small", 5, 1.0), c("big", 10, 1.0)], 1, "newest")
    assert [x.agent_id for x in chosen] == ["big"]


def test_priority_policy_takes_an_exact_fit_and_breaks_ties_by_the_newest() -> None:
    group = [c("exact-old", 10, 1.0), c("exact-new", 10, 2.0), c("bigger", 20, 3.0)]
    chosen = policy.choose_victims(group, 10 * MIB, "priority")
    assert [x.agent_id for x in chosen] == ["exact-new"]


def test_priority_policy_without_a_fit_takes_the_largest_newest_first() -> None:
    group = [c("a-old", 10, 1.0), c("a-new", 10, 2.0), c("small", 5, 3.0)]
    chosen = policy.choose_victims(group, 100 * MIB, "priority")
    assert [x.agent_id for x in chosen][:2] == ["a-new", "a-old"]


# -- next_tick_s ----------------------------------------------------------------------------


def test_psi_exactly_at_the_release_point_polls_fast() -> None:
    h = policy.DEFAULT_HYSTERESIS
    at = (h.warn_at - h.release) * 10.0  # percent, against a 10% threshold
    assert policy.next_tick_s(r(sys_total=10_000 * MIB, psi=at, psi_t=0.10)) == 0.1


def test_no_headroom_at_all_polls_at_the_minimum() -> None:
    total = 10_000 * MIB
    warn = int(total * 0.8 * policy.DEFAULT_HYSTERESIS.warn_at)
    assert policy.next_tick_s(r(sys_used=warn, sys_total=total), min_s=0.0) == 0.0


# -- the launcher's own decisions ---------------------------------------------------------------


def test_limit_watch_starts_clean_and_fires_only_past_each_limit() -> None:
    watch = launch_policy.LimitWatch(100, 200)
    assert (watch.peak_bytes, watch.warned, watch.stopped) == (0, False, False)
    assert watch.observe(100) == launch_policy.Crossing.NONE  # at the warning: not past it
    assert watch.observe(101) == launch_policy.Crossing.WARN
    assert watch.observe(200) == launch_policy.Crossing.NONE  # at the limit: not past it
    assert watch.observe(201) == launch_policy.Crossing.MAX
    assert watch.peak_bytes == 201


def test_grace_overrun_is_strictly_past_the_margin() -> None:
    limit = 1000 * MIB
    edge = int(limit * 1.10)  # the README's 110%
    assert not launch_policy.grace_exceeded(edge, limit)
    assert launch_policy.grace_exceeded(edge + 1, limit)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(0, 0), (3 << 8, 3), (9, 137), (15, 143), (2, 130), (0x137F, 137)],
)
def test_exit_status_follows_the_shell(status: int, expected: int) -> None:
    assert launch_policy.exit_status(status) == expected
