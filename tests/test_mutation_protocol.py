"""The protocol's checks at their edges, and exactly what a refused frame is told.

``error`` frames carry the message of the :class:`ProtocolError` to the peer, which shows
it to a person: the table pins each message and code, as test_sizes does for sizes.
Pure: these run once per mutant of ``pmrun.coordinator.protocol``.
"""

from __future__ import annotations

import pytest

from pmrun.coordinator import protocol as p
from pmrun.errors import ProtocolError

R = '"type":"report","version":1'
REG = (
    '"type":"register","version":1,"agent_id":"a","name":"n","launcher_pid":1,"child_pid":2,'
    '"argv":[],"started":0'
)
EV = '"type":"evict","version":1,"id":1,"fraction":0.5,"level":"warning","reason":"pool"'
DEEP = '{"type":"event","version":1,"kind":"x","fields":{"a":%s}}'


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("{" + R + ',"rss":1.5,"peak":1}', "report.rss: expected an integer, got float"),
        ("{" + R + ',"rss":true,"peak":1}', "report.rss: expected an integer, got a boolean"),
        ("{" + R + ',"rss":"1","peak":1}', "report.rss: expected an integer, got str"),
        ("{" + R + f',"rss":{1 << 63},"peak":1' + "}", "report.rss: integer out of range"),
        ("{" + R + f',"rss":{-(1 << 63) - 1},"peak":1' + "}", "report.rss: integer out of range"),
        ("{" + R + ',"rss":-1,"peak":1}', "report.rss: must be zero or more"),
        ("{" + R + ',"rss":1,"peak":-1}', "report.peak: must be zero or more"),
        ("{" + R + ',"rss":1,"peak":1,"state":5}', "report.state: expected a string, got int"),
        ("{" + R + ',"rss":1,"peak":1,"pids":{}}', "report.pids: expected a list of [pid, start_time] pairs"),
        ("{" + R + ',"rss":1,"peak":1,"pids":[[1,2,3]]}', "report.pids: expected a list of [pid, start_time] pairs"),
        ("{" + R + ',"rss":1,"peak":1,"pids":[5]}', "report.pids: expected a list of [pid, start_time] pairs"),
        ("{" + R + ',"rss":1,"peak":1,"pids":[[0,0]]}', "report.pids: pids must be positive and start times zero or more"),
        ("{" + R + ',"rss":1,"peak":1,"pids":[[1,-1]]}', "report.pids: pids must be positive and start times zero or more"),
        ("{" + R + ',"rss":1,"peak":1,"pids":[[1.5,1]]}', "report.pids: expected an integer, got float"),
        ('{"type":"pong","version":1,"pid":1,"uptime_s":"x"}', "pong.uptime_s: expected a number, got str"),
        ('{"type":"pong","version":1,"pid":1,"uptime_s":true}', "pong.uptime_s: expected a number, got bool"),
        ('{"type":"pong","version":1,"pid":1,"uptime_s":1e400}', "pong.uptime_s: expected a finite number"),
        ('{"type":"pong","version":1,"pid":1,"uptime_s":-1e400}', "pong.uptime_s: expected a finite number"),
        ('{"type":"admission","version":1,"start":1}', "admission.start: expected true or false, got int"),
        ('{"type":"event","version":1,"kind":"x","fields":[]}', "event.fields: expected an object, got list"),
        ("{" + REG + ',"argv":[1]}', "register.argv: expected a list of strings"),
        ("{" + REG + ',"argv":"x"}', "register.argv: expected a list of strings"),
        ('{"type":"evicted","version":1,"id":1,"results":[1]}', "evicted.results: expected a list of objects"),
        ('{"type":"evicted","version":1,"id":1,"results":{}}', "evicted.results: expected a list of objects"),
        ("{" + REG.replace('"a"', '""', 1) + "}", "register.agent_id: 1 to 256 characters"),
        ("{" + REG.replace('"a"', '"' + "x" * 257 + '"', 1) + "}", "register.agent_id: 1 to 256 characters"),
        ("{" + REG.replace('"launcher_pid":1', '"launcher_pid":-1') + "}", "register.launcher_pid: must be zero or more"),
        ("{" + REG.replace('"child_pid":2', '"child_pid":-1') + "}", "register.child_pid: must be zero or more"),
        ("{" + REG + ',"max_rss":-1}', "register.max_rss: must be zero or more"),
        ("{" + REG + ',"warn_rss":-1}', "register.warn_rss: must be zero or more"),
        ("{" + REG + ',"rss":-1}', "register.rss: must be zero or more"),
        ("{" + REG + ',"peak":-1}', "register.peak: must be zero or more"),
        ('{"type":"admit","version":1,"agent_id":"","name":"n"}', "admit.agent_id: 1 to 128 characters"),
        ('{"type":"admit","version":1,"agent_id":"' + "x" * 129 + '","name":"n"}', "admit.agent_id: 1 to 128 characters"),
        ('{"type":"admit","version":1,"agent_id":"a","name":"n","expect":-1}', "admit.expect: must be zero or more"),
        ('{"type":"admit","version":1,"agent_id":"a","name":"n","warn_rss":-1}', "admit.warn_rss: must be zero or more"),
        ('{"type":"admit","version":1,"agent_id":"a","name":"n","max_rss":-1}', "admit.max_rss: must be zero or more"),
        ('{"type":"service","version":1,"name":"","pid":1}', "service.name: 1 to 200 characters"),
        ('{"type":"service","version":1,"name":"' + "x" * 201 + '","pid":1}', "service.name: 1 to 200 characters"),
        ("{" + EV.replace("0.5", "1.01") + ',"timeout_s":1}', "evict.fraction: must be between 0 and 1"),
        ("{" + EV.replace("0.5", "-0.01") + ',"timeout_s":1}', "evict.fraction: must be between 0 and 1"),
        ("{" + EV.replace('"warning"', '"loud"') + ',"timeout_s":1}', "evict.level: expected one of normal, warning, critical, manual"),
        ("{" + EV + ',"timeout_s":-1}', "evict.timeout_s: must be zero or more"),
        ('{"type":"cleanup","version":1,"fraction":2}', "cleanup.fraction: must be between 0 and 1"),
        ('{"type":"stop","version":1,"reason":"x"}', "stop.reason: expected one of pool, system-pressure"),
        ('{"type":"pause","version":1,"reason":"x"}', "pause.reason: expected one of pool, system-pressure"),
        ('{"type":"heap","version":1,"limit":0}', "heap.limit: between 1 and 200"),
        ('{"type":"heap","version":1,"limit":201}', "heap.limit: between 1 and 200"),
        ('{"type":"ping"}', "missing or invalid 'version'"),
        ('{"type":"ping","version":"1"}', "missing or invalid 'version'"),
        ('{"type":"ping","version":true}', "missing or invalid 'version'"),
        ('{"version":1}', "missing or invalid 'type'"),
        ('{"type":1,"version":1}', "missing or invalid 'type'"),
        ('{"type":"pong","version":1}', "pong: missing pid, uptime_s"),
        ("[]", "a frame must be a JSON object"),
        ("nope", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (DEEP % "NaN", "numbers must be finite (no NaN, Infinity or 1e400)"),
        (DEEP % "Infinity", "numbers must be finite (no NaN, Infinity or 1e400)"),
        (DEEP % "-Infinity", "numbers must be finite (no NaN, Infinity or 1e400)"),
        (DEEP % ("[" * 31 + "]" * 31), "objects and arrays nested deeper than 32 levels"),
    ],
)  # fmt: skip
def test_a_refused_frame_is_told_exactly_what_is_wrong(frame: str, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        p.decode(frame)
    assert (str(e.value), p.error_code(e.value)) == (message, "bad-frame")


@pytest.mark.parametrize(
    ("frame", "message", "code"),
    [
        ('{"type":"ping","version":2}', "protocol version 2 is not supported (this is 1)", "bad-version"),
        ('{"type":"ping","version":0}', "protocol version 0 is not supported (this is 1)", "bad-version"),
        ('{"type":"' + "z" * 60 + '","version":1}', "unknown message type '" + "z" * 40 + "'", "unknown-type"),
        (" " * (p.MAX_FRAME + 1), f"frame of {p.MAX_FRAME + 1} bytes exceeds {p.MAX_FRAME}", "too-large"),
    ],
)  # fmt: skip
def test_refusals_with_their_own_code(frame: str, message: str, code: str) -> None:
    with pytest.raises(ProtocolError) as e:
        p.decode(frame)
    assert (str(e.value), e.value.code) == (message, code)


@pytest.mark.parametrize(
    ("frame", "field", "value"),
    [
        ("{" + R + f',"rss":{(1 << 63) - 1},"peak":0' + "}", "rss", (1 << 63) - 1),
        ("{" + R + ',"rss":2.0,"peak":0}', "rss", 2),
        ("{" + R + ',"rss":0,"peak":0,"pids":[[1,0]]}', "pids", [[1, 0]]),
        ('{"type":"pong","version":1,"pid":1,"uptime_s":3}', "uptime_s", 3.0),
        ('{"type":"pong","version":1,"pid":1,"uptime_s":-2.5}', "uptime_s", -2.5),
        ('{"type":"pong","version":1,"id":null,"pid":1,"uptime_s":0}', "id", None),
        ("{" + REG.replace('"a"', '"' + "x" * 256 + '"', 1) + "}", "agent_id", "x" * 256),
        ('{"type":"admit","version":1,"agent_id":"' + "x" * 128 + '","name":"n","expect":0}', "expect", 0),
        ('{"type":"service","version":1,"name":"' + "x" * 200 + '","pid":1}', "pid", 1),
        ("{" + EV.replace("0.5", "0") + ',"timeout_s":0}', "fraction", 0.0),
        ("{" + EV.replace("0.5", "1") + ',"timeout_s":0}', "timeout_s", 0.0),
        ('{"type":"evict","version":1,"id":1,"fraction":1,"level":"manual","reason":"x","timeout_s":1}', "level", "manual"),
        ('{"type":"evict","version":1,"id":1,"fraction":1,"level":"normal","reason":"x","timeout_s":1}', "level", "normal"),
        ('{"type":"cleanup","version":1,"fraction":null}', "fraction", None),
        ('{"type":"stop","version":1,"reason":"system-pressure"}', "reason", "system-pressure"),
        ('{"type":"pause","version":1,"reason":"pool"}', "reason", "pool"),
        ('{"type":"heap","version":1,"limit":1}', "limit", 1),
        ('{"type":"heap","version":1,"limit":200}', "limit", 200),
        ('{"type":"heap","version":1}', "limit", 20),
        (DEEP % ("[" * 30 + "]" * 30), "kind", "x"),  # 32 levels: the most a frame may nest
    ],
)  # fmt: skip
def test_the_edges_that_are_accepted(frame: str, field: str, value: object) -> None:
    got = getattr(p.decode(frame), field)
    assert got == value and type(got) is type(value)


def test_the_lowest_integer_is_in_range() -> None:
    assert p.Pong(pid=-(1 << 63), uptime_s=0).pid == -(1 << 63)


def test_exactly_max_pids_is_accepted() -> None:
    pids = [[i + 1, 0] for i in range(p.MAX_PIDS)]
    assert p.Report(rss=0, peak=0, pids=pids).pids == pids
    assert p.Report(rss=0, peak=0, pids=[(5, 6)]).pids == [[5, 6]]  # tuples become pairs
    with pytest.raises(ProtocolError, match=f"^report.pids: more than {p.MAX_PIDS} pids$"):
        p.Report(rss=0, peak=0, pids=[*pids, [1, 0]])


def test_a_reply_may_carry_what_a_request_may_not() -> None:
    # The coordinator trusts no client, a client trusts its coordinator (larger frames,
    # NaN and deep nesting in what it serves back).
    for frame in (DEEP % "NaN", DEEP % ("[" * 40 + "]" * 40)):
        msg = p.decode(frame, p.MAX_REPLY_FRAME)
        assert isinstance(msg, p.Event)
        with pytest.raises(ProtocolError):
            p.decode(frame, p.MAX_FRAME)
    assert isinstance(p.decode(DEEP % "1", p.MAX_FRAME - 1), p.Event)
    with pytest.raises(ProtocolError):
        p.decode(DEEP % "NaN", p.MAX_FRAME - 1)  # a smaller limit is stricter, not looser


def test_a_frame_of_exactly_the_limit_is_decoded() -> None:
    frame = b'{"type":"ping","version":1}'
    padded = frame + b" " * (p.MAX_FRAME - len(frame))
    assert p.decode(padded) == p.Ping()
    assert p.decode(frame + b" " * 10, max_frame=len(frame) + 10) == p.Ping()
    with pytest.raises(ProtocolError, match="exceeds"):
        p.decode(frame + b" " * 11, max_frame=len(frame) + 10)


def test_encode_is_compact_json_without_nones() -> None:
    assert p.encode(p.Ping()) == b'{"type":"ping","version":1}\n'
    assert p.encode(p.Ping(id=0)) == b'{"type":"ping","version":1,"id":0}\n'
    assert p.encode(p.Report(rss=1, peak=2)) == (
        b'{"type":"report","version":1,"rss":1,"peak":2,"pids":[],"state":"running"}\n'
    )


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ProtocolError) as e:
        p.encode(p.Event(kind="x", fields={"s": {1, 2}}))
    assert str(e.value).startswith("event: cannot encode: ") and e.value.code == "bad-frame"
    with pytest.raises(ProtocolError) as e:
        p.encode(p.Event(kind="x", fields={"v": float("inf")}))
    assert str(e.value).startswith("event: cannot encode: ")


