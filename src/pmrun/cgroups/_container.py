"""Container awareness: the memory limit pmrun itself runs under.

In a container, a Kubernetes pod or a systemd unit with ``MemoryMax=``, the memory
pmrun may use is the limit of its cgroup (or of an ancestor), not the host's
MemTotal; the kernel OOM-kills at that limit whatever MemAvailable says. Like the
JVM's container support, pmrun takes the smaller of the two as "system memory".
"""

from __future__ import annotations

import os

from .. import _procfs
from ..errors import CgroupError
from ._layout import PROC, Layout, locate, read_text
from ._parse import memory_stat_v1, memory_stat_v2, parse_flat_keyed, parse_limit


class ContainerMemory:
    """The tightest memory limit over this process, and that group's use of it. Bytes."""

    __slots__ = ("limit_bytes", "usage_bytes", "working_set_bytes", "source")

    def __init__(self, limit_bytes: int, usage_bytes: int, working_set_bytes: int, source: str):
        self.limit_bytes = limit_bytes  # the smallest limit of our group and its ancestors
        self.usage_bytes = usage_bytes  # everything charged to the limiting group, cache included
        # usage minus inactive page cache: what `docker stats`, the kubelet and cAdvisor
        # call the working set, and the figure a threshold on the limit should watch
        self.working_set_bytes = working_set_bytes
        self.source = source  # "cgroup v1 /sys/fs/cgroup/memory/..." (the limiting group)

    def __repr__(self) -> str:
        return f"ContainerMemory(limit={self.limit_bytes}, working_set={self.working_set_bytes}, {self.source})"


def _ancestors(directory: str, mount_point: str) -> list[str]:
    """``directory`` and its parents up to the mount point, innermost first."""
    out = [directory]
    top = mount_point.rstrip("/") or "/"
    d = directory
    while d.rstrip("/") != top and os.path.dirname(d) != d and d.startswith(top):
        d = os.path.dirname(d)
        out.append(d)
    return out


def _limit(version: int, directory: str) -> int | None:
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    try:
        return parse_limit(read_text(os.path.join(directory, name)))
    except (OSError, ValueError):
        return None  # the root group has no limit file; a vanished group has none either


def _memory_in(layout: Layout) -> ContainerMemory | None:
    best: tuple[int, str] | None = None
    for d in _ancestors(layout.memory_dir, layout.mount_point):
        limit = _limit(layout.version, d)
        if limit is not None and (best is None or limit < best[0]):
            best = (limit, d)
    if layout.version == 1:
        # v1 also knows limits of ancestors hidden above the mount (a container's group
        # bind-mounted at the root): hierarchical_memory_limit is the minimum of them all.
        try:
            stat = parse_flat_keyed(read_text(os.path.join(layout.memory_dir, "memory.stat")))
        except OSError:
            stat = {}
        hidden = parse_limit(str(stat.get("hierarchical_memory_limit", "max")))
        if hidden is not None and (best is None or hidden < best[0]):
            best = (hidden, layout.mount_point)  # measured at the top group we can see
    if best is None:
        return None
    limit, d = best
    try:
        if layout.version == 1:
            usage = int(read_text(os.path.join(d, "memory.usage_in_bytes")))
            inactive = memory_stat_v1(read_text(os.path.join(d, "memory.stat")))
        else:
            usage = int(read_text(os.path.join(d, "memory.current")))
            inactive = memory_stat_v2(read_text(os.path.join(d, "memory.stat")), None)
    except (OSError, ValueError):
        usage, inactive = 0, None
    working = usage - (inactive.inactive_file_bytes if inactive is not None else 0)
    return ContainerMemory(limit, usage, max(0, working), f"cgroup v{layout.version} {d}")


def container_memory(
    proc: str = PROC, root: str = "", layout: Layout | None = None
) -> ContainerMemory | None:
    """The tightest memory cgroup limit over this process and its usage; None if unlimited.

    ``layout`` is :func:`locate`'s answer when the caller keeps it (a process's group
    rarely moves, and finding it parses mountinfo).
    """
    if layout is None:
        try:
            layout = locate(proc, root)
        except CgroupError:
            return None
    return _memory_in(layout)


def container_memory_limit(proc: str = PROC, root: str = "") -> int | None:
    """The smallest memory limit of this process's cgroup and its ancestors; None if none."""
    found = container_memory(proc, root)
    return None if found is None else found.limit_bytes


def effective_total_memory(proc: str = PROC, root: str = "") -> int:
    """System memory as pmrun should see it: MemTotal, or the container's limit if smaller."""
    total = _procfs.meminfo(proc).get("MemTotal", 0)
    limit = container_memory_limit(proc, root)
    return total if limit is None or total == 0 else min(total, limit)


class SystemMemory:
    """Memory total and used, as the system threshold sees it. Bytes."""

    __slots__ = ("total_bytes", "used_bytes", "source")

    def __init__(self, total_bytes: int, used_bytes: int, source: str) -> None:
        self.total_bytes = total_bytes
        self.used_bytes = used_bytes
        self.source = (
            source  # "meminfo", or "cgroup v1 /path" / "cgroup v2 /path" when a limit binds
        )

    def __repr__(self) -> str:
        return f"SystemMemory(total={self.total_bytes}, used={self.used_bytes}, {self.source})"


def system_memory(proc: str = PROC, root: str = "", layout: Layout | None = None) -> SystemMemory:
    """The host's memory (MemTotal - MemAvailable), or the container's if its limit is smaller.

    In a container the limit binds first: used is then the limiting group's working set
    (usage minus inactive page cache), the figure ``docker stats`` and the kubelet show.
    """
    mi = _procfs.meminfo(proc)
    total = mi.get("MemTotal", 0)
    available = mi.get("MemAvailable", mi.get("MemFree", 0))
    found = container_memory(proc, root, layout)
    if found is not None and (total == 0 or found.limit_bytes < total):
        return SystemMemory(found.limit_bytes, found.working_set_bytes, found.source)
    return SystemMemory(total, max(0, total - available), "meminfo")
