"""The cgroup backend: the kernel counts the agent's memory and holds its processes.

The agent's first process joins its own group before exec, so the agent never runs
outside it and nothing it forks can leave. pmrun's own limit (``--max-rss``, with its
SIGTERM, grace, SIGKILL) is checked against the group's anonymous memory, shared
memory and swap; the kernel's hard limit sits :func:`backstop_margin_bytes` above it
as the backstop a runaway allocator cannot pass between two samples. See
docs/cgroups.md.
"""

from __future__ import annotations

import os

from .. import _procfs, cgroups
from ..errors import CgroupError
from .base import Backend, ProcSample, Sample

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable

# The kernel's hard limit is max_rss plus this margin. The floor covers what the group
# is charged that pmrun does not count: page tables (~0.2 % of anonymous memory), slab,
# kernel stacks, and the page cache of the agent's own executables and libraries,
# which it needs resident not to thrash at the limit (10-30 MiB for a Python or Node
# agent). 32 MiB is also ~65 ms of the fastest Python allocator measured here
# (~500 MB/s, page faults included): a runaway allocator meets the kernel's limit
# within one sampling interval, while agents growing at agent-like rates (MB/s) are
# stopped by pmrun first, with SIGTERM and grace. 1/32 of max_rss above 1 GiB keeps the
# same headroom for large agents, whose page tables and slab grow with them.
BACKSTOP_MIN_BYTES = 32 << 20
BACKSTOP_DIVISOR = 32


