"""The fallback that works everywhere: walk the tree under the launcher and sum RSS.

The keeper (see ``pmrun._keeper``) is a child subreaper, so every descendant,
however it forked or setsid'd, is under it: either below the command or reparented
to the keeper. The tree is therefore "every descendant of the keeper".
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import os
import time

from .. import _procfs, _signals
from .base import Backend, ProcSample, Sample

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable


class SamplingBackend(Backend):
    name = "sampling"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._reader = _procfs.TreeReader()
        self._samples = 0

    @property
    def _root(self) -> int:
        return self.keeper_pid if self.keeper_pid is not None else os.getpid()

    def pids(self) -> list[int]:
        try:
            return self._reader.descendants(self._reader.children(self._root))
        except _procfs.ProcessGone:
            return []  # the keeper has exited: nothing is left

    def sample(self) -> Sample:
        try:
            roots = self._reader.children(self._root)
        except _procfs.ProcessGone:
            roots = []  # the keeper has exited: nothing is left
        found = self._reader.walk(roots)
        procs = tuple(ProcSample(pid, rss, vsz) for pid, vsz, rss in found)
        self._samples += 1
        if self._samples % 64 == 0:
            self._reader.forget_others({self._root, *(p.pid for p in procs)})
        return Sample(sum(p.rss_bytes for p in procs), procs)

    def close(self) -> None:
        self._reader.close()

    def _tree(self) -> tuple[list[int], set[int]]:
        pids = self.pids()
        return pids, {self._root, *pids}

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of the tree; returns how many were signalled."""
        pids, parents = self._tree()
        return sum(_signals.send(p, sig, parents=parents) for p in pids)

    def kill_all(self, reap: Callable[[], None]) -> None:
        # Freeze first (SIGSTOP) so that nothing forks between our walk and our kill,
        # walking again until no new process appears; then SIGKILL the frozen set.
        while True:
            stopped: set[int] = set()
            for _ in range(100):
                pids, parents = self._tree()
                new = [p for p in pids if p not in stopped]
                if not new:
                    break
                for p in new:
                    _signals.send(p, signal.SIGSTOP, parents=parents)
                    stopped.add(p)
            pids, parents = self._tree()
            if not pids:
                return
            for p in pids:
                _signals.send(p, signal.SIGKILL, parents=parents)
            reap()
            if not _procfs.any_alive(self.pids()):
                return
            time.sleep(0.001)  # let the kernel finish exits before the next walk
            reap()
