"""What the launcher's sampling loop makes of a tree: figures in, figures and words out.

Pure: nothing here reads /proc, signals a process or writes a line. The launcher
(``pmrun.launcher``) samples, stops and speaks; this module keeps the tree's figures
(:class:`TreeStats`), says why the agent ended (:func:`end_reason`) and puts the exit
report and pmrun's lines together (:func:`build_report`, :func:`warn_line`, ...).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import os

from . import policy
from ._procfs import COUNTED
from .errors import ExitCode
from .report import ExitReport, Limits, TopProcess
from .sizes import format_size

TYPE_CHECKING = False  # not `from typing import`: the launch path avoids importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .backends import Sample

# Ends that are a memory limit's doing: pmrun exits 137 for them, whatever the command said.
MEMORY_REASONS = frozenset(("max-rss", "pool", "system-pressure", "kernel-oom"))
# Ends that are the command's own doing: no line of pmrun's says them.
OWN_ENDS = ("exit", "signal")


class TreeStats:
    """One tree's figures over its samples: peaks, the biggest process at the peak, growth.

    Fed one sample at a time by :meth:`observe`; the only thing it asks the outside is a
    new biggest process's name (``name_of``), read once when that process first leads.
    """

    __slots__ = (
        "limits",
        "watch",
        "samples",
        "peak_vsz_bytes",
        "biggest",
        "usage_at_peak_bytes",
        "growth_bps",
        "flat_s",
        "vsz_bytes",
        "_flatness",
        "_name_of",
        "_started_s",
        "_last_rss_bytes",
        "_last_s",
    )

    def __init__(self, limits: Limits, started_s: float, name_of: Callable[[int], str]) -> None:
        self.limits = limits
        self.watch = policy.LimitWatch(limits.warn_rss, limits.max_rss)
        self.samples = 0
        self.peak_vsz_bytes = 0  # the largest address space of any one process
        self.biggest: TopProcess | None = None  # the biggest process at the tree's peak
        self.usage_at_peak_bytes: int | None = None  # the kernel's raw usage at the peak
        self.growth_bps = 0.0  # since the sample before (bytes per second)
        self.flat_s = 0.0  # how long the tree has held still
        self.vsz_bytes: int | None = None  # the last sample's largest process; None: none
        self._flatness = policy.Flatness()
        self._name_of = name_of
        self._started_s = started_s  # monotonic, like every ``now_s``
        self._last_rss_bytes = 0
        self._last_s = started_s

    @property
    def peak_bytes(self) -> int:
        return self.watch.peak_bytes

    def __repr__(self) -> str:
        big = f"pid {self.biggest.pid}" if self.biggest else None
        return f"TreeStats(samples={self.samples}, peak_bytes={self.peak_bytes}, biggest={big})"

    def observe(self, sample: Sample, now_s: float) -> str:
        """Feed one sample taken at ``now_s``; returns the limit it crossed first (``policy.Crossing``)."""
        rss = sample.rss_bytes
        procs = sample.processes
        self.samples += 1
        elapsed = now_s - self._last_s
        self.growth_bps = (rss - self._last_rss_bytes) / elapsed if elapsed > 0 else 0.0
        self._last_rss_bytes, self._last_s = rss, now_s
        self.vsz_bytes = max(p.vsz_bytes for p in procs) if procs else None
        if self.vsz_bytes is not None:
            self.peak_vsz_bytes = max(self.peak_vsz_bytes, self.vsz_bytes)
        if rss >= self.watch.peak_bytes:  # a new peak, or the peak again: who holds it now
            self.usage_at_peak_bytes = sample.kernel_usage_bytes
            if procs:
                top = max(procs, key=lambda p: p.rss_bytes)
                if self.biggest is None or self.biggest.pid != top.pid:
                    self.biggest = TopProcess(top.pid, self._name_of(top.pid), top.rss_bytes)
                else:
                    self.biggest.rss_bytes = top.rss_bytes
        self.flat_s = self._flatness.observe(rss, now_s)
        return self.watch.observe(rss)

    def next_interval_s(self, *, kernel_wakes: bool = False) -> float:
        """Seconds until the next sample, from what the last one showed."""
        lim = self.limits
        interval = policy.next_interval_s(
            self._last_rss_bytes,
            lim.max_rss,
            self.growth_bps,
            flat_s=self.flat_s,
            kernel_wakes=kernel_wakes,
        )
        # Young trees are sampled at a quarter of their age (1 ms, 2 ms, ... up to the
        # interval above): a short command's peak is seen, at ~25 samples in all.
        age_s = self._last_s - self._started_s
        interval = min(interval, max(policy.MIN_INTERVAL_S, age_s / 4))
        if lim.max_as is not None and self.vsz_bytes is not None:
            # Watch the address space near --max-as too, so that a failure there
            # can be told from any other crash (it is per process, like RLIMIT_AS).
            interval = min(interval, policy.next_interval_s(self.vsz_bytes, lim.max_as))
        return interval

    def during_grace(self, rss_bytes: int) -> bool:
        """Feed a sample of the stop's grace period: it counts for the peak only.

        Returns whether the tree has grown so far past --max-rss that it is killed now.
        """
        self.watch.peak_bytes = max(self.watch.peak_bytes, rss_bytes)
        return policy.grace_exceeded(rss_bytes, self.limits.max_rss)

    def extra(self) -> dict[str, Any]:
        """The report's ``extra`` figures of the tree."""
        return {
            "peak_vsz_bytes": self.peak_vsz_bytes,
            # cgroup: the raw usage (page cache included) when the counted peak was
            # seen, beside the anonymous+shmem+swap figure the limits apply to.
            "kernel_usage_at_peak_bytes": self.usage_at_peak_bytes,
        }


