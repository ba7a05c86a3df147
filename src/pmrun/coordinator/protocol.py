"""The coordinator protocol: newline-delimited JSON objects over a Unix stream socket.

Every frame is one UTF-8 JSON object on one line, at most :data:`MAX_FRAME` bytes with
its newline, carrying ``"type"`` and ``"version"``. This module is the only place frames
are built or parsed: :func:`encode` and :func:`decode` are pure functions, and every
message is a frozen dataclass whose fields are checked on construction and on decode.
Unknown fields are ignored (a newer peer may add some); a missing or ill-typed field,
an unknown type or another version is a :class:`~pmrun.errors.ProtocolError`.
``docs/protocol.md`` documents the same for clients in other languages.

The protocol never carries a command to execute: the only order the coordinator gives
is ``stop`` to an agent's own launcher, which does the stopping.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from ..errors import ProtocolError

VERSION = 1
MAX_FRAME = 64 * 1024  # bytes per frame, newline included
MAX_PIDS = 2000  # (pid, start) pairs in one report: ~20 bytes each, well under MAX_FRAME
_MAX_INT = 1 << 63

STOP_REASONS = ("pool", "system-pressure")
LEVELS = ("normal", "warning", "critical", "manual")


# -- field checks -----------------------------------------------------------------------
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


def _optional(check: Any) -> Any:
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


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message; ``TYPE`` is its ``"type"`` on the wire."""

    TYPE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                value = _CHECKS[str(f.type)](getattr(self, f.name))
            except ValueError as e:
                raise ProtocolError(f"{self.TYPE}.{f.name}: {e}") from None
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks beyond the field types (ranges, enumerations)."""


def _fraction(msg: Message, name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ProtocolError(f"{msg.TYPE}.{name}: must be between 0 and 1")


def _nonneg(msg: Message, *names: str) -> None:
    for name in names:
        value = getattr(msg, name)
        if value is not None and value < 0:
            raise ProtocolError(f"{msg.TYPE}.{name}: must be zero or more")


@dataclass(frozen=True, kw_only=True)
class Ping(Message):
    """Anyone -> coordinator: are you there? Answered by :class:`Pong`."""

    TYPE = "ping"
    id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Pong(Message):
    TYPE = "pong"
    id: int | None = None
    pid: int  # the coordinator's pid
    uptime_s: float


@dataclass(frozen=True, kw_only=True)
class Register(Message):
    """Launcher -> coordinator: an agent joins the pool (again, after a reconnect)."""

    TYPE = "register"
    id: int | None = None
    agent_id: str  # unique per agent; the child sees it as PMRUN_AGENT_ID
    name: str
    launcher_pid: int
    child_pid: int
    uid: int
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

    def check(self) -> None:
        if not self.agent_id or len(self.agent_id) > 128:
            raise ProtocolError("register.agent_id: 1 to 128 characters")
        _nonneg(self, "launcher_pid", "child_pid", "uid", "max_rss", "warn_rss", "rss", "peak")


@dataclass(frozen=True, kw_only=True)
class Report(Message):
    """Launcher -> coordinator: the tree's memory, on meaningful change and at the heartbeat."""

    TYPE = "report"
    rss: int
    peak: int
    pids: list[list[int]] = field(default_factory=list)
    state: str = "running"

    def check(self) -> None:
        _nonneg(self, "rss", "peak")


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    """Launcher -> coordinator: something for the event log (warn crossed, stopping, exit)."""

    TYPE = "event"
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Deregister(Message):
    """Launcher -> coordinator: the agent exited; ``report`` is its exit report."""

    TYPE = "deregister"
    id: int | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Stop(Message):
    """Coordinator -> one launcher, on its own connection: stop your agent."""

    TYPE = "stop"
    reason: str  # "pool" or "system-pressure"
    detail: dict[str, Any] = field(default_factory=dict)  # the figures it was decided on

    def check(self) -> None:
        if self.reason not in STOP_REASONS:
            raise ProtocolError(f"stop.reason: expected one of {', '.join(STOP_REASONS)}")


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class ServiceClose(Message):
    """Service -> coordinator: the handler ``name`` is gone."""

    TYPE = "service_close"
    name: str


