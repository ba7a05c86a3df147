"""The coordinator's decisions as the event log records them (docs/protocol.md, Events),
and the edges of pausing, resuming and admitting.

``summarize`` is the ``figures`` of ``pressure``, ``stop.decision`` and ``agent.pause``;
``Candidate``/``Pausable.to_dict`` are their ``candidates`` and ``victims``, which
``pmrun events --agent`` searches by ``agent`` and ``name``.
"""

from __future__ import annotations

import pytest

from pmrun import events
from pmrun.coordinator.policy import (
    Candidate,
    Pausable,
    PauseSettings,
    Readings,
    Waiting,
    admit,
    choose_pauses,
    choose_resume,
    fits,
    held_aside_bytes,
    next_tick_s,
    summarize,
)

MIB = 1 << 20


def test_the_figures_name_every_reading_and_round_the_ratios() -> None:
    r = Readings(300 * MIB, 900 * MIB, 7000 * MIB, 10_000 * MIB, 0.8, 12.5, 0.3)
    assert summarize(r) == {
        "pool_used_bytes": 300 * MIB,
        "pool_limit_bytes": 900 * MIB,
        "system_used_bytes": 7000 * MIB,
        "system_total_bytes": 10_000 * MIB,
        "system_threshold_bytes": 8000 * MIB,
        "psi_some_avg10": 12.5,
        "ratios": {"pool": 0.3333, "system": 0.875, "psi": 0.4167},
    }


def test_candidates_are_logged_with_their_figures() -> None:
    c = Candidate("a.1", "a", 5 * MIB, 2, 1700000000.5)
    assert c.to_dict() == {
        "agent": "a.1",
        "name": "a",
        "bytes": 5 * MIB,
        "priority": 2,
        "started": 1700000000.5,
    }
    p = Pausable("b.2", "b", 7 * MIB, 1, 1700000001.0, 3 * MIB, None)
    assert p.to_dict() == {
        "agent": "b.2",
        "name": "b",
        "bytes": 7 * MIB,
        "priority": 1,
        "growth_bytes": 3 * MIB,
    }


def test_an_agent_is_found_among_the_logged_victims() -> None:
    victims = [Candidate("a.1", "a", MIB, 0, 0.0).to_dict()]
    paused = [Pausable("b.2", "b", MIB, 0, 0.0, 0, None).to_dict()]
    for who in ("a.1", "a"):
        assert events.matches({"ts": 1, "victims": victims}, None, None, None, who, None)
    for who in ("b.2", "b"):
        assert events.matches({"ts": 1, "candidates": paused}, None, None, None, who, None)
    assert not events.matches({"ts": 1, "victims": victims}, None, None, None, "b", None)


# -- the edges of pausing, resuming and admitting ---------------------------------------------

S = PauseSettings(max_pause_s=120.0, resume_interval_s=1.0, min_growth_bytes=8 * MIB)


def ag(name: str, mib: int, started: float, *, grew: int = 8 * MIB, paused_at: float | None = None,
       stopping: bool = False, nbytes: int | None = None) -> Pausable:  # fmt: skip
    return Pausable(
        agent_id=name, name=name, bytes=mib * MIB if nbytes is None else nbytes, priority=0,
        started=started, growth_bytes=grew, max_rss=None, paused_at=paused_at, stopping=stopping,
    )  # fmt: skip


def test_the_monitor_sleeps_half_a_second_when_nothing_needs_polling() -> None:
    assert next_tick_s(Readings(0, 1000 * MIB, 0, 0, 0.8)) == 0.5  # the pool alone
    assert next_tick_s(Readings(0, 0, 0, 1 << 40, 0.8)) == 0.5  # far from the system's level


def test_a_stopping_agent_does_not_hide_the_others_held_aside() -> None:
    agents = [ag("s", 50, 1, paused_at=100.0, stopping=True), ag("p", 100, 2, paused_at=100.0)]
    assert held_aside_bytes(agents, 110.0, 120.0) == 100 * MIB