def end_reason(
    *,
    stopped_for: str | None,
    wait_status: int,
    oom_kills: int = 0,
    peak_vsz_bytes: int = 0,
    max_as_bytes: int | None = None,
) -> str:
    """Why the agent ended, one of ``report.REASONS``.

    ``stopped_for`` is why pmrun stopped the tree (``max-rss``, the coordinator's ``pool``
    or ``system-pressure``, ``kernel-oom``), None when the command ended by itself; then
    the wait status tells: SIGKILL after a kernel OOM kill in the group is ``kernel-oom``,
    an end that looks like a failed mapping under --max-as is ``max-as``, any other
    signal ``signal``, else ``exit``.
    """
    if stopped_for is not None:
        return stopped_for
    killed = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
    if oom_kills > 0 and killed == signal.SIGKILL:
        return "kernel-oom"
    if policy.looks_like_max_as(
        wait_status=wait_status, peak_vsz_bytes=peak_vsz_bytes, max_as_bytes=max_as_bytes
    ):
        return "max-as"
    if killed is not None:
        return "signal"
    return "exit"


def exit_status(reason: str, wait_status: int) -> int:
    """What pmrun exits with: 137 for a memory limit, else as the shell would see the command."""
    if reason in MEMORY_REASONS:
        return ExitCode.MEMORY_LIMIT
    return policy.exit_status(wait_status)


def message(
    reason: str,
    *,
    name: str,
    pid: int,
    limits: Limits,
    peak_bytes: int,
    biggest: TopProcess | None,
    stop: dict[str, Any] | None,
    wait_status: int,
) -> str:
    """The report's one line for people: how the agent ended, with the figures that tell why."""
    who = agent_label(name, pid)
    big = (
        f"; biggest process: pid {biggest.pid} {biggest.name} ({format_size(biggest.rss_bytes)})"
        if biggest
        else ""
    )
    peak = f"peak {format_size(peak_bytes)}{big}"
    if reason == "max-rss":
        return (
            f"stopped {who}: memory ({COUNTED}) passed --max-rss {format_size(limits.max_rss)};"
            f" {peak}"
        )
    if reason in ("pool", "system-pressure"):
        why = (stop or {}).get("message") or (
            "the agents' pool is over its limit"
            if reason == "pool"
            else "the system is short of memory"
        )
        return f"stopped {who} by the coordinator ({reason}): {why}; {peak}"
    if reason == "kernel-oom":
        return f"{who} was killed by the kernel's OOM killer (its cgroup limit); {peak}"
    if reason == "max-as":
        return (
            f"{who} failed under --max-as {format_size(limits.max_as or 0)}:"
            " likely a failed mapping (ENOMEM; sanitizers, Bun and the JVM reserve more"
            " than they use); raise --max-as or set it to off"
        )
    if reason == "signal":
        return f"{who} was killed by signal {os.WTERMSIG(wait_status)}"
    return f"{who} exited with status {os.WEXITSTATUS(wait_status)}"