def test_an_encoded_frame_of_exactly_the_limit_is_sent_and_one_byte_more_is_not() -> None:
    size = len(p.encode(p.Event(kind="x", fields={"b": ""})))
    fits = p.Event(kind="x", fields={"b": "y" * (100 - size)})
    assert len(p.encode(fits, max_frame=100)) == 100
    over = p.Event(kind="x", fields={"b": "y" * (101 - size)})
    with pytest.raises(ProtocolError) as e:
        p.encode(over, max_frame=100)
    assert (str(e.value), e.value.code) == ("event: frame of 101 bytes exceeds 100", "too-large")


# -- messages as values ------------------------------------------------------------------------


def test_a_message_needs_its_fields_and_takes_no_others() -> None:
    with pytest.raises(TypeError, match="^Report: missing rss$"):
        p.Report(peak=1)
    with pytest.raises(TypeError, match="^Report: unexpected colour, size$"):
        p.Report(rss=1, peak=1, colour="red", size=2)


def test_a_message_is_immutable_and_compares_by_type_and_fields() -> None:
    a = p.Report(rss=1, peak=2)
    with pytest.raises(AttributeError, match="^Report is immutable$"):
        a.rss = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="^Report is immutable$"):
        del a.rss
    assert a == p.Report(rss=1, peak=2)
    assert a != p.Report(rss=1, peak=3)
    assert p.Ping() != p.GetStats()  # same fields, another type
    assert p.Ping().__eq__(p.GetStats()) is NotImplemented
    assert repr(a) == "Report(rss=1, peak=2, pids=[], state='running')"
    assert a.items() == [("rss", 1), ("peak", 2), ("pids", []), ("state", "running")]


