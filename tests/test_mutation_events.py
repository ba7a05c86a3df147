"""The event log's promises at their edges (docs/protocol.md, Events): what a line holds,
which events a filter keeps, where a follower resumes, and how a failing log recovers.

Pure apart from files in ``tmp_path``: these run once per mutant of ``pmrun.events``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from pmrun import events
from pmrun.events import EventLog, matches, read_events, read_new


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_line_is_ts_level_kind_then_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    log = EventLog(str(path), clock=lambda: 1700000000.1234567)
    event = log.write("agent.register", agent="a.1", bytes=5)
    log.close()
    assert event == {"ts": 1700000000.123457, "level": "info", "kind": "agent.register",
                     "agent": "a.1", "bytes": 5}  # fmt: skip
    assert path.read_text() == json.dumps(event, separators=(",", ":")) + "\n"
    assert list(lines(path)[0]) == ["ts", "level", "kind", "agent", "bytes"]
    assert (log.written, log.failed) == (1, 0)


def test_an_unencodable_event_is_logged_as_an_error_of_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    circular: dict = {}
    circular["self"] = circular
    event = EventLog(str(path), clock=lambda: 5.0).write("pressure", "warning", x=circular)
    assert event["kind"] == "pressure"  # the caller gets its event back
    (line,) = lines(path)
    assert {k: line[k] for k in ("ts", "level", "kind", "of")} == {
        "ts": 5.0, "level": "error", "kind": "event.unencodable", "of": "pressure"
    }  # fmt: skip
    assert "circular" in line["error"].lower()


def test_a_failing_log_says_so_once_and_again_once_it_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dir" / "e.jsonl"
    log = EventLog(str(path))
    with caplog.at_level(logging.INFO, logger="pmrun.events"):
        log.write("a")
        log.write("b")
        (tmp_path / "dir").mkdir()
        log.write("c")
        log.write("d")
        os.rename(tmp_path / "dir", tmp_path / "gone")
        log.reopen_if_moved()  # its directory moved away: the next write fails again
        log.write("e")
    records = [r for r in caplog.records if r.name == "pmrun.events"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.WARNING, logging.ERROR]
    said = [r.getMessage() for r in records]
    assert all(str(path) in x for x in said)  # each names the log
    assert "No such file or directory" in said[0]  # and why it cannot be written
    assert (log.written, log.failed) == (2, 3)
    assert [e["kind"] for e in lines(tmp_path / "gone" / "e.jsonl")] == ["c", "d"]


def test_a_deleted_log_is_written_anew_and_a_kept_one_stays_open(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    log = EventLog(str(path))
    log.reopen_if_moved()  # not yet open: nothing to do
    log.write("a")
    fd = log._fd
    log.reopen_if_moved()
    assert log._fd == fd  # the same file: kept
    path.unlink()
    log.reopen_if_moved()
    log.write("b")
    assert [e["kind"] for e in lines(path)] == ["b"]
    path.rename(tmp_path / "old")
    path.write_text("")  # replaced by another file
    log.reopen_if_moved()
    log.write("c")
    assert [e["kind"] for e in lines(path)] == ["c"]
    log.close()
    log.close()  # twice is harmless


@pytest.mark.parametrize("cut", [1, 7])
def test_a_torn_write_is_ended_by_the_next_line(
    cut: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A disk that fills in the middle of a line: the rest never comes, the next event must
    # still be a line of its own.
    path = tmp_path / "e.jsonl"
    log = EventLog(str(path), clock=lambda: 1.0)
    real_write = os.write
    monkeypatch.setattr(events.os, "write", lambda fd, data: real_write(fd, data[:cut]))
    with caplog.at_level(logging.ERROR, logger="pmrun.events"):
        log.write("torn")
    assert log.failed == 1
    (said,) = [r.getMessage() for r in caplog.records if r.name == "pmrun.events"]
    assert str(path) in said and "[Errno 28] short write (disk full?)" in said
    monkeypatch.setattr(events.os, "write", real_write)
    log.write("next")
    log.write("after")
    text = path.read_text()
    assert text.startswith('{"ts":1'[:cut] + "\n{")
    assert [e["kind"] for e in events.parse_lines(text.splitlines())] == ["next", "after"]
    assert text.count("\n") == 3  # the torn line ended once, not before every later line


def test_a_write_that_writes_nothing_leaves_no_blank_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.jsonl"
    log = EventLog(str(path), clock=lambda: 1.0)
    real_write = os.write
    monkeypatch.setattr(events.os, "write", lambda fd, data: 0)
    log.write("lost")
    monkeypatch.setattr(events.os, "write", real_write)
    log.write("next")
    assert path.read_text() == '{"ts":1.0,"level":"info","kind":"next"}\n'


E = {"ts": 10.0, "level": "warning", "kind": "evict.request", "agent": "a.1", "name": "big"}


@pytest.mark.parametrize(
    ("event", "kw", "kept"),
    [
        (E, {}, True),
        ({**E, "ts": "10"}, {}, False),  # no usable time: not an event
        ({k: v for k, v in E.items() if k != "ts"}, {}, False),
        ({**E, "ts": 10}, {}, True),  # whole seconds are a time too
        (E, {"since": 10.0}, True),  # inclusive
        (E, {"since": 10.001}, False),
        (E, {"until": 10.0}, True),
        (E, {"until": 9.999}, False),
        (E, {"kinds": {"evict.request"}}, True),
        (E, {"kinds": {"evict"}}, True),  # the prefix before the dot
        (E, {"kinds": {"evict.result"}}, False),
        (E, {"kinds": {"ev"}}, False),  # a prefix is a whole word
        ({**E, "kind": "evict.request.sub"}, {"kinds": {"evict.request"}}, False),
        ({k: v for k, v in E.items() if k != "kind"}, {"kinds": {"evict"}}, False),
        ({k: v for k, v in E.items() if k != "kind"}, {"kinds": {"None"}}, False),
        (E, {"agent": "a.1"}, True),
        (E, {"agent": "big"}, True),
        (E, {"agent": "a.2"}, False),
        (E, {"min_level": "warning"}, True),
        (E, {"min_level": "info"}, True),
        (E, {"min_level": "critical"}, False),
        ({**E, "level": "error"}, {"min_level": "critical"}, True),
        ({**E, "level": "loud"}, {"min_level": "debug"}, False),  # unknown: never shown
        ({**E, "level": "loud"}, {}, True),
    ],
)
def test_matches(event: dict, kw: dict, kept: bool) -> None:
    args = {"since": None, "until": None, "kinds": None, "agent": None, "min_level": None, **kw}
    assert matches(event, **args) is kept


@pytest.mark.parametrize("key", ["victims", "candidates", "answered"])
def test_an_agent_is_found_in_every_list_of_agents(key: str) -> None:
    event = {"ts": 1, key: ["not a dict", {"agent": "x.1"}, {"name": "big"}]}
    for who in ("x.1", "big"):
        assert matches(event, None, None, None, who, None)
    assert not matches(event, None, None, None, "other", None)
    assert not matches({"ts": 1, "others": [{"agent": "x.1"}]}, None, None, None, "x.1", None)
    assert not matches({"ts": 1, key: None}, None, None, None, "x.1", None)


def test_a_limit_keeps_the_last_ones_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    ts = iter(range(1, 100))
    log = EventLog(str(path), clock=lambda: float(next(ts)))
    for kind in "abcd":
        log.write(kind)
    assert [e["kind"] for e in read_events(str(path), limit=2)] == ["c", "d"]
    assert [e["kind"] for e in read_events(str(path), limit=10)] == ["a", "b", "c", "d"]
    assert [e["kind"] for e in read_events(str(path), limit=-1)] == []
    assert [e["kind"] for e in read_events(str(path), kinds=["b", "d"])] == ["b", "d"]
    assert [e["kind"] for e in read_events(str(path), since=2, until=3)] == ["b", "c"]
    assert [e["kind"] for e in read_events(str(path), min_level="info")] == list("abcd")
    with pytest.raises(ValueError, match="debug, info, warning, critical, error"):
        read_events(str(path), min_level="loud")


def test_read_new_resumes_exactly_after_the_last_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    first = b'{"ts":1,"kind":"a"}\n'
    path.write_bytes(first + b'{"ts":2')
    got, offset = read_new(str(path))
    assert ([e["kind"] for e in got], offset) == (["a"], len(first))
    got, again = read_new(str(path), offset)  # nothing new: the same place
    assert (got, again) == ([], offset)
    with open(path, "ab") as f:
        f.write(b',"kind":"b"}\n')
    got, offset = read_new(str(path), offset)
    assert ([e["kind"] for e in got], offset) == (["b"], path.stat().st_size)
    size = path.stat().st_size
    assert read_new(str(path), size) == ([], size)  # exactly at the end: not replaced


@pytest.mark.parametrize(
    ("kind", "level"),
    [("warn", "warning"), ("stop", "critical"), ("kill", "critical"), ("pause", "warning"),
     ("resume", "info"), ("exit", "info"), ("something-new", "info")],
)  # fmt: skip
def test_launcher_event_levels(kind: str, level: str) -> None:
    assert events.launcher_event_level(kind) == level


def test_a_line_that_is_not_utf8_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"ts":1,"kind":"a"}\n{"ts":2,"kind":"\xe2\x82"}\n{"ts":3,"kind":"c"}\n')
    assert [e["kind"] for e in read_events(str(path))] == ["a", "c"]
    events_, offset = read_new(str(path))
    assert [e["kind"] for e in events_] == ["a", "c"] and offset == path.stat().st_size


def test_read_new_takes_every_whole_line_at_once(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    whole = b'{"ts":1,"kind":"a"}\n{"ts":2,"kind":"b"}\n'
    path.write_bytes(whole + b'{"ts":3')
    got, offset = read_new(str(path))
    assert ([e["kind"] for e in got], offset) == (["a", "b"], len(whole))


def test_a_device_may_be_the_log_and_a_refusal_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog("/dev/null")  # ours to write, as a FIFO or a terminal would be
    log.write("x")
    assert (log.written, log.failed) == (1, 0)
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "link").symlink_to(target)
    with caplog.at_level(logging.ERROR, logger="pmrun.events"):
        EventLog(str(tmp_path / "link")).write("x")
    (said,) = [r.getMessage() for r in caplog.records if r.name == "pmrun.events"]
    assert said.startswith(f"cannot write the event log {tmp_path / 'link'}: [Errno 1] ")
    assert "symlink" in said.lower() or "link" in said.split("[Errno 1] ", 1)[1]
