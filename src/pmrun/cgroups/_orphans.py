"""Groups whose launcher died (SIGKILL, OOM, a crash): found by name, emptied, removed.

A group's name carries its launcher's pid and start time (see
:func:`pmrun.cgroups.group_name`), so telling an orphan costs one read of
``/proc/PID/stat`` per group, and a name that does not parse is not pmrun's and is
never touched. Liveness is judged in the caller's pid namespace: launchers sharing
one parent group must share a pid namespace (they do when they share a container).
"""

from __future__ import annotations

import os

from .. import _procfs
from ..errors import CgroupError
from ._group import KILL_TIMEOUT_S, AgentGroup, open_group, remove_if_empty
from ._layout import PROC, Layout, detect
from ._parse import parse_group_name

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable


def launcher_alive(pid: int, start_time: int, proc: str = PROC) -> bool:
    """Whether the launcher ``pid`` that started at ``start_time`` (clock ticks) still runs.

    A zombie or exiting launcher does not: it will never clean its group. Where /proc
    cannot tell, it does: the group is left alone.
    """
    return _procfs.same_process(pid, start_time, proc, unreadable=True)


class Orphan:
    """A pmrun group whose launcher is gone."""

    __slots__ = ("agent_id", "launcher_pid", "group")

    def __init__(self, agent_id: str, launcher_pid: int, group: AgentGroup) -> None:
        self.agent_id = agent_id
        self.launcher_pid = launcher_pid
        self.group = group

    def __repr__(self) -> str:
        return f"Orphan({self.group.memory_dir!r}, launcher {self.launcher_pid})"


def _names(directory: str | None) -> list[str]:
    if directory is None:
        return []
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def find_orphans(layout: Layout, proc: str = PROC, *, thorough: bool = False) -> list[Orphan]:
    """pmrun's groups under ``layout``'s parent whose launcher is dead.

    Quick (the launch path): one listdir of the memory parent. ``thorough`` also looks
    in the v1 freezer parent, for a twin left when pmrun died between two mkdirs.
    """
    names = _names(layout.memory_parent)
    if thorough:
        names += [n for n in _names(layout.freezer_parent) if n not in names]
    out: list[Orphan] = []
    for name in names:
        parsed = parse_group_name(name)
        if parsed is None:
            continue  # not a group pmrun made
        agent_id, pid, start = parsed
        if launcher_alive(pid, start, proc):
            continue
        out.append(Orphan(agent_id, pid, open_group(layout, name)))
    return out


def _no_reap() -> None:
    """An orphan's processes are someone else's children: their reaper collects them."""


def clean(
    orphan: Orphan, reap: Callable[[], None] = _no_reap, kill_timeout_s: float = KILL_TIMEOUT_S
) -> int:
    """Kill every process of an orphan group and remove it; returns how many were killed."""
    killed = orphan.group.kill(reap, kill_timeout_s)
    orphan.group.remove()
    return killed


def cleanup_orphans(
    layout: Layout | None = None,
    *,
    proc: str = PROC,
    root: str = "",
    thorough: bool = False,
    kill_timeout_s: float = KILL_TIMEOUT_S,
) -> list[str]:
    """Find and clean orphaned pmrun groups; return the directories removed.

    Called by every launch (quick) and by the coordinator's sweep; ``pmrun gc`` is the
    thorough form. Where pmrun cannot use cgroups there is nothing of its to clean. A
    group that cannot be cleaned now (a process stuck in the kernel) is skipped and
    found again by the next sweep; ``kill_timeout_s`` bounds the wait for one group.
    """
    if layout is None:
        try:
            layout = detect(proc, root)
        except CgroupError:
            return []
    removed: list[str] = []
    for orphan in find_orphans(layout, proc, thorough=thorough):
        try:
            clean(orphan, kill_timeout_s=kill_timeout_s)
        except (CgroupError, OSError):  # stuck, not ours to signal, or raced away
            continue
        removed.append(orphan.group.memory_dir)
    if thorough:
        remove_empty_parents(layout)
    return removed


def remove_empty_parents(layout: Layout) -> None:
    """Remove the ``pmrun`` parent groups if no agent's group is left in them."""
    for parent in (layout.memory_parent, layout.freezer_parent):
        if parent is not None:
            remove_if_empty(parent)
