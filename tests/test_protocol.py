"""The coordinator protocol: framing, encode/decode, validation (pure, no sockets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmrun.coordinator import protocol as p
from pmrun.errors import ProtocolError

EXAMPLES: list[p.Message] = [
    p.Ping(id=1),
    p.Pong(id=1, pid=42, uptime_s=1.5),
    p.Register(
        agent_id="a1",
        name="claude",
        launcher_pid=10,
        child_pid=11,
        argv=["claude", "-p", "hi"],
        max_rss=1 << 30,
        warn_rss=500 << 20,
        priority=2,
        backend={"name": "sampling", "reason": "no cgroup"},
        started=1700000000.5,
        rss=123,
        peak=456,
        pids=[[11, 999], [12, 1000]],
    ),  # fmt: skip
    p.Report(rss=1, peak=2, pids=[[11, 999]], state="running"),
    p.Event(kind="warn", fields={"rss_bytes": 1}),
    p.Deregister(id=3, report={"exit_code": 137, "reason": "pool"}),
    p.Stop(reason="pool", detail={"needed_bytes": 5}),
    p.Pause(reason="pool", detail={"needed_bytes": 5, "max_pause_s": 120.0}),
    p.Resume(detail={"paused_s": 12.5, "why": "headroom"}),
    p.Shutdown(id=4),
    p.Admit(id=3, agent_id="a1", name="claude", priority=0, expect=900 << 20),
    p.Admission(
        id=3,
        start=False,
        ahead=2,
        expect_bytes=900 << 20,
        expect_source="flag",
        used_bytes=2900 << 20,
        limit_bytes=3 << 30,
        why="queued",
    ),  # fmt: skip
    p.Service(id=4, name="cache", pid=77, agent_id="a1"),
    p.ServiceClose(name="cache"),
    p.Stats(pid=77, rss=100, services={"cache": {"bytes": 5}}),
    p.GetStats(id=5),
    p.Evict(id=6, fraction=0.75, level="critical", reason="pool", timeout_s=0.5),
    p.Evicted(
        id=6, results=[{"name": "cache", "bytes": 5, "rss_drop": 4}], rss_before=9, rss_after=5
    ),
    p.Cleanup(id=7, agent="claude", fraction=0.5),
    p.CleanupResult(id=7, fraction=0.5, elapsed_s=0.01, results=[]),
    p.Status(id=8),
    p.StatusResult(id=8, status={"agents": []}),
    p.Heap(id=9, agent="claude", limit=10),
    p.HeapResult(id=9, results=[{"pid": 77, "types": []}]),
    p.Ok(id=3, of="deregister"),
    p.Error(id=None, code="bad-frame", message="not JSON"),
]


def test_every_message_type_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(p.MESSAGES.values())


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(msg):
    frame = p.encode(msg)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    obj = json.loads(frame)
    assert obj["type"] == msg.TYPE and obj["version"] == p.VERSION
    assert p.decode(frame) == msg


def test_none_fields_are_left_out_and_defaults_fill_in():
    frame = p.encode(p.Ping())
    assert json.loads(frame) == {"type": "ping", "version": 1}
    msg = p.decode(b'{"type":"report","version":1,"rss":5,"peak":6}')
    assert msg == p.Report(rss=5, peak=6, pids=[], state="running")


def test_unknown_fields_are_ignored():
    assert p.decode(b'{"type":"ping","version":1,"id":3,"future":true}') == p.Ping(id=3)


def test_integral_floats_are_accepted_as_ints():
    msg = p.decode(b'{"type":"report","version":1,"rss":5.0,"peak":6}')
    assert isinstance(msg, p.Report) and msg.rss == 5 and isinstance(msg.rss, int)


@pytest.mark.parametrize(
    "frame, fragment",
    [
        (b"garbage", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"type":"ping"}', "version"),
        (b'{"type":"ping","version":true}', "version"),
        (b'{"type":"ping","version":2}', "not supported"),
        (b'{"version":1}', "type"),
        (b'{"type":"exec","version":1,"cmd":"rm -rf /"}', "unknown message type"),
        (b'{"type":"report","version":1,"rss":5}', "missing peak"),
        (b'{"type":"report","version":1,"rss":"5","peak":1}', "report.rss"),
        (b'{"type":"report","version":1,"rss":true,"peak":1}', "boolean"),
        (b'{"type":"report","version":1,"rss":-1,"peak":1}', "zero or more"),
        (b'{"type":"report","version":1,"rss":1,"peak":1,"pids":[[0,1]]}', "pids"),
        (b'{"type":"report","version":1,"rss":1,"peak":1,"pids":[[1]]}', "pairs"),
        (b'{"type":"report","version":1,"rss":1e400,"peak":1}', "report.rss"),
        (
            b'{"type":"evict","version":1,"id":1,"fraction":1.5,"level":"critical",'
            b'"reason":"x","timeout_s":1}',
            "between 0 and 1",
        ),  # fmt: skip
        (b'{"type":"stop","version":1,"reason":"because"}', "stop.reason"),
        (b'{"type":"heap","version":1,"limit":100000}', "heap.limit"),
        (b'{"type":"register","version":1}', "missing agent_id"),
    ],
)
def test_bad_frames_are_protocol_errors(frame, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        p.decode(frame)


def test_deep_nesting_is_a_protocol_error_not_a_crash():
    deep = (
        b'{"type":"event","version":1,"kind":"x","fields":{"a":'
        + b"[" * 50000
        + b"]" * 50000
        + b"}}"
    )
    with pytest.raises(ProtocolError):
        p.decode(deep, max_frame=1 << 20)


def test_oversized_frames_are_refused_both_ways():
    big = p.Event(kind="x", fields={"blob": "y" * p.MAX_FRAME})
    with pytest.raises(ProtocolError, match="exceeds"):
        p.encode(big)
    assert p.decode(p.encode(big, p.MAX_REPLY_FRAME), p.MAX_REPLY_FRAME) == big
    with pytest.raises(ProtocolError, match="exceeds"):
        p.decode(b" " * (p.MAX_FRAME + 1))


def test_nan_cannot_be_encoded():
    with pytest.raises(ProtocolError):
        p.encode(p.Event(kind="x", fields={"v": float("nan")}))


def test_too_many_pids_are_refused():
    with pytest.raises(ProtocolError, match="more than"):
        p.Report(rss=1, peak=1, pids=[[i + 1, 1] for i in range(p.MAX_PIDS + 1)])


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"x" * 70000, "too-large"),
        (b'{"type": "ping", "version": 99}', "bad-version"),
        (b'{"type": "no-such-type", "version": 1}', "unknown-type"),
        (b"not JSON", "bad-frame"),
        (b'[1, "exceeds", "not supported"]', "bad-frame"),  # words in the text do not matter
    ],
)
def test_error_codes(frame, code):
    with pytest.raises(ProtocolError) as e:
        p.decode(frame)
    assert p.error_code(e.value) == code


def test_frame_buffer_splits_and_keeps_partial_frames():
    buf = p.FrameBuffer(max_frame=64)
    assert buf.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert buf.pending == 4
    assert buf.feed(b":2}\n\n  \n") == [b'{"b":2}']
    assert buf.pending == 0


def test_frame_buffer_refuses_a_frame_longer_than_the_limit():
    buf = p.FrameBuffer(max_frame=16)
    with pytest.raises(p.FrameTooLarge):
        buf.feed(b"x" * 17)
    buf = p.FrameBuffer(max_frame=16)
    with pytest.raises(p.FrameTooLarge):
        buf.feed(b"x" * 20 + b"\n")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_protocol_error(data):
    try:
        p.decode(data)
    except ProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 40), 1 << 40) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["type", "version", "id", "rss", "peak", "pids", "kind", "fields",
                                     "name", "pid", "fraction", "agent"]), json_values, max_size=8),
    st.sampled_from(sorted(p.MESSAGES)),
)  # fmt: skip
def test_decode_of_arbitrary_objects_validates_or_refuses(obj, kind):
    obj = {**obj, "type": kind, "version": 1}
    try:
        msg = p.decode(json.dumps(obj))
    except ProtocolError:
        return
    assert p.decode(p.encode(msg, p.MAX_REPLY_FRAME), p.MAX_REPLY_FRAME) == msg


@settings(max_examples=100, deadline=None)
@given(
    rss=st.integers(0, 1 << 50),
    peak=st.integers(0, 1 << 50),
    pids=st.lists(st.tuples(st.integers(1, 1 << 22), st.integers(0, 1 << 40)), max_size=50),
    state=st.text(max_size=20),
)
def test_report_round_trips(rss, peak, pids, state):
    msg = p.Report(rss=rss, peak=peak, pids=[list(x) for x in pids], state=state)
    assert p.decode(p.encode(msg)) == msg


def test_docs_show_a_valid_example_of_every_message():
    """docs/protocol.md: each ```json block holds frames (wrapped for reading) that decode."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    seen = set()
    for block in re.findall(r"```json\n(.*?)```", doc, re.S):
        frames: list[str] = []
        for line in block.splitlines():
            if line.startswith('{"type"'):
                frames.append(line)
            elif frames:
                frames[-1] += line.strip()
        for frame in frames:
            msg = p.decode(frame, p.MAX_REPLY_FRAME)
            seen.add(type(msg))
    assert seen == set(p.MESSAGES.values())


# -- what a register shows of the agent ----------------------------------------------------


@given(st.lists(st.text(max_size=3000), max_size=40))
def test_shown_argv_always_fits_and_keeps_what_fits_whole(argv):
    shown = p.shown_argv(argv)
    assert len(json.dumps(shown, separators=(",", ":"))) <= p.ARGV_SHOWN_BYTES
    if len(json.dumps(argv, separators=(",", ":"))) <= p.ARGV_SHOWN_BYTES:
        assert shown == argv
    else:
        assert shown[-1].startswith("...[") and "more bytes]" in shown[-1]
        kept = shown[:-1]
        assert kept[:-1] == argv[: len(kept) - 1]  # whole arguments, then one cut at most
        if kept:
            assert argv[len(kept) - 1].startswith(kept[-1])


def test_a_register_cuts_argv_and_name_instead_of_refusing_them():
    msg = p.Register(
        agent_id="a.1", name="n" * 500, launcher_pid=1, child_pid=2,
        argv=["x" * 100_000, "y"], started=0.0,
    )  # fmt: skip
    assert len(msg.name) == p.MAX_AGENT_NAME
    assert msg.argv[-1] == "...[1 more args, " + str(100_001 - len(msg.argv[0])) + " more bytes]"
    assert len(p.encode(msg)) < p.MAX_FRAME


def test_a_register_claiming_a_uid_decodes_without_it() -> None:
    """Launchers before the field was dropped still send ``uid``: they register as before,
    and the claim goes nowhere (the coordinator takes the uid from SO_PEERCRED)."""
    frame = (
        b'{"type":"register","version":1,"agent_id":"a","name":"n","launcher_pid":1,'
        b'"child_pid":2,"uid":0,"argv":[],"started":0}'
    )
    msg = p.decode(frame)
    assert isinstance(msg, p.Register) and msg.agent_id == "a"
    assert not hasattr(msg, "uid")