@dataclass(frozen=True, kw_only=True)
class Stats(Message):
    """Service -> coordinator: what each handler holds (periodic, or answering get_stats)."""

    TYPE = "stats"
    id: int | None = None
    pid: int
    rss: int  # the service process's RSS in bytes
    services: dict[str, Any] = field(default_factory=dict)  # name -> the stats() dict


@dataclass(frozen=True, kw_only=True)
class GetStats(Message):
    """Coordinator -> service: send your stats now."""

    TYPE = "get_stats"
    id: int | None = None


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class Cleanup(Message):
    """Client -> coordinator: broadcast an eviction now (``pmrun cleanup``)."""

    TYPE = "cleanup"
    id: int | None = None
    agent: str | None = None  # an agent's name or id; None = every service
    fraction: float | None = None  # None = the coordinator's --evict-fraction

    def check(self) -> None:
        _fraction(self, "fraction", self.fraction)


@dataclass(frozen=True, kw_only=True)
class CleanupResult(Message):
    """Coordinator -> client: per-service results of a broadcast."""

    TYPE = "cleanup_result"
    id: int | None = None
    fraction: float
    elapsed_s: float  # from the request to the last answer (or the settle time)
    results: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Status(Message):
    TYPE = "status"
    id: int | None = None


@dataclass(frozen=True, kw_only=True)
class StatusResult(Message):
    """Coordinator -> client: everything ``pmrun status`` shows (see docs/protocol.md)."""

    TYPE = "status_result"
    id: int | None = None
    status: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Heap(Message):
    """Client -> coordinator (agent set), coordinator -> service: top object types and sites."""

    TYPE = "heap"
    id: int | None = None
    agent: str | None = None
    limit: int = 20

    def check(self) -> None:
        if not 1 <= self.limit <= 200:
            raise ProtocolError("heap.limit: between 1 and 200")


@dataclass(frozen=True, kw_only=True)
class HeapResult(Message):
    """Service -> coordinator (one result), coordinator -> client (one per service)."""

    TYPE = "heap_result"
    id: int | None = None
    results: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Ok(Message):
    """Coordinator -> client: the request ``of`` was accepted."""

    TYPE = "ok"
    id: int | None = None
    of: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
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
        HeapResult, Ok, Error,
    )
}  # fmt: skip

for _cls in MESSAGES.values():  # every annotation must have a check
    for _f in fields(_cls):
        if str(_f.type) not in _CHECKS:  # pragma: no cover - a programming error
            raise TypeError(f"{_cls.__name__}.{_f.name}: no check for {_f.type}")


# -- encode / decode --------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """One frame for ``msg``: compact JSON and a newline. ``None`` fields are left out."""
    obj: dict[str, Any] = {"type": msg.TYPE, "version": VERSION}
    for f in fields(msg):
        value = getattr(msg, f.name)
        if value is not None:
            obj[f.name] = value
    try:
        data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"{msg.TYPE}: cannot encode: {e}") from None
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"{msg.TYPE}: frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return data


def decode(frame: bytes | str) -> Message:
    """The message in one frame (with or without its newline)."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
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
        raise ProtocolError(f"protocol version {version} is not supported (this is {VERSION})")
    if not isinstance(kind, str):
        raise ProtocolError("missing or invalid 'type'")
    cls = MESSAGES.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    kwargs = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in obj and f.default is MISSING and f.default_factory is MISSING
        ]
        raise ProtocolError(f"{kind}: missing {', '.join(missing) or 'fields'}") from e


def error_code(exc: ProtocolError) -> str:
    """The ``error`` code for a decode failure."""
    text = str(exc)
    if "exceeds" in text:
        return "too-large"
    if "version" in text and "not supported" in text:
        return "bad-version"
    if "unknown message type" in text:
        return "unknown-type"
    return "bad-frame"


class FrameTooLarge(ProtocolError):
    """A peer sent more than :data:`MAX_FRAME` bytes without a newline."""


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