def build_report(
    stats: TreeStats,
    reason: str,
    *,
    wait_status: int,
    stop: dict[str, Any] | None,
    command: list[str],
    name: str,
    agent_id: str,
    pid: int,
    launcher_pid: int,
    start_time: float,
    end_time: float,
    ru_maxrss_kib: int | None,  # the command's own peak from wait4, in KiB as the kernel says
    backend: dict[str, Any],
    kernel_peak_bytes: int | None,
    kernel_oom_kills: int,
    warned_at: float | None,
    extra: dict[str, Any],  # after the tree's own extra figures (the pause summary)
) -> ExitReport:
    """The exit report of an agent that ran and ended ``reason`` with ``wait_status``."""
    limits = stats.limits
    return ExitReport(
        command=command,
        name=name,
        agent_id=agent_id,
        pid=pid,
        launcher_pid=launcher_pid,
        start_time=start_time,
        end_time=end_time,
        exit_status=int(exit_status(reason, wait_status)),
        reason=reason,
        message=message(
            reason,
            name=name,
            pid=pid,
            limits=limits,
            peak_bytes=stats.peak_bytes,
            biggest=stats.biggest,
            stop=stop,
            wait_status=wait_status,
        ),
        signal=os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None,
        peak_rss_bytes=stats.peak_bytes,
        limits=limits,
        samples=stats.samples,
        biggest_at_peak=stats.biggest,
        ru_maxrss_bytes=ru_maxrss_kib * 1024 if ru_maxrss_kib is not None else None,
        backend=backend,
        kernel_peak_bytes=kernel_peak_bytes,
        kernel_oom_kills=kernel_oom_kills,
        warned_at=warned_at,
        stop=stop,
        extra={**stats.extra(), **extra},
    )


# -- pmrun's lines on stderr (without the "pmrun: " every line gets) ----------------------


def agent_label(name: str, pid: int) -> str:
    """How pmrun's lines name an agent: ``claude (pid 42)``, the pid being the command's."""
    return f"{name} (pid {pid})"


def warn_line(name: str, pid: int, counted: str, rss_bytes: int, limits: Limits) -> str:
    """Said once when the tree first passes --warn-rss."""
    return (
        f"warning: {agent_label(name, pid)} memory ({counted}) {format_size(rss_bytes)}"
        f" passed --warn-rss {format_size(limits.warn_rss)}"
        f" (stop at {format_size(limits.max_rss)})"
    )


def end_lines(report: ExitReport, deferred: list[str]) -> list[str]:
    """What pmrun says once the agent has ended: the lines kept for the end, then why
    pmrun or the kernel ended it (the command's own exit or signal goes unsaid)."""
    lines = list(deferred)
    if report.reason not in OWN_ENDS:
        lines.append(report.message)
    return lines


def no_coordinator_line(why: object) -> str:
    """Said when the agent runs without a coordinator it was meant to have."""
    return f"warning: no coordinator ({why}); enforcing this agent's own limits only"


def refused_line(
    pids: list[int], name_of: Callable[[int], str], owner_of: Callable[[int], str]
) -> str:
    """Said once when processes of the tree refuse pmrun's SIGKILL (they changed their uid)."""
    who = ", ".join(f"pid {p} {name_of(p)} (uid {owner_of(p)})" for p in pids[:5])
    return (
        f"cannot stop {len(pids)} process(es) of the tree that changed their uid, left"
        f" running: {who}"
    )