def test_a_pause_is_held_aside_for_less_than_max_pause() -> None:
    agents = [ag("p", 100, 1, paused_at=100.0)]
    assert held_aside_bytes(agents, 219.0, 120.0) == 100 * MIB
    assert held_aside_bytes(agents, 220.0, 120.0) == 0  # exactly max_pause_s: given up


def test_growth_of_exactly_the_minimum_drives_the_pressure() -> None:
    agents = [ag("a", 100, 1), ag("b", 100, 2, grew=8 * MIB), ag("c", 100, 3, grew=8 * MIB - 1)]
    assert [a.name for a in choose_pauses(agents, MIB, S)] == ["b"]


@pytest.mark.parametrize(
    ("need", "expected"),
    [(100 * MIB, ["d"]), (100 * MIB + 1, ["d", "c"]), (200 * MIB, ["d", "c"])],
)
def test_pauses_stop_once_the_need_is_exactly_covered(need: int, expected: list[str]) -> None:
    agents = [ag(n, 100, t) for t, n in enumerate("abcd")]
    assert [a.name for a in choose_pauses(agents, need, S)] == expected


def test_an_agent_of_no_bytes_covers_one_byte() -> None:
    # Pausing it must not look free (or the loop would pause every agent for nothing),
    # nor worth more than the byte it is counted as.
    agents = [ag(n, 0, t, nbytes=0) for t, n in enumerate("abcd")]
    assert [a.name for a in choose_pauses(agents, 2, S)] == ["d", "c"]


def test_resume_exactly_one_interval_after_the_last() -> None:
    agents = [ag("p", 10, 1, paused_at=1.0)]
    r = Readings(0, 1000 * MIB, 0, 0, 0.8)
    assert choose_resume(agents, r, 11.0, 10.0, S) is agents[0]
    assert choose_resume(agents, r, 10.999, 10.0, S) is None


def test_no_resume_exactly_at_the_resume_level() -> None:
    s = PauseSettings(resume_below=0.5)
    agents = [ag("p", 10, 1, paused_at=1.0)]
    assert choose_resume(agents, Readings(500, 1000, 0, 0, 0.8), 10.0, None, s) is None
    assert choose_resume(agents, Readings(499, 1000, 0, 0, 0.8), 10.0, None, s) is agents[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 1, 1, 0, 0), True),  # exactly at the pool limit: fits
        ((1, 1, 1, 0, 0), False),  # a limit of one byte is a limit
        ((1, 0, 1, 0, 0), True),
        ((5, 1 << 40, 0, 0, 0), True),  # no pool limit
        ((0, 0, 0, 1, 1), True),  # exactly at the system threshold: fits
        ((1, 0, 0, 1, 1), False),
        ((5, 0, 0, 1 << 40, 0), True),  # no system threshold
    ],
)
def test_fits(args: tuple[int, int, int, int, int], expected: bool) -> None:
    assert fits(*args) is expected


def go(queue: list[Waiting], **kw: int | bool) -> list[str]:
    args: dict = {"pool_used": 0, "pool_limit": 0, "system_used": 0, "system_threshold": 0,
                  "reserved_bytes": 0, "idle": False, **kw}  # fmt: skip
    return [w.agent_id for w in admit(queue, **args)]


def test_an_agent_expecting_nothing_starts_on_a_full_pool() -> None:
    assert go([Waiting(1, "z", 0, 0)], pool_used=1000, pool_limit=1000) == ["z"]


def test_an_agent_of_unknown_size_starts_under_the_systems_warning_level() -> None:
    q = [Waiting(1, "u", 0, None)]
    assert go(q, system_used=900, system_threshold=1000) == ["u"]
    assert go(q, system_used=901, system_threshold=1000) == []


def test_each_admitted_agent_adds_to_what_the_next_must_fit_beside() -> None:
    q = [Waiting(1, "a", 0, 100), Waiting(2, "b", 0, 150)]
    assert go(q, pool_used=500, pool_limit=1000, reserved_bytes=300) == ["a"]
    assert go(q, pool_used=500, pool_limit=1000, reserved_bytes=250) == ["a", "b"]
