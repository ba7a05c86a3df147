"""The interface every enforcement backend implements."""

from __future__ import annotations

import abc

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable

# Plain classes with __slots__ rather than dataclasses on the launch path: every agent
# start pays for class creation, and a dataclass costs about a millisecond to build.


class ProcSample:
    """One process of the tree at one sample.

    ``rss_bytes`` is the process's own anonymous memory + shmem + swap (``_procfs.COUNTED``),
    the measure the tree's figure sums: a process's figure never exceeds its tree's.
    """

    __slots__ = ("pid", "rss_bytes", "vsz_bytes")

    def __init__(self, pid: int, rss_bytes: int, vsz_bytes: int) -> None:
        self.pid = pid
        self.rss_bytes = rss_bytes
        self.vsz_bytes = vsz_bytes

    def __repr__(self) -> str:
        return f"ProcSample(pid={self.pid}, rss_bytes={self.rss_bytes}, vsz_bytes={self.vsz_bytes})"


class Sample:
    """The agent's memory at one instant, as its backend counts it."""

    __slots__ = ("rss_bytes", "processes", "kernel_usage_bytes")

    def __init__(
        self,
        rss_bytes: int,
        processes: tuple[ProcSample, ...],
        kernel_usage_bytes: int | None = None,
    ) -> None:
        self.rss_bytes = rss_bytes  # what the limits apply to: anon + shmem + swap, pages once
        self.processes = processes  # every process found
        self.kernel_usage_bytes = kernel_usage_bytes  # cgroup usage incl. page cache (cgroup only)

    def __repr__(self) -> str:
        return f"Sample(rss_bytes={self.rss_bytes}, processes={len(self.processes)}, kernel_usage_bytes={self.kernel_usage_bytes})"


class Backend(abc.ABC):
    """Counts an agent's memory and stops its whole tree.

    The tree hangs under the launcher's keeper process (see ``pmrun._keeper``), a
    child subreaper that reaps every zombie; backends never wait for processes, they
    call ``reap`` to let the launcher catch up.
    """

    name: str  # "sampling", "cgroup-v1" or "cgroup-v2"
    counted = "anon+shmem+swap"  # what sample() counts (``_procfs.COUNTED``), for messages
    reason: str  # why this backend was chosen, for the report and `pmrun status`
    keeper_pid: int | None = None  # the process the agent's tree hangs under (set by the launcher)

    def prepare_child(self) -> None:  # noqa: B027 - optional hook
        """Run in the forked child just before exec (e.g. join the group).

        Must not take locks or start threads: the child of a threaded parent may only
        do async-signal-safe work.
        """

    def started(self, pid: int) -> None:  # noqa: B027 - optional hook
        """The agent's first process is running as ``pid``."""

    @abc.abstractmethod
    def sample(self) -> Sample:
        """Measure the agent now."""

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """Every process of the agent now (may include zombies not yet reaped)."""

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of the agent; returns how many were signalled."""
        from .. import _signals

        return sum(_signals.send(p, sig) for p in self.pids())

    @abc.abstractmethod
    def kill_all(self, reap: Callable[[], None]) -> None:
        """SIGKILL every process of the agent, including ones forked meanwhile.

        Returns once none is left alive (zombies reaped through ``reap``).
        """

    def wakeup_fd(self) -> int | None:
        """An fd the kernel makes readable when the agent nears its limits, if it can.

        The launcher then samples at once instead of at its next interval.
        """
        return None

    def kernel_peak_bytes(self) -> int | None:
        """The kernel's own peak for the group, where there is one."""
        return None

    def kernel_oom_kills(self) -> int:
        """OOM kills the kernel made inside the group so far."""
        return 0

    def describe(self) -> dict[str, object]:
        """What the report and `pmrun status` say about this backend."""
        return {"name": self.name, "reason": self.reason}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend created (e.g. remove the group)."""
