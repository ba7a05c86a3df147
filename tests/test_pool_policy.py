"""Pure decisions (policy.py) and the pool's accounting (pool.py) on fake /proc and cgroup trees."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmrun import policy as launch_policy
from pmrun.coordinator import policy
from pmrun.coordinator.policy import Candidate, Level, Readings
from pmrun.coordinator.pool import AgentEntry, Pool, measure_pss

MIB = 1 << 20
N, W, C = Level.NORMAL, Level.WARNING, Level.CRITICAL


@pytest.mark.parametrize(
    "ratio, previous, expected",
    [
        (0.0, N, N), (0.89, N, N), (0.90, N, W), (0.99, N, W), (1.0, N, C), (2.0, N, C),
        # hysteresis: a level is left only 5 points below where it starts
        (0.96, C, C), (0.95, C, C), (0.949, C, W), (0.86, C, W), (0.849, C, N),
        (0.86, W, W), (0.85, W, W), (0.849, W, N), (1.0, W, C), (0.5, C, N),
    ],
)  # fmt: skip
def test_level_for(ratio, previous, expected):
    assert policy.level_for(ratio, previous) == expected


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 2.0), st.floats(-0.049, 0.049))
def test_no_flapping_within_the_release_band(ratio, jitter):
    """Once a level is entered, a fall smaller than the release band never leaves it."""
    entered = policy.level_for(ratio, N)
    after = policy.level_for(max(0.0, ratio + jitter), entered)
    if jitter <= 0:
        assert after == entered
    else:
        assert after >= entered


@pytest.mark.parametrize("level, fraction", [(C, 0.75), (W, 0.25), (N, 0.0)])
def test_eviction_fraction(level, fraction):
    assert policy.eviction_fraction(level, 0.75) == pytest.approx(fraction)


def readings(pool_used=0, pool_limit=1000 * MIB, sys_used=0, sys_total=10_000 * MIB, psi=None,
             psi_threshold=0.10, threshold=0.8) -> Readings:  # fmt: skip
    return Readings(pool_used, pool_limit, sys_used, sys_total, threshold, psi, psi_threshold)


def test_ratios_skip_absent_signals():
    r = readings(pool_used=500 * MIB, pool_limit=0, sys_used=4000 * MIB, psi=None)
    assert r.ratios() == {"system": pytest.approx(0.5)}
    r = readings(psi=5.0)
    assert r.ratios()["psi"] == pytest.approx(0.5)
    assert "psi" not in readings(psi=50.0, psi_threshold=None).ratios()


def test_assess_keeps_each_signal_hysteresis():
    s = policy.assess(readings(pool_used=1000 * MIB), policy.PressureState())
    assert s.level == C and s.crossed() == ["pool"]
    s = policy.assess(readings(pool_used=960 * MIB, sys_used=7300 * MIB), s)
    assert s.of("pool") == C and s.of("system") == W
    s = policy.assess(readings(pool_used=940 * MIB), s)
    assert s.level == W and s.to_dict() == {"pool": "warning", "system": "normal"}


@pytest.mark.parametrize(
    "r, pending, expected",
    [
        (readings(pool_used=999 * MIB), 0, None),
        (readings(pool_used=1100 * MIB), 0, policy.Need(100 * MIB + 20 * MIB, "pool", "pool")),
        (readings(pool_used=1100 * MIB), 200 * MIB, None),  # what is being stopped suffices
        (readings(pool_used=1001 * MIB, pool_limit=100 * MIB * 10), 0,
         policy.Need(MIB + 20 * MIB, "pool", "pool")),
        (readings(sys_used=8100 * MIB), 0,
         policy.Need(8100 * MIB - int(10_000 * MIB * 0.8) + int(8000 * MIB * 0.02),
                     "system-pressure", "system")),
        (readings(psi=20.0), 0, policy.Need(int(8000 * MIB * 0.02), "system-pressure", "psi")),
        (readings(psi=20.0), 1, None),  # PSI asks for one agent, not one more
        (readings(pool_used=1000 * MIB, pool_limit=0), 0, None),  # no pool limit
    ],
)  # fmt: skip
def test_bytes_to_free(r, pending, expected):
    assert policy.bytes_to_free(r, pending) == expected


def test_bytes_to_free_buffer_has_a_floor():
    r = readings(pool_used=101 * MIB, pool_limit=100 * MIB)
    assert policy.bytes_to_free(r) == policy.Need(MIB + 16 * MIB, "pool", "pool")


def test_larger_need_wins():
    r = readings(pool_used=1100 * MIB, sys_used=9000 * MIB)
    need = policy.bytes_to_free(r)
    assert need is not None and need.reason == "system-pressure"


@pytest.mark.parametrize(
    "now, last, hard, expected",
    [(100.0, None, False, True), (100.0, 96.0, False, False), (100.0, 95.0, False, True),
     (100.0, 99.9, True, True)],
)  # fmt: skip
def test_may_stop(now, last, hard, expected):
    assert policy.may_stop(now, last, 5.0, hard) is expected


def test_over_and_hard():
    assert not policy.over_threshold(readings(pool_used=999 * MIB))
    assert policy.over_threshold(readings(pool_used=1000 * MIB))
    assert not policy.hard_crossed(readings(pool_used=1099 * MIB))
    assert policy.hard_crossed(readings(pool_used=1100 * MIB))


def cand(agent_id, mib, priority=0, started=0.0):
    return Candidate(agent_id, agent_id, mib * MIB, priority, started)


AGENTS = [cand("a", 100, started=1), cand("b", 300, started=2), cand("c", 200, started=3)]


@pytest.mark.parametrize(
    "candidates, needed_mib, policy_name, expected",
    [
        (AGENTS, 50, "largest", ["b"]),
        (AGENTS, 350, "largest", ["b", "c"]),
        (AGENTS, 10_000, "largest", ["b", "c", "a"]),  # all, and no more exist
        (AGENTS, 0, "largest", []),
        (AGENTS, 50, "newest", ["c"]),
        (AGENTS, 250, "newest", ["c", "b"]),
        (AGENTS, 150, "priority", ["c"]),  # the smallest that alone covers it
        (AGENTS, 50, "priority", ["a"]),
        (AGENTS, 450, "priority", ["b", "c"]),  # none covers it: largest, then best fit
        # priority always comes first: the large priority-1 agent is spared
        ([cand("a", 100), cand("big", 900, priority=1)], 150, "largest", ["a", "big"]),
        ([cand("a", 100), cand("big", 900, priority=1)], 50, "largest", ["a"]),
        ([cand("a", 100, started=5), cand("b", 100, started=9)], 50, "largest", ["b"]),  # tie: newest
    ],
)  # fmt: skip
def test_choose_victims(candidates, needed_mib, policy_name, expected):
    chosen = policy.choose_victims(candidates, needed_mib * MIB, policy_name)
    assert [c.agent_id for c in chosen] == expected


def test_choose_victims_refuses_an_unknown_policy():
    with pytest.raises(ValueError):
        policy.choose_victims(AGENTS, 1, "random")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 3)), min_size=0, max_size=8),
    st.integers(1, 3000),
    st.sampled_from(policy.VICTIM_POLICIES),
)
def test_victims_are_enough_and_minimal_in_count_order(sizes, needed, name):
    cands = [
        Candidate(str(i), str(i), m * MIB, prio, float(i)) for i, (m, prio) in enumerate(sizes)
    ]
    chosen = policy.choose_victims(cands, needed * MIB, name)
    total = sum(c.bytes for c in chosen)
    assert len({c.agent_id for c in chosen}) == len(chosen)
    if total < needed * MIB:
        assert len(chosen) == len(cands)  # only when everything together is not enough
    else:
        # Dropping the last victim would not have been enough: no agent stopped needlessly.
        assert total - chosen[-1].bytes < needed * MIB
    # A higher-priority agent is chosen only after every lower-priority one.
    prios = [c.priority for c in chosen]
    assert prios == sorted(prios)


def test_meaningful_change():
    assert not launch_policy.meaningful_change(100 * MIB, 104 * MIB)
    assert launch_policy.meaningful_change(100 * MIB, 108 * MIB)
    assert launch_policy.meaningful_change(1000 * MIB, 1050 * MIB)
    assert not launch_policy.meaningful_change(1000 * MIB, 1049 * MIB)


# -- pool --------------------------------------------------------------------------------


def entry(agent_id, rss, *, pids=(), priority=0, started=0.0):
    return AgentEntry(agent_id, agent_id, 1, None, 2, 0, [], None, None, priority, {}, started,
                      rss_bytes=rss, pids=[list(p) for p in pids])  # fmt: skip


def test_pool_counts_pss_near_the_limit_and_follows_rss_between_reads():
    pool = Pool()
    pool.agents["a"] = a = entry("a", 100 * MIB, pids=[(5, 1)])
    pool.agents["b"] = entry("b", 50 * MIB)
    assert pool.used(use_pss=False) == 150 * MIB
    pool.apply_pss({"a": (60 * MIB, 100 * MIB)})
    assert pool.used(use_pss=True) == 110 * MIB
    a.rss_bytes = 120 * MIB  # grew by 20M since the PSS read
    assert a.pool_bytes(use_pss=True) == 80 * MIB
    pool.apply_pss({"b": (None, 50 * MIB)})  # unreadable: keeps its reported figure
    assert pool.agents["b"].pool_bytes(use_pss=True) == 50 * MIB


def test_pool_candidates_skip_agents_being_stopped():
    pool = Pool()
    pool.agents["a"] = a = entry("a", 100)
    pool.agents["b"] = entry("b", 200)
    a.stop_sent_at = 10.0
    assert [c.agent_id for c in pool.candidates(False, now=12.0, pending_s=15.0)] == ["b"]
    assert [s.agent_id for s in pool.stopping(12.0, 15.0)] == ["a"]
    assert {c.agent_id for c in pool.candidates(False, now=30.0, pending_s=15.0)} == {"a", "b"}


def test_pool_find_agents_by_id_or_name():
    pool = Pool()
    pool.agents["id1"] = entry("id1", 1)
    pool.agents["id1"].name = "claude"
    assert [a.agent_id for a in pool.find_agents("claude")] == ["id1"]
    assert [a.agent_id for a in pool.find_agents("id1")] == ["id1"]
    assert pool.find_agents("nope") == []


def smaps(pss_kb):
    return (f"00400000-7fff [rollup]\nRss: {pss_kb * 2} kB\nPss: {pss_kb} kB\n"
            f"Private_Clean: 0 kB\nPrivate_Dirty: {pss_kb} kB\nSwap: 0 kB\n")  # fmt: skip


def test_measure_pss_sums_readable_processes(tmp_path):
    for pid, kb in ((10, 1000), (11, 500)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "smaps_rollup").write_text(smaps(kb))
    out = measure_pss({"a": ([10, 11, 12], 7), "b": ([99], 8)}, proc=str(tmp_path))
    assert out == {"a": (1500 * 1024, 7), "b": (None, 8)}


def test_measure_pss_on_real_processes_is_at_most_rss():
    import os

    from pmrun import _procfs

    out = measure_pss({"me": ([os.getpid()], 0)})
    pss = out["me"][0]
    assert pss is not None and 0 < pss <= _procfs.statm(os.getpid())[1]


@pytest.mark.parametrize(
    "r, expected",
    [
        (None, 0.1),
        (readings(sys_used=0), 0.5),  # 7.2 GiB of headroom: the longest sleep
        (readings(sys_used=7000 * MIB), 200 * MIB / (4 << 30)),  # 200 MiB from warning
        (readings(sys_used=7300 * MIB), 0.1),  # past the warning level
        (readings(sys_used=0, psi=9.0), 0.1),  # PSI near its threshold
        (readings(sys_used=0, psi=5.0), 0.5),
        (readings(sys_used=0, sys_total=0), 0.5),  # no system figure: the pool wakes us
    ],
)  # fmt: skip
def test_next_tick_follows_the_headroom(r, expected):
    assert policy.next_tick_s(r, 0.1, 0.5) == pytest.approx(max(0.1, min(0.5, expected)))
