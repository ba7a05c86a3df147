"""The interface every enforcement backend implements."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcSample:
    """One process of the tree at one sample."""

    pid: int
    rss_bytes: int
    vsz_bytes: int


@dataclass(frozen=True)
class Sample:
    """The agent's memory at one instant, as its backend counts it."""

    rss_bytes: int  # what the limits are checked against: tree RSS, or the group's anon+swap
    processes: tuple[ProcSample, ...]  # every process found; may be empty for a cgroup read
    kernel_usage_bytes: int | None = None  # raw cgroup usage incl. page cache (cgroup only)


class Backend(abc.ABC):
    """Counts an agent's memory and stops its whole tree.

    The tree hangs under the launcher's keeper process (see ``pmrun._keeper``), a
    child subreaper that reaps every zombie; backends never wait for processes, they
    call ``reap`` to let the launcher catch up.
    """

    name: str  # "sampling", "cgroup-v1" or "cgroup-v2"
    reason: str  # why this backend was chosen, for the report and `pmrun status`
    keeper_pid: int | None = None  # the process the agent's tree hangs under (set by the launcher)

    def prepare_child(self) -> None:
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
