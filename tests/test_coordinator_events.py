"""The event log: append-only JSON lines, a writer that never raises, a filtering reader."""

from __future__ import annotations

import json
import logging
import os

import pytest

from helpers import FakeClock
from pmrun.events import EventLog, read_events, read_new


def clock() -> FakeClock:
    """A second passes at every reading, from 100."""
    return FakeClock(start=100.0, step_s=1.0)


def test_events_are_appended_as_json_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), clock=clock())
    log.write("pressure", "warning", pressure="warning")
    log.write("stop.decision", "critical", victims=[{"agent": "a1", "name": "big"}])
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["pressure", "stop.decision"]
    assert json.loads(lines[0]) == {"ts": 101.0, "level": "warning", "kind": "pressure",
                                    "pressure": "warning"}  # fmt: skip
    assert os.stat(path).st_mode & 0o777 == 0o600
    EventLog(str(path)).write("again")  # a second writer appends
    assert len(path.read_text().splitlines()) == 3


def test_reader_filters(tmp_path):
    path = str(tmp_path / "e.jsonl")
    log = EventLog(path, clock=clock())
    log.write("evict.request", "warning")  # ts 101
    log.write("evict.result", "warning", answered=[{"agent": "a1", "service": "cache"}])
    log.write("stop.decision", "critical", victims=[{"agent": "a2", "name": "big"}])
    log.write("agent.register", agent="a3", name="small")  # ts 104
    assert [e["kind"] for e in read_events(path, kinds=["evict"])] == [
        "evict.request",
        "evict.result",
    ]
    assert [e["kind"] for e in read_events(path, agent="big")] == ["stop.decision"]
    assert [e["kind"] for e in read_events(path, agent="a1")] == ["evict.result"]
    assert [e["ts"] for e in read_events(path, since=102, until=103)] == [102, 103]
    assert [e["kind"] for e in read_events(path, min_level="critical")] == ["stop.decision"]
    assert [e["kind"] for e in read_events(path, limit=1)] == ["agent.register"]
    assert read_events(path, limit=0) == []
    assert read_events(str(tmp_path / "missing")) == []
    with pytest.raises(ValueError):
        read_events(path, min_level="loud")


def test_reader_skips_torn_and_foreign_lines(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(
        '{"ts":1,"level":"info","kind":"a"}\nnot json\n[1]\n{"kind":"no ts"}\n{"ts":2,"lev'
    )
    assert [e["kind"] for e in read_events(str(path))] == ["a"]


def test_read_new_follows_appends_and_leaves_partial_lines(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"ts":1,"kind":"a"}\n{"ts":2,"ki')
    events, offset = read_new(str(path))
    assert [e["kind"] for e in events] == ["a"]
    with open(path, "a") as f:
        f.write('nd":"b"}\n')
    events, offset = read_new(str(path), offset)
    assert [e["kind"] for e in events] == ["b"]
    path.write_text('{"ts":3,"kind":"c"}\n')  # replaced by a shorter file: read from the start
    assert [e["kind"] for e in read_new(str(path), offset + 100)[0]] == ["c"]
    assert read_new(str(tmp_path / "none")) == ([], 0)


def test_unwritable_log_is_reported_once_and_never_raises(tmp_path, caplog):
    path = tmp_path / "no-such-dir" / "e.jsonl"
    log = EventLog(str(path))
    with caplog.at_level(logging.ERROR, logger="pmrun.events"):
        for _ in range(5):
            event = log.write("pressure", "warning")
    assert event["kind"] == "pressure"
    assert log.failed == 5 and log.written == 0
    assert len([r for r in caplog.records if "cannot write" in r.message]) == 1
    (tmp_path / "no-such-dir").mkdir()
    log.write("pressure")
    assert log.written == 1


def test_full_disk_is_survived():
    log = EventLog("/dev/full")
    log.write("x")
    log.write("y")
    assert log.failed == 2


def test_symlinked_log_is_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "link").symlink_to(target)
    log = EventLog(str(tmp_path / "link"))
    log.write("x")
    assert log.failed == 1 and target.read_text() == ""


def test_unencodable_fields_become_strings(tmp_path):
    path = tmp_path / "e.jsonl"
    EventLog(str(path)).write("x", obj=object())
    assert json.loads(path.read_text())["obj"].startswith("<object")
