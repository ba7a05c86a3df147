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
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

# Unwritten lines kept for a slow pipe reader before the recording gives up on it.
MAX_PENDING_BYTES = 4 << 20
END_WAIT_S = 2.0  # at the end, how long a slow reader is waited for (pmrun must exit)


def open_output(path: str) -> int:
    """Open ``path`` for writing through it, as a shell's ``>`` does; return the fd.

    A FIFO, a terminal or ``/dev/stdout`` is written to, never replaced. The last
    component is followed only if it is a symlink of ours or root's (``/dev/stdout``):
    one planted by another user in a shared directory is refused. Non-blocking, so a
    FIFO without a reader fails at once (ENXIO) instead of stopping pmrun.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno != 40:  # ELOOP: the last component is a symlink
            raise
        owner = os.lstat(path).st_uid
        if owner not in (os.geteuid(), 0):
            raise PermissionError(
                13, f"a symlink of another user (uid {owner}), not followed", path
            ) from None
        fd = os.open(path, flags, 0o666)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.set_blocking(fd, True)
    return fd


class Recorder:
    """Appends a recording as the launcher samples; every sample is kept (no decimation).

    Its own I/O trouble never reaches the launcher: the first failure (disk full, reader
    gone) stops the recording and is kept in :attr:`error` for the launcher to report.
    """

    def __init__(
        self,
        path: str,
        *,
        header: dict[str, Any],
        min_interval_s: float = 0.01,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self.error: str | None = None
        self._t0 = time.monotonic()
        self._names: dict[int, str] = {}
        self._recheck_at = 1.0  # names of known processes are read again about once a second
        self._last_t = -1.0
        self._min_interval_s = min_interval_s  # at most 100 lines a second near a limit
        self._flush_interval_s = flush_interval_s  # a live recording is readable as it grows
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flushed_t = 0.0
        try:
            self._fd = open_output(path)
        except OSError as e:
            self._fd = -1
            self._fail(e)
            return
        self._write({"type": "start", "t0": time.time(), **header})
        self.flush()

    def _fail(self, e: OSError) -> None:
        why = {6: "no process reads that FIFO"}.get(e.errno or 0, e.strerror or str(e))
        self.error = f"cannot record to {self.path}: {why}; recording stopped"
        self._pending = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self, obj: dict[str, Any]) -> None:
        if self._fd < 0:
            return
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= 1 << 16 or self.now() - self._flushed_t >= self._flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write what is pending; a reader that is slow only delays it (up to a bound)."""
        if self._fd < 0 or not self._pending:
            return
        self._flushed_t = self.now()
        data = memoryview(b"".join(self._pending))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except BlockingIOError:
            if len(data) > MAX_PENDING_BYTES:
                self._fail(OSError(0, "its reader is not keeping up"))
                return
        except OSError as e:
            self._fail(e)
            return
        self._pending = [bytes(data)] if data else []
        self._pending_bytes = len(data)

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    def sample(
        self, rss: int, procs: dict[int, int], names: dict[int, str], *, force: bool = False
    ) -> None:
        t = self.now()
        if self._fd < 0 or (not force and t - self._last_t < self._min_interval_s):
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
        import select

        self._write({"type": "end", "t": self.now(), **fields})
        deadline = time.monotonic() + END_WAIT_S
        self.flush()
        while self._fd >= 0 and self._pending and time.monotonic() < deadline:
            select.select([], [self._fd], [], max(deadline - time.monotonic(), 0))
            self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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
