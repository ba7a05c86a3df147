"""Memory recordings (``pmrun --record FILE``): the tree's RSS over time, as JSON lines.

One object a line, each with a ``type``:

- ``start``: ``t0`` (Unix time), ``command``, ``name``, ``limits`` (``max_rss``, ``warn_rss``, ``max_as``), ``backend``
- ``sample``: ``t`` (seconds since start), ``rss`` (tree bytes), ``procs`` ({pid: rss bytes})
- ``proc``: ``t``, ``pid``, ``name`` — when a process is first seen, and again when its name
  changes (an exec: a pyenv shim's ``bash`` becomes ``python``); the last one names it
- ``event``: ``t``, ``kind`` (``warn``, ``evict``, ``stop``, ``kill``, ``exit``), ``detail``
- ``end``: ``t``, ``reason``, ``exit_status``, ``peak_rss``
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import IO, Any


class Recorder:
    """Appends a recording as the launcher samples; every sample is kept (no decimation)."""

    def __init__(self, path: str, *, header: dict[str, Any], min_interval_s: float = 0.01) -> None:
        self._f: IO[str] = open(path, "w", buffering=1 << 16)
        self._t0 = time.monotonic()
        self._names: dict[int, str] = {}
        self._recheck_at = 1.0  # names of known processes are read again about once a second
        self._last_t = -1.0
        self._min_interval_s = min_interval_s  # at most 100 lines a second near a limit
        self._write({"type": "start", "t0": time.time(), **header})

    def _write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    def sample(
        self, rss: int, procs: dict[int, int], names: dict[int, str], *, force: bool = False
    ) -> None:
        t = self.now()
        if not force and t - self._last_t < self._min_interval_s:
            return
        self._last_t = t
        for pid, name in names.items():
            if self._names.get(pid) != name:
                self._names[pid] = name
                self._write({"type": "proc", "t": t, "pid": pid, "name": name})
        if t >= self._recheck_at:  # this sample's names were all read afresh (see knows)
            self._recheck_at = t + 1.0
        self._write(
            {"type": "sample", "t": t, "rss": rss, "procs": {str(p): r for p, r in procs.items()}}
        )

    def knows(self, pid: int) -> bool:
        """Whether ``pid``'s name need not be read for this sample (False once a second)."""
        return pid in self._names and self.now() < self._recheck_at

    def event(self, kind: str, **detail: Any) -> None:
        self._write({"type": "event", "t": self.now(), "kind": kind, "detail": detail})

    def end(self, **fields: Any) -> None:
        self._write({"type": "end", "t": self.now(), **fields})
        self._f.close()


@dataclass
class Recording:
    """A recording read back: what ``pmrun plot`` draws."""

    header: dict[str, Any]
    times: list[float] = field(default_factory=list)
    totals: list[int] = field(default_factory=list)
    per_process: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None


def read_recording(path: str) -> Recording:
    """Parse a recording; a truncated last line (pmrun killed mid-write) is ignored."""
    from .errors import UsageError

    rec: Recording | None = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            kind = obj.get("type")
            if kind == "start":
                rec = Recording(header=obj)
                continue
            if rec is None:
                raise UsageError(f"{path}: not a pmrun recording (line {n} comes before its start)")
            if kind == "sample":
                rec.times.append(float(obj["t"]))
                rec.totals.append(int(obj["rss"]))
                for pid_s, rss in obj.get("procs", {}).items():
                    rec.per_process.setdefault(int(pid_s), []).append((float(obj["t"]), int(rss)))
            elif kind == "proc":
                rec.names[int(obj["pid"])] = str(obj["name"])
            elif kind == "event":
                rec.events.append(obj)
            elif kind == "end":
                rec.end = obj
    if rec is None:
        raise UsageError(f"{path}: not a pmrun recording (no start line)")
    return rec
