"""``pmrun events``: time filters, one-line formatting, following a log that grows, shrinks
and is replaced."""

from __future__ import annotations

import datetime as dt
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PMRUN
from helpers import pid_alive
from pmrun.diagnostics.events import follow, format_event, parse_time, summary
from pmrun.errors import UsageError

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "ago_s"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("90", 90),
        ("1.5h", 5400),
        (" 5 min ", 300),
    ],
)
def test_durations_are_seconds_ago(text: str, ago_s: float) -> None:
    assert parse_time(text, NOW) == NOW - ago_s


def test_iso_times_are_local_unless_zoned() -> None:
    assert parse_time("2023-11-14T22:13:20+00:00", NOW) == NOW
    assert parse_time("2023-11-14T22:13:20Z", NOW) == NOW
    local = dt.datetime(2024, 5, 1, 14, 30).timestamp()
    assert parse_time("2024-05-01T14:30", NOW) == local
    assert parse_time("2024-05-01 14:30:00", NOW) == local


@pytest.mark.parametrize("text", ["yesterday", "10 parsecs", "", "-5m", "2024-13-01"])
def test_bad_times_say_what_is_accepted(text: str) -> None:
    with pytest.raises(UsageError, match="expected a duration ago"):
        parse_time(text, NOW)


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (
            {"kind": "pressure", "previous": "normal", "pressure": "warning", "ratios": {"pool": 0.92}},
            "normal -> warning (pool 92%)",
        ),
        (
            {"kind": "evict.request", "fraction": 0.25, "reason": "pool", "services": [{}, {}]},
            "asked 2 service(s) to drop 25% (pool)",
        ),
        (
            {"kind": "evict.result", "freed_bytes": 3 << 20, "answered": [{}], "no_answer": [{}], "elapsed_s": 0.12},
            "freed 3.0M from 1 service(s) in 120 ms, 1 did not answer",
        ),
        (
            {"kind": "stop.decision", "reason": "pool", "needed_bytes": 100 << 20,
             "victims": [{"name": "a1", "bytes": 300 << 20}], "dry_run": False},
            "pool: 100.0M must go; stopping a1 (300.0M)",
        ),
        (
            {"kind": "stop.decision", "reason": "pool", "needed_bytes": 1 << 20, "victims": [], "dry_run": True},
            "pool: 1.0M must go; stopping nobody (no candidate) [dry run]",
        ),
        (
            {"kind": "stop.sent", "reason": "pool", "pid": 42, "bytes": 1 << 30},
            "stop (pool) sent to pid 42, 1.0G",
        ),
        (
            {"kind": "agent.deregister", "report": {"reason": "max-rss", "exit_status": 137, "peak_rss_bytes": 2 << 30}},
            "exited: max-rss, status 137, peak 2.0G",
        ),
        (
            {"kind": "launcher.warn", "rss": 600 << 20, "warn_rss": 500 << 20},
            "rss=600.0M warn_rss=500.0M",
        ),
        ({"kind": "service.register", "service": "cache", "pid": 7, "agent": None}, "service=cache pid=7"),
        ({"kind": "coordinator.start", "pid": 3, "socket": "/s", "settings": {}}, "pid 3 serving /s"),
    ],
)  # fmt: skip
def test_each_kind_reads_as_words(event: dict[str, Any], words: str) -> None:
    assert summary(event) == words


def test_format_event_is_one_line_with_local_time_level_kind_and_agent() -> None:
    e = {
        "ts": NOW,
        "level": "warning",
        "kind": "launcher.warn",
        "agent": "a1.7",
        "name": "a1",
        "rss": 1 << 20,
    }
    line = format_event(e)
    when = dt.datetime.fromtimestamp(NOW).strftime("%Y-%m-%d %H:%M:%S")
    assert line.startswith(f"{when}.000  WARNING  launcher.warn")
    assert line.split()[4] == "a1" and line.endswith("rss=1.0M")
    assert format_event({"kind": "x", "why": "two\nlines"}).endswith("why=two\\nlines")
    assert format_event({"kind": "x", "long": "y" * 100}).endswith("y…")


# -- following -------------------------------------------------------------------------------


