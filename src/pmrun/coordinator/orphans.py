"""What is left of a launcher that died: which of its reported processes still run, and
killing exactly those (never a recycled pid, never another user's process)."""

from __future__ import annotations

import os
import signal

from .. import _procfs

_PF_EXITING = 0x4  # task flag in /proc/PID/stat: the process is exiting


def start_time(pid: int, proc: str) -> int | None:
    try:
        return _procfs.start_time(pid, proc)
    except (_procfs.ProcessGone, OSError, ValueError, IndexError):
        return None


def alive(pid: int, start: int | None, proc: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` and not a zombie."""
    if pid <= 0:
        return False
    try:
        fields = _procfs.stat(pid, proc)
    except (_procfs.ProcessGone, OSError):
        return False
    if fields[2] in ("Z", "X", "x"):
        return False
    if int(fields[8]) & _PF_EXITING:
        return False
    return start is None or int(fields[21]) == start


def kill_orphans(
    pids: list[list[int]], uid: int, not_before: int | None, proc: str = _procfs.PROC
) -> list[int]:
    """SIGKILL the reported tree pids of a dead launcher that are still the same processes.

    A pid is killed only if its start time still matches the reported one (no pid reuse),
    it is not older than the launcher (``not_before``, in ticks), and it belongs to the
    agent's ``uid``. These are the only pids the coordinator ever signals itself.
    """
    me = os.getpid()
    killed: list[int] = []
    for pid, start in pids:
        if pid in (0, 1, me):
            continue
        try:
            if _procfs.start_time(pid, proc) != start:
                continue
            if not_before is not None and start < not_before:
                continue
            if _procfs.uid(pid, proc) != uid:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (_procfs.ProcessGone, ProcessLookupError, PermissionError, OSError, ValueError):
            continue
    return killed