def test_each_message_gets_its_own_default_containers() -> None:
    a, b = p.Report(rss=1, peak=1), p.Report(rss=1, peak=1)
    a.pids.append([1, 1])
    assert b.pids == []
    assert p.Stop(reason="pool").detail == {}


def test_a_register_cuts_a_long_name_to_the_limit() -> None:
    base = {"agent_id": "a", "launcher_pid": 1, "child_pid": 2, "argv": [], "started": 0}
    assert p.Register(name="n" * 200, **base).name == "n" * 200
    assert p.Register(name="n" * 201, **base).name == "n" * 200


# -- what a register shows of the command line --------------------------------------------


@pytest.mark.parametrize(
    ("argv", "budget", "shown"),
    [
        (["a" * 76], 80, ["a" * 76]),  # its JSON is exactly the budget: whole
        (["a" * 36, "b" * 37], 80, ["a" * 36, "b" * 37]),  # compact JSON: 80 bytes
        (["a" * 36, "b" * 38], 80, ["a" * 11, "...[1 more args, 63 more bytes]"]),
        (["a" * 11, "b" * 100], 80, ["a" * 11, "...[1 more args, 100 more bytes]"]),  # fills the room
        (["a" * 77], 80, ["a" * 11, "...[0 more args, 66 more bytes]"]),
        (["a" * 10, "b" * 100], 80, ["a" * 10, "...[1 more args, 100 more bytes]"]),
        (["b" * 100], 80, ["b" * 11, "...[0 more args, 89 more bytes]"]),
        (["é" * 50, "x"], 80, ["é", "...[1 more args, 99 more bytes]"]),
        (["a" * 10, "b" * 10, "c" * 100], 90, ["a" * 10, "b" * 8, "...[1 more args, 102 more bytes]"]),
        (["x"] * 40, 100, ["x"] * 8 + ["...[32 more args, 32 more bytes]"]),
    ],
)  # fmt: skip
def test_shown_argv_keeps_what_fits_and_counts_what_does_not(
    argv: list[str], budget: int, shown: list[str]
) -> None:
    assert p.shown_argv(argv, budget) == shown


