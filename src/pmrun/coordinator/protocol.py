"""The coordinator protocol: newline-delimited JSON objects over a Unix stream socket.

Every frame is one UTF-8 JSON object on one line, at most :data:`MAX_FRAME` bytes with
its newline, carrying ``"type"`` and ``"version"``. This module is the only place frames
are built or parsed: :func:`encode` and :func:`decode` are pure functions, and every
message is a frozen dataclass whose fields are checked on construction and on decode.
Unknown fields are ignored (a newer peer may add some); a missing or ill-typed field,
an unknown type or another version is a :class:`~pmrun.errors.ProtocolError`.
``docs/protocol.md`` documents the same for clients in other languages.

The protocol never carries a command to execute: the only orders the coordinator gives
are ``stop``, ``pause`` and ``resume`` to an agent's own launcher, which carries them out.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..errors import ProtocolError

TYPE_CHECKING = False  # the launcher imports this module: typing would cost ~4 ms
if TYPE_CHECKING:
    from typing import Any, ClassVar, dataclass_transform
else:

    def dataclass_transform(**_: object) -> Callable[[type], type]:
        return lambda cls: cls


VERSION = 1
MAX_FRAME = 64 * 1024  # bytes per frame sent *to* the coordinator, newline included
# Frames *from* the coordinator (a status with hundreds of agents) may be larger: clients
# trust their coordinator (checked by SO_PEERCRED), the coordinator trusts no client.
MAX_REPLY_FRAME = 16 * 1024 * 1024
MAX_PIDS = 2000  # (pid, start) pairs in one report: ~20 bytes each, well under MAX_FRAME
_MAX_INT = 1 << 63
# Objects and arrays nested in a frame *to* the coordinator: it serves some fields back
# (status nests them a few levels deeper) and must be able to encode them.
MAX_DEPTH = 32
# What a register may carry of the agent, whatever the agent is: an agent CLI passes a whole
# prompt as arguments, so argv is shown cut to ARGV_SHOWN_BYTES (JSON-encoded) with a marker.
ARGV_SHOWN_BYTES = 4096
MAX_AGENT_NAME = 200  # characters; the launcher refuses a longer --name
MAX_AGENT_ID = 256  # the launcher's id is the name, a dot and its pid
_INF = float("inf")

STOP_REASONS = ("pool", "system-pressure")
LEVELS = ("normal", "warning", "critical", "manual")


# -- field checks -----------------------------------------------------------------------
# (`pragma: no mutate block`: what runs only at import, building the checks and the message
# classes, is left out of mutation testing, whose mutants are switched on after the import;
# every test of a message fails if it breaks.)
# Each dataclass field's annotation (a string, under `from __future__ import annotations`)
# names one of these checks; an unsupported annotation fails at import time.


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # 1.0 from a client whose JSON has only doubles
    if not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    if not -_MAX_INT <= v < _MAX_INT:
        raise ValueError("integer out of range")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number, got {type(v).__name__}")
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return f


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type(v).__name__}")
    return v


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"expected an object, got {type(v).__name__}")
    return v


def _list_str(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return v


def _list_dict(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ValueError("expected a list of objects")
    return v


def _pids(v: Any) -> list[list[int]]:
    if not isinstance(v, list):
        raise ValueError("expected a list of [pid, start_time] pairs")
    if len(v) > MAX_PIDS:
        raise ValueError(f"more than {MAX_PIDS} pids")
    out: list[list[int]] = []
    for pair in v:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError("expected a list of [pid, start_time] pairs")
        pid, start = _int(pair[0]), _int(pair[1])
        if pid <= 0 or start < 0:
            raise ValueError("pids must be positive and start times zero or more")
        out.append([pid, start])
    return out


def _optional(check: Any) -> Any:  # pragma: no mutate block
    def parse(v: Any) -> Any:
        return None if v is None else check(v)

    return parse


_CHECKS: dict[str, Any] = {
    "int": _int,
    "float": _float,
    "str": _str,
    "bool": _bool,
    "dict[str, Any]": _dict,
    "list[str]": _list_str,
    "list[dict[str, Any]]": _list_dict,
    "list[list[int]]": _pids,
}
_CHECKS.update({f"{k} | None": _optional(v) for k, v in list(_CHECKS.items())})


# -- messages ---------------------------------------------------------------------------


_MISSING: Any = object()


class _Factory:
    """A default made anew for each message (a mutable one: a dict, a list)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:  # pragma: no mutate block
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:  # pragma: no mutate block
    """As ``dataclasses.field(default_factory=...)``."""
    return _Factory(default_factory)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class Message:
    """Base of every message; ``TYPE`` is its ``"type"`` on the wire.

    Subclasses are declared like frozen, keyword-only dataclasses (and type-checked as
    such), but built without ``dataclasses``: generating 21 classes' methods cost ~15 ms
    at import, on the path of every ``pmrun -- cmd``. Each annotated field is checked on
    construction by the check its annotation names in ``_CHECKS``.
    """

    TYPE: ClassVar[str] = ""
    # (name, check, default) of every field, the base class's first.
    _FIELDS: ClassVar[tuple[tuple[str, Callable[[Any], Any], Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:  # pragma: no mutate block
        super().__init_subclass__(**kwargs)
        specs = {name: (check, default) for name, check, default in cls._FIELDS}
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            if str(annotation).startswith("ClassVar"):
                continue
            check = _CHECKS.get(str(annotation))
            if check is None:  # pragma: no cover - a programming error, caught at import
                raise TypeError(f"{cls.__name__}.{name}: no check for {annotation}")
            default = cls.__dict__.get(name, _MISSING)
            if isinstance(default, _Factory):
                delattr(cls, name)
            specs[name] = (check, default)
        cls._FIELDS = tuple((name, check, default) for name, (check, default) in specs.items())

    def __init__(self, **kwargs: Any) -> None:
        for name, check, default in self._FIELDS:
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is _MISSING:
                raise TypeError(f"{type(self).__name__}: missing {name}")
            else:
                value = default.make() if isinstance(default, _Factory) else default
            try:
                value = check(value)
            except ValueError as e:
                raise ProtocolError(f"{self.TYPE}.{name}: {e}") from None
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected {', '.join(kwargs)}")
        self.check()

    def check(self) -> None:
        """Checks beyond the field types (ranges, enumerations)."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n, _, _ in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]  # fields hold lists and dicts

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n, _, _ in self._FIELDS)
        return f"{type(self).__name__}({args})"

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) of every field, in declaration order."""
        return [(n, getattr(self, n)) for n, _, _ in self._FIELDS]


def _fraction(msg: Message, name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ProtocolError(f"{msg.TYPE}.{name}: must be between 0 and 1")


def _nonneg(msg: Message, *names: str) -> None:
    for name in names:
        value = getattr(msg, name)
        if value is not None and value < 0:
            raise ProtocolError(f"{msg.TYPE}.{name}: must be zero or more")


class Ping(Message):
    """Anyone -> coordinator: are you there? Answered by :class:`Pong`."""

    TYPE = "ping"
    id: int | None = None


class Pong(Message):
    TYPE = "pong"
    id: int | None = None
    pid: int  # the coordinator's pid
    uptime_s: float


class Register(Message):
    """Launcher -> coordinator: an agent joins the pool (again, after a reconnect)."""

    TYPE = "register"
    id: int | None = None
    agent_id: str  # unique per agent; the child sees it as PMRUN_AGENT_ID
    name: str
    launcher_pid: int
    child_pid: int  # (its uid is the connection's, SO_PEERCRED: never one it claims)
    argv: list[str]
    max_rss: int | None = None  # bytes; None = no per-agent limit
    warn_rss: int | None = None
    priority: int = 0  # higher is spared longer
    backend: dict[str, Any] = field(default_factory=dict)  # {"name": ..., "reason": ...}
    started: float  # unix time the agent started
    rss: int = 0  # the tree's memory now, in bytes, as the launcher counts it
    peak: int = 0
    pids: list[list[int]] = field(default_factory=list)  # [pid, start_time_ticks]
    state: str = "running"
    # True: the launcher carries out pause/resume (absent from launchers that cannot);
    # False also for --no-pause. Only a pausable agent is ever sent pause.
    pausable: bool = False
    expect: int | None = None  # bytes it expects to need (--expect), for admission

    def check(self) -> None:
        if not self.agent_id or len(self.agent_id) > MAX_AGENT_ID:
            raise ProtocolError(f"register.agent_id: 1 to {MAX_AGENT_ID} characters")
        # What is only shown is cut, never refused: a register must not fail for its size.
        object.__setattr__(self, "name", self.name[:MAX_AGENT_NAME])
        object.__setattr__(self, "argv", shown_argv(self.argv))
        _nonneg(self, "launcher_pid", "child_pid", "max_rss", "warn_rss", "rss", "peak")


class Report(Message):
    """Launcher -> coordinator: the tree's memory, on meaningful change and at the heartbeat."""

    TYPE = "report"
    rss: int
    peak: int
    pids: list[list[int]] = field(default_factory=list)
    state: str = "running"

    def check(self) -> None:
        _nonneg(self, "rss", "peak")


class Event(Message):
    """Launcher -> coordinator: something for the event log (warn crossed, stopping, exit)."""

    TYPE = "event"
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


class Deregister(Message):
    """Launcher -> coordinator: the agent exited; ``report`` is its exit report."""

    TYPE = "deregister"
    id: int | None = None
    report: dict[str, Any] = field(default_factory=dict)


class Stop(Message):
    """Coordinator -> one launcher, on its own connection: stop your agent."""

    TYPE = "stop"
    reason: str  # "pool" or "system-pressure"
    detail: dict[str, Any] = field(default_factory=dict)  # the figures it was decided on

    def check(self) -> None:
        if self.reason not in STOP_REASONS:
            raise ProtocolError(f"stop.reason: expected one of {', '.join(STOP_REASONS)}")


class Pause(Message):
    """Coordinator -> one launcher: freeze your agent's tree (pressure; no work is lost).

    The launcher applies it and resumes by itself when the connection drops, so a
    coordinator that dies never leaves an agent frozen.
    """

    TYPE = "pause"
    reason: str  # "pool" or "system-pressure"
    detail: dict[str, Any] = field(default_factory=dict)  # the figures it was decided on

    def check(self) -> None:
        if self.reason not in STOP_REASONS:
            raise ProtocolError(f"pause.reason: expected one of {', '.join(STOP_REASONS)}")


class Resume(Message):
    """Coordinator -> one launcher: thaw your agent's tree (headroom is back)."""

    TYPE = "resume"
    detail: dict[str, Any] = field(default_factory=dict)


class Admit(Message):
    """Launcher -> coordinator, before exec: may this agent start now? (``--no-wait`` skips it)

    Answered by :class:`Admission` at once, and again when a waiting agent may start.
    Closing the connection leaves the queue.
    """

    TYPE = "admit"
    id: int | None = None
    agent_id: str
    name: str
    priority: int = 0
    expect: int | None = None  # bytes, from --expect; None = the coordinator estimates
    warn_rss: int | None = None
    max_rss: int | None = None

    def check(self) -> None:
        if not self.agent_id or len(self.agent_id) > 128:
            raise ProtocolError("admit.agent_id: 1 to 128 characters")
        _nonneg(self, "expect", "warn_rss", "max_rss")


class Admission(Message):
    """Coordinator -> launcher: start now (``start``), or wait with ``ahead`` agents before it."""

    TYPE = "admission"
    id: int | None = None
    start: bool
    ahead: int = 0  # agents queued before this one
    expect_bytes: int = 0  # the size the decision assumed
    expect_source: str = ""  # "flag", "learned" or "warning-level" (size unknown)
    used_bytes: int = 0  # what is in use on the signal that is short
    limit_bytes: int = 0  # its threshold
    why: str = ""  # "fits", "alone", "queued", ...


class Service(Message):
    """Service -> coordinator: register a cleanup handler under ``name``."""

    TYPE = "service"
    id: int | None = None
    name: str
    pid: int
    agent_id: str | None = None  # PMRUN_AGENT_ID of the agent the service runs in

    def check(self) -> None:
        if not self.name or len(self.name) > 200:
            raise ProtocolError("service.name: 1 to 200 characters")


class ServiceClose(Message):
    """Service -> coordinator: the handler ``name`` is gone."""

    TYPE = "service_close"
    name: str


class Stats(Message):
    """Service -> coordinator: what each handler holds (periodic, or answering get_stats)."""

    TYPE = "stats"
    id: int | None = None
    pid: int
    rss: int  # the service process's RSS in bytes
    services: dict[str, Any] = field(default_factory=dict)  # name -> the stats() dict


class GetStats(Message):
    """Coordinator -> service: send your stats now."""

    TYPE = "get_stats"
    id: int | None = None


class Evict(Message):
    """Coordinator -> service: drop ``fraction`` of what you hold; answer within ``timeout_s``."""

    TYPE = "evict"
    id: int
    fraction: float
    level: str  # "warning", "critical" or "manual"
    reason: str  # what crossed, e.g. "pool", "system", "psi", "cleanup"
    timeout_s: float

    def check(self) -> None:
        _fraction(self, "fraction", self.fraction)
        if self.level not in LEVELS:
            raise ProtocolError(f"evict.level: expected one of {', '.join(LEVELS)}")
        _nonneg(self, "timeout_s")


class Evicted(Message):
    """Service -> coordinator: the answer to :class:`Evict`, one result per handler.

    Each result: ``{"name", "bytes", "rss_drop", "seconds"}`` and ``"error"`` if it failed.
    """

    TYPE = "evicted"
    id: int
    results: list[dict[str, Any]]
    rss_before: int = 0
    rss_after: int = 0
    seconds: float = 0.0


class Cleanup(Message):
    """Client -> coordinator: broadcast an eviction now (``pmrun cleanup``)."""

    TYPE = "cleanup"
    id: int | None = None
    agent: str | None = None  # an agent's name or id; None = every service
    fraction: float | None = None  # None = the coordinator's --evict-fraction

    def check(self) -> None:
        _fraction(self, "fraction", self.fraction)


class CleanupResult(Message):
    """Coordinator -> client: per-service results of a broadcast."""

    TYPE = "cleanup_result"
    id: int | None = None
    fraction: float
    elapsed_s: float  # from the request to the last answer (or the settle time)
    results: list[dict[str, Any]]


class Status(Message):
    TYPE = "status"
    id: int | None = None


class StatusResult(Message):
    """Coordinator -> client: everything ``pmrun status`` shows (see docs/protocol.md)."""

    TYPE = "status_result"
    id: int | None = None
    status: dict[str, Any]


class Heap(Message):
    """Client -> coordinator (agent set), coordinator -> service: top object types and sites."""

    TYPE = "heap"
    id: int | None = None
    agent: str | None = None
    limit: int = 20

    def check(self) -> None:
        if not 1 <= self.limit <= 200:
            raise ProtocolError("heap.limit: between 1 and 200")


class HeapResult(Message):
    """Service -> coordinator (one result), coordinator -> client (one per service)."""

    TYPE = "heap_result"
    id: int | None = None
    results: list[dict[str, Any]]


class Shutdown(Message):
    """Client -> coordinator: exit cleanly (``pmrun coordinator stop``). Answered by ``ok``.

    Coordinator -> launcher, just before the coordinator exits: the launcher keeps
    enforcing its agent's own limits, resumes it if paused and registers again when a
    coordinator serves the socket. After a clean stop (a shutdown request, SIGTERM;
    ``hold``) it does not start one itself, so that the stop holds; after an idle exit
    that its registration raced with (``hold`` false) it starts one at once.
    """

    TYPE = "shutdown"
    id: int | None = None
    hold: bool = True


class Ok(Message):
    """Coordinator -> client: the request ``of`` was accepted."""

    TYPE = "ok"
    id: int | None = None
    of: str
    detail: dict[str, Any] = field(default_factory=dict)


class Error(Message):
    """Either way: a request or frame was refused. ``code`` is stable, ``message`` for people."""

    TYPE = "error"
    id: int | None = None
    code: str  # bad-frame, too-large, bad-version, unknown-type, forbidden, busy, not-registered,
    # no-such-agent, timeout
    message: str


MESSAGES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Ping, Pong, Register, Report, Event, Deregister, Stop, Service, ServiceClose, Stats,
        GetStats, Evict, Evicted, Cleanup, CleanupResult, Status, StatusResult, Heap,
        HeapResult, Ok, Error, Pause, Resume, Admit, Admission, Shutdown,
    )
}  # fmt: skip


# -- encode / decode --------------------------------------------------------------------


def encode(msg: Message, max_frame: int = MAX_FRAME) -> bytes:
    """One frame for ``msg``: compact JSON and a newline. ``None`` fields are left out."""
    obj: dict[str, Any] = {"type": msg.TYPE, "version": VERSION}
    for name, value in msg.items():
        if value is not None:
            obj[name] = value
    try:
        data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"{msg.TYPE}: cannot encode: {e}") from None
    if len(data) > max_frame:
        raise ProtocolError(
            f"{msg.TYPE}: frame of {len(data)} bytes exceeds {max_frame}", "too-large"
        )
    return data


def _servable(obj: Any) -> None:
    """Refuse what the coordinator could not send back: NaN and infinities (json.loads
    takes NaN, Infinity and 1e400) and nesting deeper than :data:`MAX_DEPTH`. Iterative,
    so a deep frame cannot exhaust the stack here."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, float) and not -_INF < o < _INF:  # NaN or an infinity
            raise ProtocolError("numbers must be finite (no NaN, Infinity or 1e400)")
        if isinstance(o, dict | list):
            if depth > MAX_DEPTH:
                raise ProtocolError(f"objects and arrays nested deeper than {MAX_DEPTH} levels")
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))


def decode(frame: bytes | str, max_frame: int = MAX_FRAME) -> Message:
    """The message in one frame (with or without its newline)."""
    if len(frame) > max_frame:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {max_frame}", "too-large")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"not JSON: {str(e)[:100]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a JSON object")
    kind = obj.get("type")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError("missing or invalid 'version'")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this is {VERSION})", "bad-version"
        )
    if not isinstance(kind, str):
        raise ProtocolError("missing or invalid 'type'")
    cls = MESSAGES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}", "unknown-type")
    missing = [name for name, _, default in cls._FIELDS if default is _MISSING and name not in obj]
    if missing:
        raise ProtocolError(f"{kind}: missing {', '.join(missing)}")
    msg = cls(**{name: obj[name] for name, _, _ in cls._FIELDS if name in obj})
    if max_frame <= MAX_FRAME:  # decoding for the coordinator, which trusts no client
        _servable(obj)
    return msg


def _json_str(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def shown_argv(argv: list[str], budget: int = ARGV_SHOWN_BYTES) -> list[str]:
    """``argv`` as a register shows it: whole while its JSON fits in ``budget`` bytes, else
    the arguments that fit (the last one cut) and a final marker saying what was left out.

    Pure; registration must never depend on how long the command line is.
    """
    if len(_json_str(argv)) <= budget:
        return list(argv)
    room = budget - 64  # what the arguments may use; the marker and brackets take the rest
    out: list[str] = []
    used = 2  # the brackets
    for i, arg in enumerate(argv):
        cost = len(_json_str(arg)) + 1
        if used + cost > room:
            keep = len(arg)
            while keep and used + len(_json_str(arg[:keep])) + 1 > room:
                keep = keep * (room - used) // (len(_json_str(arg[:keep])) + 1)
            if keep:
                out.append(arg[:keep])
            left_bytes = sum(len(a.encode(errors="replace")) for a in argv[i:])
            left_bytes -= len(arg[:keep].encode(errors="replace"))
            out.append(f"...[{len(argv) - len(out)} more args, {left_bytes} more bytes]")
            return out
        out.append(arg)
        used += cost
    return out  # pragma: no cover - the whole argv did not fit, so some argument does not


def error_code(exc: ProtocolError) -> str:
    """The ``error`` code for a decode failure (carried by the exception, never read from its text)."""
    return exc.code


class FrameTooLarge(ProtocolError):
    """A peer sent more than :data:`MAX_FRAME` bytes without a newline."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "too-large")


class FrameBuffer:
    """Splits a byte stream into frames; refuses a frame longer than ``max_frame``."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Complete frames (without newline) found after adding ``data``; blank lines skipped."""
        self._buf += data
        if b"\n" not in data:
            if len(self._buf) > self.max_frame:
                raise FrameTooLarge(f"frame exceeds {self.max_frame} bytes")
            return []
        *frames, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        if len(rest) > self.max_frame or any(len(f) + 1 > self.max_frame for f in frames):
            raise FrameTooLarge(f"frame exceeds {self.max_frame} bytes")
        return [bytes(f) for f in frames if f.strip()]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf)
