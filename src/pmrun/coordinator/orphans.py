"""What is left of a launcher that died: which of its reported processes still run, and
killing exactly those (never a recycled pid, never another user's process)."""

from __future__ import annotations

import os

from .. import _procfs, _signals


def start_time(pid: int, proc: str) -> int | None:
    try:
        return _procfs.start_time(pid, proc)
    except (_procfs.ProcessGone, OSError):
        return None


def kill_orphans(
    pids: list[list[int]], uid: int, not_before: int | None, proc: str = _procfs.PROC
) -> list[int]:
    """SIGKILL the reported tree pids of a dead launcher that are still the same processes.

    A pid is killed only if, pinned by a pidfd, its start time still matches the reported
    one (no pid reuse), it is not older than the launcher (``not_before``, in ticks), and
    it belongs to the agent's ``uid``; never pid 0, 1 or the coordinator itself. These are
    the only pids the coordinator ever signals itself.
    """
    me = os.getpid()

    def ours(st: _procfs.ProcStat) -> bool:
        if not_before is not None and st.start_time < not_before:
            return False
        return _procfs.uid(st.pid, proc) == uid

    targets = [(pid, start) for pid, start in pids if pid not in (0, 1, me)]
    return _signals.kill_identified(targets, accept=ours, proc=proc)
