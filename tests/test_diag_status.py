"""The status screen from status documents: summary lines, agent rows, the no-coordinator case."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from pmrun.diagnostics.status import (
    agent_rows,
    eviction_text,
    format_age,
    gather,
    render,
    summary_lines,
)

MIB = 1 << 20
NOW = 1_700_000_000.0


def _service(name: str, held: int | None, last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "pid": 99, "agent": "a", "bytes": held, "process_rss_bytes": 0,
            "stats": {}, "last_eviction": last}  # fmt: skip


def _agent(name: str, rss: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"{name}.1", "name": name, "pid": 10, "child_pid": 11, "rss_bytes": rss,
            "pss_bytes": None, "peak_bytes": rss, "warn_bytes": 500 * MIB, "max_bytes": 1 << 30,
            "age_s": 65.0, "backend": {"name": "cgroup-v1", "reason": "auto"}, "state": "running", "stop_reason": None, "services": [], **extra}  # fmt: skip


def _status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ts": NOW,
        "socket": "/run/pmrun/c.sock",
        "coordinator": {"pid": 5, "uptime_s": 7300, "socket": "/run/pmrun/c.sock", "dry_run": False},
        "system": {"total_bytes": 8 << 30, "used_bytes": 2 << 30, "source": "meminfo", "threshold": 0.8,
                   "threshold_bytes": int(6.4 * (1 << 30)), "psi": {"some_avg10": 1.5, "full_avg10": 0.0},
                   "psi_threshold": 0.1},
        "pool": {"used_bytes": 300 * MIB, "limit_bytes": 2 << 30, "rss_bytes": 300 * MIB, "counted": "rss"},
        "pressure": {"level": "normal", "signals": {"pool": "normal"}, "ratios": {"pool": 0.15}},
        "agents": [_agent("small", 100 * MIB), _agent("big", 200 * MIB)],
        "services": [],
    }  # fmt: skip
    doc.update(over)
    return doc


def _text(status: dict[str, Any], **kw: Any) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(status, **kw))
    return console.export_text()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-3, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"),
     (3600, "1h00m"), (7384, "2h03m"), (86400, "1d00h"), (3 * 86400 + 4 * 3600 + 59, "3d04h")],
)  # fmt: skip
def test_ages_have_two_units_at_most(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_summary_has_memory_threshold_psi_pool_and_pressure() -> None:
    lines = dict(summary_lines(_status()))
    assert lines["memory"] == "2.0G used of 8.0G (25%), threshold 80% = 6.4G"
    assert lines["PSI"] == "some 1.5%, full 0.0% (avg10), threshold 10%"
    assert lines["pool"] == "300.0M of 2.0G (15%), counted by RSS"
    assert lines["pressure"] == "normal"


def test_summary_names_the_container_limit_and_raised_signals() -> None:
    doc = _status()
    doc["system"]["source"] = "cgroup v2 /sys/fs/cgroup/box"
    doc["system"]["psi"] = None
    doc["pool"]["limit_bytes"] = 0
    doc["pressure"] = {"level": "critical", "signals": {"pool": "normal", "system": "critical"}}
    lines = dict(summary_lines(doc))
    assert lines["memory"].endswith("[cgroup v2 /sys/fs/cgroup/box]")
    assert lines["PSI"].startswith("not available")
    assert lines["pool"] == "300.0M (no pool limit), counted by RSS"
    assert lines["pressure"] == "critical (system critical)"


def test_rows_put_services_under_their_agent_and_sort_by_rss_on_request() -> None:
    last = {"bytes": 4 * MIB, "ts": NOW - 65}
    doc = _status(agents=[_agent("small", 100 * MIB, services=[_service("cache", 12 * MIB, last)]),
                          _agent("big", 200 * MIB, state="stopping", stop_reason="pool")])  # fmt: skip
    rows = agent_rows(doc)
    assert [r[1][0] for r in rows] == ["small", "  └ cache", "big"]
    assert rows[0][1] == [
        "small",
        "10",
        "100.0M",
        "100.0M",
        "500.0M",
        "1.0G",
        "1m05s",
        "cgroup-v1",
        "running",
    ]
    assert rows[1] == (
        "service",
        ["  └ cache", "99", "12.0M held", "", "", "", "", "", "freed 4.0M 1m05s ago"],
    )
    assert rows[2][1][-1] == "stopping (pool)"
    assert [r[1][0] for r in agent_rows(doc, sort_by_rss=True)] == ["big", "small", "  └ cache"]


def test_peak_is_never_shown_below_the_current_figure() -> None:
    doc = _status(agents=[_agent("a", 100 * MIB, peak_bytes=0)])
    assert agent_rows(doc)[0][1][3] == "100.0M"


def test_services_without_a_registered_agent_come_last() -> None:
    doc = _status(services=[_service("orphan", None)])
    rows = agent_rows(doc)
    assert rows[-2] == ("agent", ["(no agent)", "", "", "", "", "", "", "", ""])
    assert rows[-1][1][0] == "  └ orphan" and rows[-1][1][2] == ""


@pytest.mark.parametrize(
    ("last", "text"),
    [
        (None, "never evicted"),
        ({"bytes": 1 << 20, "ts": NOW - 5}, "freed 1.0M 5s ago"),
        ({"bytes": None, "ts": NOW - 5}, "evicted 5s ago"),
        (
            {"error": "timeout: still running", "ts": NOW - 5},
            "eviction failed 5s ago: timeout: still running",
        ),
    ],
)
def test_eviction_text(last: dict[str, Any] | None, text: str) -> None:
    assert eviction_text(last, NOW) == text


def test_render_shows_header_summary_and_table() -> None:
    text = _text(_status())
    assert "coordinator pid 5 on /run/pmrun/c.sock, up 2h01m" in text
    header = next(line for line in text.splitlines() if line.startswith("NAME"))
    assert header.split() == [
        "NAME",
        "PID",
        "MEMORY",
        "PEAK",
        "WARN",
        "MAX",
        "AGE",
        "BACKEND",
        "STATE",
    ]
    assert _text(_status(agents=[])).rstrip().endswith("no agents registered")


def test_without_a_coordinator_gather_measures_locally() -> None:
    doc = gather("/nowhere.sock", query=lambda _path: None, clock=lambda: NOW)
    assert doc["coordinator"] is None and doc["ts"] == NOW and doc["socket"] == "/nowhere.sock"
    assert doc["system"]["total_bytes"] > doc["system"]["used_bytes"] > 0
    assert doc["system"]["threshold"] is None
    text = _text(doc)
    assert "no coordinator running on /nowhere.sock" in text and "NAME" not in text


def test_with_a_coordinator_gather_passes_its_status_through() -> None:
    doc = gather(
        "/s.sock", query=lambda _path: {"coordinator": {"pid": 1}, "agents": []}, clock=lambda: NOW
    )
    assert doc == {"ts": NOW, "socket": "/s.sock", "coordinator": {"pid": 1}, "agents": []}
