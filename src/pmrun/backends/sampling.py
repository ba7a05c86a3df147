"""The fallback that works everywhere: walk the tree under the launcher and sum its memory.

The keeper (see ``pmrun._keeper``) is a child subreaper, so every descendant,
however it forked or setsid'd, is under it: either below the command or reparented
to the keeper. The tree is therefore "every descendant of the keeper".

What is counted is what the cgroup backend's kernel counts: anonymous memory, shmem
and swap (``_procfs.COUNTED``), each page once. Each sample sums every process's
RssAnon + RssShmem + VmSwap, which counts a page twice where two processes map it
(copy on write after fork, a shared mapping); in a tree of several processes, a
proportional pass (PSS, which splits each shared page among its sharers) now and then
takes the doubles out. Between passes a process counts as its share at the last pass
plus whatever it grew since, never more than its own figure: growth is seen at once,
a copy-on-write break at the next pass.
"""

from __future__ import annotations

import os
import time

from .. import _procfs, _signals
from .base import Backend, ProcSample, Sample

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable


# A proportional pass walks page tables (~30-100 us a process, more for big ones): it is
# run again only after this many times its own duration, so it costs under 5 % of a core.
PSS_COST_FACTOR = 20
PSS_MAX_AGE_S = 2.0  # and at least this often while the tree has several processes
# Smaller processes count as their own figure (shell wrappers, sleeping helpers): what they
# could count twice is small, and a wide tree of them would make every pass long.
PSS_MIN_BYTES = 1 << 20


class SamplingBackend(Backend):
    name = "sampling"

    def __init__(
        self,
        reason: str,
        *,
        limits: tuple[int, int] = (0, 0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reason = reason
        # (--warn-rss, --max-rss): a figure that crosses one is confirmed by a fresh
        # proportional pass before the launcher acts on it, so that a fork's shared
        # pages (counted twice until the next pass) never warn or stop an agent.
        self._warn_bytes, self._max_bytes = limits
        self._warn_confirmed = False
        self._reader = _procfs.TreeReader()
        self._samples = 0
        self._clock = clock
        self._pss_next = 0.0  # when the next proportional pass may run
        self._pss: dict[int, tuple[int, int]] = {}  # pid -> (own figure, share) at the last pass
        self._pss_works = True  # False on kernels without Pss_Anon

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
        procs = tuple(ProcSample(pid, counted, vsz) for pid, vsz, counted in found)
        self._samples += 1
        if self._samples % 64 == 0:
            self._reader.forget_others({self._root, *(p.pid for p in procs)})
        if len(procs) > 1 and self._pss_works and self._clock() >= self._pss_next:
            self._proportional_pass(procs)
            return Sample(self._tree_bytes(procs), procs)
        total = self._tree_bytes(procs)
        if len(procs) > 1 and self._pss_works and self._crosses(total):
            self._proportional_pass(procs)
            total = self._tree_bytes(procs)
            self._warn_confirmed = self._warn_confirmed or total > self._warn_bytes
        return Sample(total, procs)

    def _crosses(self, total: int) -> bool:
        """Whether ``total`` would warn or stop the agent, so must be confirmed first."""
        if 0 < self._max_bytes < total:
            return True
        return not self._warn_confirmed and 0 < self._warn_bytes < total

    def _proportional_pass(self, procs: tuple[ProcSample, ...]) -> None:
        """Each process's share of the pages it maps, for :meth:`_tree_bytes`."""
        t0 = self._clock()
        shares: dict[int, tuple[int, int]] = {}
        for p in procs:
            if p.rss_bytes < PSS_MIN_BYTES:
                continue
            try:
                share = _procfs.counted_pss(p.pid)
            except (_procfs.ProcessGone, OSError):
                continue  # gone, or not ours to read: it counts as its own figure
            if share is None:
                self._pss_works = False
                return
            shares[p.pid] = (p.rss_bytes, share)
        self._pss = shares
        now = self._clock()
        self._pss_next = now + min(PSS_COST_FACTOR * (now - t0), PSS_MAX_AGE_S)

    def _tree_bytes(self, procs: tuple[ProcSample, ...]) -> int:
        """The tree's memory with shared pages counted once, as of the last pass.

        Never below the biggest process's own figure: a sharer that exited since the
        last pass leaves the others' shares too small until the next one.
        """
        if len(procs) <= 1:
            return sum(p.rss_bytes for p in procs)
        total = 0
        pss = self._pss
        for p in procs:
            at = pss.get(p.pid)
            if at is None:
                total += p.rss_bytes
            else:
                own, share = at
                total += min(p.rss_bytes, share + max(0, p.rss_bytes - own))
        return max(total, max(p.rss_bytes for p in procs))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "reason": self.reason, "counted": _procfs.COUNTED}

    def close(self) -> None:
        self._reader.close()

    def _tree(self) -> tuple[list[int], set[int]]:
        pids = self.pids()
        return pids, {self._root, *pids}

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of the tree; returns how many were signalled."""
        pids, parents = self._tree()
        return sum(_signals.send(p, sig, parents=parents) for p in pids)

    def kill_all(
        self, reap: Callable[[], None], timeout_s: float = _signals.KILL_TIMEOUT_S
    ) -> None:
        """Freeze and kill the tree; gives up after ``timeout_s`` on what SIGKILL cannot end
        (another uid, a task stuck in the kernel or in a frozen cgroup)."""
        _signals.kill_tree(self.pids, self._root, reap, timeout_s=timeout_s)