def _line(**fields: Any) -> str:
    return json.dumps({"ts": NOW, "level": "info", **fields}) + "\n"


def test_follow_reads_appends_then_a_truncated_then_a_replaced_log(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(_line(kind="old"))
    steps = [
        lambda: log.open("a").write(_line(kind="one") + '{"torn'),  # a torn line waits
        lambda: log.open("a").write('": 1}\n' + _line(kind="skip")),
        lambda: log.write_text(_line(kind="after-truncation")),
        lambda: (log.unlink(), (tmp_path / "new").write_text(_line(kind="a") + _line(kind="after-replace")),
                 os.rename(tmp_path / "new", log)),
    ]  # fmt: skip

    def sleep(_s: float) -> None:  # the fake clock: each pause lets the next write happen
        if not steps:
            raise StopIteration
        steps.pop(0)()

    keep = lambda e: e.get("kind") != "skip" and e.get("kind") != "a"  # noqa: E731
    seen = []
    try:
        for e in follow(str(log), keep, offset=log.stat().st_size, sleep=sleep):
            seen.append(e.get("kind") or e)
    except RuntimeError:  # StopIteration inside a generator
        pass
    assert seen == ["one", {"torn": 1}, "after-truncation", "after-replace"]


def _readline(proc: subprocess.Popen[str], timeout: float = 10) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line in time"
    return proc.stdout.readline()


def test_events_follow_prints_new_matching_lines_until_ctrl_c(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(
        _line(kind="agent.register", name="a1") + _line(kind="agent.register", name="a2")
    )
    proc = subprocess.Popen(
        [PMRUN, "events", "--events", str(log), "--follow", "--json", "--agent", "a2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(_readline(proc))["name"] == "a2"
        with log.open("a") as f:
            f.write(
                _line(kind="launcher.warn", name="a1")
                + _line(kind="launcher.warn", name="a2", rss=5)
            )
        assert json.loads(_readline(proc)) == {
            "ts": NOW,
            "level": "info",
            "kind": "launcher.warn",
            "name": "a2",
            "rss": 5,
        }
        log.write_text(
            _line(kind="coordinator.start") + _line(kind="agent.register", name="a2", again=True)
        )
        assert json.loads(_readline(proc))["again"] is True
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not pid_alive(proc.pid)


def test_events_filters_and_formats_a_log(tmp_path: Path) -> None:
    now = time.time()
    log = tmp_path / "events.jsonl"
    log.write_text(
        json.dumps({"ts": now - 3600, "level": "info", "kind": "agent.register", "name": "old"}) + "\n"
        + json.dumps({"ts": now - 60, "level": "warning", "kind": "launcher.warn", "name": "a1", "rss": 1 << 20}) + "\n"
        + "not json\n"
        + json.dumps({"ts": now - 30, "level": "critical", "kind": "stop.decision", "reason": "pool",
                      "needed_bytes": 1 << 20, "victims": [{"name": "a1", "agent": "a1.1", "bytes": 2 << 20}]}) + "\n"
        + json.dumps({"ts": now - 10, "level": "info", "kind": "evict.result", "freed_bytes": 0}) + "\n"
    )  # fmt: skip

    def run(*args: str) -> list[str]:
        r = subprocess.run(
            [PMRUN, "events", "--events", str(log), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    assert len(run()) == 4
    assert [json.loads(x)["kind"] for x in run("--since", "10m", "--json")] == [
        "launcher.warn", "stop.decision", "evict.result",
    ]  # fmt: skip
    assert [json.loads(x)["kind"] for x in run("--agent", "a1", "--json")] == [
        "launcher.warn",
        "stop.decision",
    ]
    assert [json.loads(x)["kind"] for x in run("--kind", "stop", "--kind", "evict", "--json")] == [
        "stop.decision", "evict.result",
    ]  # fmt: skip
    assert [json.loads(x)["kind"] for x in run("--level", "warning", "-n", "1", "--json")] == [
        "stop.decision"
    ]
    [line] = run("--kind", "stop.decision")
    assert "CRITICAL" in line and "pool: 1.0M must go; stopping a1 (2.0M)" in line
