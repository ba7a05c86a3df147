"""The pause decision as pure functions: who is paused, who resumes, what is held aside."""

from __future__ import annotations

import pytest

from pmrun.coordinator.policy import (
    Pausable,
    PauseSettings,
    Readings,
    choose_pauses,
    choose_resume,
    held_aside_bytes,
)

MIB = 1 << 20
S = PauseSettings(max_pause_s=120.0, resume_interval_s=1.0)


def ag(name: str, mb: int, *, prio: int = 0, started: float = 0.0, grew: int = 50,
       max_mb: int | None = 1024, pausable: bool = True, paused_at: float | None = None,
       stopping: bool = False, rss_mb: int | None = None) -> Pausable:  # fmt: skip
    return Pausable(
        agent_id=name, name=name, bytes=mb * MIB, priority=prio, started=started,
        growth_bytes=grew * MIB, max_rss=None if max_mb is None else max_mb * MIB,
        pausable=pausable, paused_at=paused_at, stopping=stopping,
        rss_bytes=None if rss_mb is None else rss_mb * MIB,
    )  # fmt: skip


def readings(pool_mb: int, limit_mb: int = 1000) -> Readings:
    return Readings(pool_mb * MIB, limit_mb * MIB, 0, 0, 0.8)


@pytest.mark.parametrize(
    "agents, need_mb, expected",
    [
        # newest first within a priority
        ([ag("old", 300, started=1), ag("new", 300, started=2)], 50, ["new"]),
        # lowest priority first, even if older
        ([ag("lo", 300, prio=-1, started=1), ag("hi", 300, started=2)], 50, ["lo"]),
        # as few as needed: the first covers the need, the second is not touched
        ([ag("a", 100, started=1), ag("b", 100, started=2), ag("c", 100, started=3)], 90, ["c"]),
        (
            [ag("a", 100, started=1), ag("b", 100, started=2), ag("c", 100, started=3)],
            150,
            ["c", "b"],
        ),
        # one always keeps running, however much is needed
        ([ag("a", 100, started=1), ag("b", 100, started=2)], 10_000, ["b"]),
        # an agent that does not grow does not drive the pressure
        ([ag("a", 100, started=1), ag("idle", 100, started=2, grew=1)], 50, ["a"]),
        # a runaway (over its own limit, as its launcher counts it) is never paused, and
        # does not count as the one kept running
        (
            [ag("a", 100, started=1), ag("b", 100, started=2), ag("r", 90, started=3, max_mb=80)],
            50,
            ["b"],
        ),
        (
            [
                ag("a", 100, started=1),
                ag("b", 100, started=2),
                ag("r", 70, started=3, max_mb=80, rss_mb=85),
            ],
            50,
            ["b"],
        ),
        ([ag("a", 100, started=1), ag("r", 90, started=2, max_mb=80)], 50, []),
        # --no-pause is honoured; the opted-out agent counts as the one running
        ([ag("a", 100, started=1), ag("np", 100, started=2, pausable=False)], 50, ["a"]),
        # paused or stopping agents are not paused (again)
        (
            [
                ag("a", 100, started=1),
                ag("b", 100, started=2, paused_at=5.0),
                ag("c", 100, started=3, stopping=True),
            ],
            50,
            [],
        ),
        ([ag("only", 100)], 50, []),
    ],
)
def test_choose_pauses(agents, need_mb, expected):
    assert [a.name for a in choose_pauses(agents, need_mb * MIB, S)] == expected


def test_held_aside_counts_paused_within_max_pause_and_runaways():
    agents = [
        ag("p1", 100, paused_at=0.0),
        ag("p2", 200, paused_at=100.0),
        ag("r", 90, max_mb=80),
        ag("run", 300),
        ag("stopping", 50, paused_at=100.0, stopping=True),  # the stop path counts it
    ]
    assert held_aside_bytes(agents, 110.0, 120.0) == (100 + 200 + 90) * MIB
    # p1 has waited longer than max_pause: no longer held aside, so it may be stopped
    assert held_aside_bytes(agents, 125.0, 120.0) == (200 + 90) * MIB


@pytest.mark.parametrize(
    "pool_mb, last_resume, now, expected",
    [
        (900, None, 10.0, None),  # 0.90: not below 0.85, nobody resumes
        (849, None, 10.0, "hi"),  # below: the highest priority first
        (500, 9.5, 10.0, None),  # one resume a second, so its growth shows first
        (500, 8.0, 10.0, "hi"),
    ],
)
def test_choose_resume(pool_mb, last_resume, now, expected):
    agents = [
        ag("lo", 100, prio=0, started=1, paused_at=1.0),
        ag("hi", 100, prio=5, started=2, paused_at=2.0),
        ag("run", 100),
    ]
    pick = choose_resume(agents, readings(pool_mb), now, last_resume, S)
    assert (pick.name if pick else None) == expected


def test_resume_in_priority_then_start_order():
    agents = [ag("b", 10, started=2, paused_at=1.0), ag("a", 10, started=1, paused_at=3.0)]
    assert choose_resume(agents, readings(100), 10.0, None, S).name == "a"  # oldest first


def test_nothing_paused_nothing_resumed():
    assert choose_resume([ag("a", 10)], readings(0), 10.0, None, S) is None
