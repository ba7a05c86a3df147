"""The coordinator's decisions as the event log records them (docs/protocol.md, Events).

``summarize`` is the ``figures`` of ``pressure``, ``stop.decision`` and ``agent.pause``;
``Candidate``/``Pausable.to_dict`` are their ``candidates`` and ``victims``, which
``pmrun events --agent`` searches by ``agent`` and ``name``.
"""

from __future__ import annotations

from pmrun import events
from pmrun.coordinator.policy import Candidate, Pausable, Readings, summarize

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
