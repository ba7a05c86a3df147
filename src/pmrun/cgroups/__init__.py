"""pmrun's cgroup library: find the memory controller, make and empty agents' groups.

- :func:`detect` finds where the memory controller is (v1 or v2) and this process's
  group in it, from /proc/self/mountinfo and /proc/self/cgroup; no path is assumed.
- :func:`create_group` makes ``<own group>/pmrun/<agent-id>@<launcher pid>.<start>``
  (v1: in the memory and freezer hierarchies); the :class:`AgentGroup` it returns is
  joined, read, limited, killed and removed through its methods.
- :func:`fork_into` forks a child born inside a v2 group (clone3, CLONE_INTO_CGROUP).
- :func:`cleanup_orphans` empties and removes groups whose launcher died.
- :func:`system_memory` (what the coordinator's system threshold watches),
  :func:`container_memory`, :func:`container_memory_limit` and
  :func:`effective_total_memory` say how much memory this process really has when it
  runs in a memory-limited cgroup (a container, a pod, a systemd unit).

Every size is in bytes. Functions take ``proc`` (default ``/proc``) and ``root`` (a
prefix for every mount point) so the same code runs on a fake tree in tests. See
docs/cgroups.md.
"""

from __future__ import annotations

from ._clone3 import fork_into
from ._clone3 import open_group as open_for_clone
from ._container import (
    ContainerMemory,
    SystemMemory,
    container_memory,
    container_memory_limit,
    effective_total_memory,
    system_memory,
)
from ._group import (
    AgentGroup,
    V1Group,
    V2Group,
    create_group,
    evacuate,
    group_pressure,
    open_group,
)
from ._layout import LAUNCHER_LEAF, PARENT, Layout, detect, locate
from ._oom import KMSG, OomKill, OomLog
from ._orphans import (
    Orphan,
    clean,
    cleanup_orphans,
    find_orphans,
    launcher_alive,
    remove_empty_parents,
)
from ._parse import MemoryStat, group_name, parse_group_name, valid_agent_id

__all__ = [
    "AgentGroup",
    "ContainerMemory",
    "KMSG",
    "LAUNCHER_LEAF",
    "Layout",
    "MemoryStat",
    "OomKill",
    "OomLog",
    "Orphan",
    "PARENT",
    "SystemMemory",
    "V1Group",
    "V2Group",
    "clean",
    "cleanup_orphans",
    "container_memory",
    "container_memory_limit",
    "create_group",
    "detect",
    "effective_total_memory",
    "evacuate",
    "find_orphans",
    "fork_into",
    "open_for_clone",
    "group_name",
    "group_pressure",
    "launcher_alive",
    "locate",
    "open_group",
    "parse_group_name",
    "remove_empty_parents",
    "system_memory",
    "valid_agent_id",
]