def test_a_short_argv_is_shown_as_a_copy() -> None:
    argv = ["a", "b"]
    shown = p.shown_argv(argv)
    assert shown == argv and shown is not argv


# -- framing ----------------------------------------------------------------------------------


def test_a_frame_of_exactly_the_limit_passes_the_buffer() -> None:
    buf = p.FrameBuffer(max_frame=8)
    assert buf.feed(b"x" * 8) == []  # no newline yet: 8 bytes held, none too many
    assert buf.pending == 8
    with pytest.raises(p.FrameTooLarge) as e:
        buf.feed(b"\n")  # with its newline, 9 bytes
    assert (str(e.value), e.value.code) == ("frame exceeds 8 bytes", "too-large")
    buf = p.FrameBuffer(max_frame=8)
    assert buf.feed(b"x" * 7 + b"\n" + b"y" * 8) == [b"x" * 7]
    assert buf.pending == 8
    with pytest.raises(p.FrameTooLarge, match="^frame exceeds 8 bytes$"):
        buf.feed(b"y")


def test_a_long_tail_after_a_newline_is_refused_at_once() -> None:
    buf = p.FrameBuffer(max_frame=8)
    with pytest.raises(p.FrameTooLarge):
        buf.feed(b"ok\n" + b"z" * 9)


def test_the_default_frame_limit_is_the_protocols() -> None:
    assert p.FrameBuffer().max_frame == p.MAX_FRAME == 64 * 1024
    buf = p.FrameBuffer()
    assert buf.feed(b"a" * p.MAX_FRAME) == []
    with pytest.raises(p.FrameTooLarge):
        buf.feed(b"a")


def test_blank_lines_between_frames_are_skipped() -> None:
    buf = p.FrameBuffer()
    assert buf.feed(b"\n \n\t\na\n\nb\n") == [b"a", b"b"]
    assert buf.pending == 0