def backstop_margin_bytes(max_rss: int) -> int:
    """How far above ``max_rss`` the kernel's hard limit sits: max(32 MiB, 1/32 of it)."""
    return max(BACKSTOP_MIN_BYTES, max_rss // BACKSTOP_DIVISOR)


def kernel_limit_bytes(max_rss: int) -> int:
    """The group's hard limit (v1 ``memory.limit_in_bytes``, v2 ``memory.max``)."""
    return max_rss + backstop_margin_bytes(max_rss)


MEMORY_HIGH_MODES = ("backstop", "warn", "max-rss", "off")


def memory_high_bytes(mode: str, max_rss: int, warn_rss: int) -> int | None:
    """v2 ``memory.high``, where the kernel reclaims and then throttles; None for no level.

    ``backstop`` (the default): half-way between ``--max-rss`` and the hard limit. Below
    it pmrun's own stop decides; above it (a runaway allocator, past pmrun's limit
    already) the kernel slows the group down so that pmrun's SIGTERM lands before the
    hard limit's OOM kill, and its ``memory.events`` "high" count wakes the launcher.
    ``warn``: at ``--warn-rss``. Measured on a v2 kernel without swap, that throttles an
    agent pmrun means to let run: an allocator took 65 s to grow from 100 to 124 MiB
    (the kernel cannot reclaim anonymous memory, so it only delays), and the stop at
    ``--max-rss`` never came. ``max-rss``: at pmrun's own limit, where page cache and
    kernel memory above the counted figure already throttle an agent just under it.
    ``off``: no level (``max``).
    """
    if mode == "backstop":
        return max_rss + backstop_margin_bytes(max_rss) // 2
    if mode == "warn":
        return warn_rss if 0 < warn_rss < max_rss else None
    if mode == "max-rss":
        return max_rss
    if mode == "off":
        return None
    raise ValueError(f"memory_high must be one of {', '.join(MEMORY_HIGH_MODES)}, not {mode!r}")


class CgroupBackend(Backend):
    """Counts and stops one agent through its own cgroup (v1 or v2)."""

    def __init__(
        self,
        group: cgroups.AgentGroup,
        *,
        reason: str,
        max_rss: int,
        kernel_limit: int | None,
        memory_high: int | None,
        oom_log: cgroups.OomLog | None = None,
        orphans_cleaned: list[str] | None = None,
    ) -> None:
        self.name = f"cgroup-v{group.version}"
        self.reason = reason
        self.group = group
        self.max_rss = max_rss
        self.kernel_limit = kernel_limit  # as the kernel holds it (page-rounded)
        self.memory_high = memory_high  # v2 only
        self.orphans_cleaned = orphans_cleaned or []  # stale groups removed on the way in
        self._oom_log = oom_log
        self._pid: int | None = None
        self._closed = False
        self._last_peak: int | None = None
        self._last_oom = 0
        self._last_events: dict[str, int] = {}
        self._oom_group = False
        self._kill_file = False
        self._reader = _procfs.TreeReader()  # keeps each process's status open between samples
        self._wakeup: int | None = None
        # v2: the group's directory, open for clone3(CLONE_INTO_CGROUP) in fork_child.
        self._group_fd = (
            cgroups.open_for_clone(group.memory_dir) if isinstance(group, cgroups.V2Group) else None
        )
        self._born_inside = False  # in the child: clone3 put it in the group already
        self.close_error: str | None = None  # why close() could not remove the group

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid {self._pid}" if self._pid else "not started"
        return f"<CgroupBackend {self.group.memory_dir} ({state})>"

    def fork_child(self) -> int:
        """fork(), with the child born inside the group where the kernel can (v2: clone3).

        Called by ``_spawn`` in place of ``os.fork``. A child made by clone3 never runs
        outside its group and skips the join (a migration: ~15 ms of RCU grace period
        on a 6.1 kernel); where clone3 fails nothing was made and this is a plain fork.
        """
        if self._group_fd is not None:
            pid = cgroups.fork_into(self._group_fd)
            if pid is not None:
                self._born_inside = pid == 0
                return pid
        return os.fork()

    def prepare_child(self) -> None:
        # In the forked child: opens and writes of prepared paths, nothing else. If the
        # join fails, exec must not happen: the agent would run outside its group.
        if self._born_inside:
            return
        try:
            self.group.join_self()
        except OSError as e:
            raise CgroupError(f"cannot join cgroup {self.group.memory_dir}: {e.strerror}") from None

    def started(self, pid: int) -> None:
        self._pid = pid

    def sample(self) -> Sample:
        try:
            stat = self.group.memory_stat()
            usage = self.group.usage_bytes()
            pids = self.group.pids()
        except OSError as e:
            raise CgroupError(f"cannot read cgroup {self.group.memory_dir}: {e.strerror}") from None
        procs: list[ProcSample] = []
        for pid in pids:
            try:
                vsz, counted = self._reader.memory(pid)  # the group's measure, per process
            except _procfs.ProcessGone:
                continue
            procs.append(ProcSample(pid, counted, vsz))
        if self._reader.open_files() > 2 * len(pids) + 16:
            self._reader.forget_others(set(pids))
        return Sample(stat.counted_bytes, tuple(procs), usage)

    def wakeup_fd(self) -> int | None:
        """The kernel's word that the agent nears its limits, instead of the next sample.

        v1: usage crossed ``--max-rss`` (a threshold eventfd). v2: ``memory.events``
        moved (memory.high, half-way to the hard limit, or memory.max was hit).
        """
        if self._wakeup is None:
            if isinstance(self.group, cgroups.V2Group):
                self._wakeup = self.group.events_eventfd()
            else:
                self._wakeup = self.group.threshold_eventfd([self.max_rss])
        return self._wakeup

    def memory_stat(self) -> cgroups.MemoryStat:
        """The group's memory by kind (anonymous, shared, swap, page cache), for reports."""
        return self.group.memory_stat()

    def pids(self) -> list[int]:
        return self.group.pids()

    def kill_all(self, reap: Callable[[], None]) -> None:
        self.group.kill(reap)

    def kernel_peak_bytes(self) -> int | None:
        if not self._closed:
            try:
                self._last_peak = self.group.peak_bytes()
            except OSError:
                pass
        return self._last_peak

    def kernel_oom_kills(self) -> int:
        if not self._closed:
            try:
                self._last_oom = self.group.oom_kills()
            except OSError:
                pass
        return self._last_oom

    def memory_events(self) -> dict[str, int]:
        """v2 ``memory.events`` (high, max, oom, oom_kill); the last read once closed."""
        if not self._closed:
            try:
                self._last_events = self.group.memory_events()
            except OSError:
                pass
        return self._last_events

    def oom_kills(self) -> list[cgroups.OomKill]:
        """One entry per kernel OOM kill in the group so far: which process, if known.

        The kernel log names the victim (pid, name, anonymous RSS); where pmrun cannot
        read it (not root, ``kernel.dmesg_restrict=1``) the fields are None and the
        launcher can still tell the victim from its wait status (SIGKILL it did not send).
        """
        count = self.kernel_oom_kills()
        if self._oom_log is None:
            return [cgroups.OomKill(None, None, None) for _ in range(count)]
        return self._oom_log.update(count)

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {
            "name": self.name,
            "reason": self.reason,
            "group": self.group.memory_dir,
            "counted": "anon+shmem+swap",
            "max_rss_bytes": self.max_rss,
            "kernel_limit_bytes": self.kernel_limit,
            "backstop_margin_bytes": (
                None if self.kernel_limit is None else self.kernel_limit - self.max_rss
            ),
        }
        if isinstance(self.group, cgroups.V1Group):
            d["freezer_group"] = self.group.freezer_dir
        elif isinstance(self.group, cgroups.V2Group):
            d["memory_high_bytes"] = self.memory_high
            events = self.memory_events()
            d["memory_events"] = {k: events.get(k, 0) for k in ("high", "max", "oom", "oom_kill")}
            if not self._closed:
                self._oom_group = self.group.oom_group()
                self._kill_file = self.group.has_kill_file()
            d["oom_group"] = self._oom_group  # a kernel OOM kill takes the whole agent
            d["kill"] = "cgroup.kill" if self._kill_file else "signals"
            d["start"] = "clone3" if self._group_fd is not None else "cgroup.procs"
        if self.orphans_cleaned:
            d["orphans_cleaned"] = list(self.orphans_cleaned)
        return d

    def close(self) -> None:
        """Kill anything left in the group (nothing, normally) and remove it.

        Never raises: a group that cannot be removed now (a process stuck in the kernel)
        is recorded in ``close_error`` and left for the next sweep, which will find its
        launcher gone.
        """
        if self._closed:
            return
        self.kernel_peak_bytes()
        self.kernel_oom_kills()
        self._closed = True
        try:
            if self.group.all_pids():
                self.group.kill(lambda: None)  # the keeper reaps them
            self.group.remove()
        except (CgroupError, OSError) as e:
            self.close_error = str(e)
        finally:
            self._reader.close()
            if self._group_fd is not None:
                os.close(self._group_fd)
                self._group_fd = None
            if self._oom_log is not None:
                self._oom_log.close()


# On the way in, an orphan whose processes do not die this fast (stuck in the kernel)
# is left to the coordinator's sweep and `pmrun gc`, which wait longer.
LAUNCH_SWEEP_KILL_TIMEOUT_S = 1.0


def _sweep_orphans(layout: cgroups.Layout, proc: str) -> list[str]:
    """Clean groups left by dead launchers, on the way in; never fails a launch."""
    try:
        return cgroups.cleanup_orphans(
            layout, proc=proc, kill_timeout_s=LAUNCH_SWEEP_KILL_TIMEOUT_S
        )
    except (OSError, CgroupError):
        return []


def create_cgroup_backend(
    *,
    agent_id: str,
    max_rss: int,
    warn_rss: int,
    memory_high: str = "backstop",
    proc: str = "/proc",
    root: str = "",
    kmsg: str = cgroups.KMSG,
) -> CgroupBackend:
    """Create the agent's group with its limits, or raise :class:`CgroupError` saying why not.

    Creating the group is the permission check: ``--backend auto`` falls back to
    sampling on the error (for example ``nobody`` under root's cgroup).
    """
    if max_rss <= 0:
        raise ValueError("max_rss must be more than 0")
    high_bytes = memory_high_bytes(memory_high, max_rss, warn_rss)
    layout = cgroups.detect(proc, root)
    cleaned = _sweep_orphans(layout, proc)
    me = os.getpid()
    try:
        start = _procfs.start_time(me, proc)
    except (_procfs.ProcessGone, OSError) as e:
        raise CgroupError(f"cannot read this process's start time: {e}") from None
    try:
        name = cgroups.group_name(agent_id, me, start)
    except ValueError as e:
        raise CgroupError(str(e)) from None
    group = cgroups.create_group(layout, name)
    limit = kernel_limit_bytes(max_rss)
    try:
        group.set_limits(limit, high_bytes if group.version == 2 else None)
        effective = group.limit_bytes()
    except (OSError, ValueError) as e:
        try:
            group.remove()
        except CgroupError:
            pass
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise CgroupError(f"cannot set the memory limit of {group.memory_dir}: {why}") from None
    if group.version == 1:
        freezer = "+freezer" if isinstance(group, cgroups.V1Group) and group.freezer_dir else ""
        where = f"cgroup v1 (memory{freezer})"
    else:
        where = "cgroup v2"
    reason = f"pmrun may create groups here: {where} under {layout.memory_parent}"
    return CgroupBackend(
        group,
        reason=reason,
        max_rss=max_rss,
        kernel_limit=effective,
        memory_high=high_bytes if group.version == 2 else None,
        oom_log=cgroups.OomLog(group.path, kmsg),
        orphans_cleaned=cleaned,
    )
