"""Where this process's memory cgroup is, found from /proc/self/mountinfo and /proc/self/cgroup.

No path is assumed: the memory controller may be on cgroup v1 (its own hierarchy,
mounted anywhere), on the v2 unified hierarchy, or nowhere; a container may see its
group bind-mounted at the hierarchy's root. ``proc`` and ``root`` (a prefix put
before every mount point) let the tests run this on a fake tree.
"""

from __future__ import annotations

import os

from ..errors import CgroupError
from ._parse import Mount, dir_in_mount, parse_mountinfo, parse_proc_cgroup

PROC = "/proc"
PARENT = "pmrun"  # every agent's group is created under a group of this name
# cgroup v2 forbids processes in a group whose children use a controller. In a delegated
# group that holds processes (a `systemd-run --scope`), pmrun moves them into this leaf
# beside ``pmrun/``; a pmrun running in it creates its agents' groups one level up.
LAUNCHER_LEAF = "pmrun-launcher"


def read_text(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


class Layout:
    """This process's place in the cgroup hierarchies, and where pmrun's groups go."""

    __slots__ = ("version", "memory_dir", "freezer_dir", "cgroup_path", "mount_point")

    def __init__(
        self,
        version: int,
        memory_dir: str,
        cgroup_path: str,
        mount_point: str,
        freezer_dir: str | None = None,
    ) -> None:
        self.version = version  # 1 or 2: the hierarchy the memory controller is on
        self.memory_dir = memory_dir  # this process's own group there (a directory)
        self.cgroup_path = cgroup_path  # the same group as /proc/self/cgroup names it
        self.mount_point = mount_point  # where that hierarchy is mounted (root-prefixed)
        self.freezer_dir = freezer_dir  # v1: own group in the freezer hierarchy, if mounted

    def __repr__(self) -> str:
        return f"Layout(v{self.version}, memory={self.memory_dir!r}, freezer={self.freezer_dir!r})"

    def _base(self, directory: str, path: str) -> tuple[str, str]:
        if self.version == 2 and os.path.basename(directory) == LAUNCHER_LEAF:
            return os.path.dirname(directory), os.path.dirname(path) or "/"
        return directory, path

    @property
    def memory_parent(self) -> str:
        """The ``pmrun`` group agents' groups are created in (memory, or the v2 group)."""
        return os.path.join(self._base(self.memory_dir, self.cgroup_path)[0], PARENT)

    @property
    def freezer_parent(self) -> str | None:
        """v1: the ``pmrun`` group in the freezer hierarchy."""
        return None if self.freezer_dir is None else os.path.join(self.freezer_dir, PARENT)

    @property
    def parent_path(self) -> str:
        """The memory parent's path as the kernel names it (in /proc and its log)."""
        base = self._base(self.memory_dir, self.cgroup_path)[1]
        return base.rstrip("/") + "/" + PARENT

    @property
    def base_dir(self) -> str:
        """The delegated group ``pmrun/`` is created in (v2 must enable memory there)."""
        return self._base(self.memory_dir, self.cgroup_path)[0]


def _own_dir(mounts: list[Mount], path: str, want: str, root: str) -> tuple[str, str] | None:
    """(directory, mount point) of the group at ``path`` in the first mount that shows it."""
    for m in mounts:
        if (want == "" and m.version == 2) or (want != "" and m.version == 1 and want in m.options):
            d = dir_in_mount(m, path)
            if d is not None:
                return root + d, root + m.mount_point
    return None


def locate(proc: str = PROC, root: str = "") -> Layout:
    """Find the hierarchy holding the memory controller and this process's group in it.

    Raises :class:`CgroupError` with the reason when there is none. Says nothing about
    whether pmrun may create groups there (see :func:`detect`).
    """
    try:
        mounts = parse_mountinfo(read_text(f"{proc}/self/mountinfo"))
        v1, v2 = parse_proc_cgroup(read_text(f"{proc}/self/cgroup"))
    except OSError as e:
        raise CgroupError(f"cannot read {e.filename}: {e.strerror}") from None
    if "memory" in v1:
        # On a hybrid system the memory controller is bound to v1 and absent from v2.
        found = _own_dir(mounts, v1["memory"], "memory", root)
        if found is None:
            if not any(m.version == 1 and "memory" in m.options for m in mounts):
                raise CgroupError("the cgroup v1 memory controller is not mounted here")
            raise CgroupError(
                f"this process's memory cgroup {v1['memory']} is not visible under any mount"
                " (another cgroup namespace?)"
            )
        freezer = None
        if "freezer" in v1:
            f = _own_dir(mounts, v1["freezer"], "freezer", root)
            freezer = f[0] if f is not None else None
        return Layout(1, found[0], v1["memory"], found[1], freezer)
    if v2 is not None:
        found = _own_dir(mounts, v2, "", root)
        if found is None:
            if not any(m.version == 2 for m in mounts):
                raise CgroupError("no cgroup memory controller is mounted")
            raise CgroupError(
                f"this process's cgroup {v2} is not visible under the cgroup2 mount"
                " (another cgroup namespace?)"
            )
        return Layout(2, found[0], v2, found[1])
    raise CgroupError("no cgroup memory controller is mounted")


def detect(proc: str = PROC, root: str = "") -> Layout:
    """:func:`locate`, and on v2 check that the memory controller reaches our group.

    Raises :class:`CgroupError` with the reason when pmrun cannot have memory groups.
    """
    layout = locate(proc, root)
    if layout.version == 1:
        return layout
    base = layout.base_dir
    try:
        controllers = read_text(os.path.join(base, "cgroup.controllers")).split()
    except OSError as e:
        raise CgroupError(f"cannot read {e.filename}: {e.strerror}") from None
    if "memory" not in controllers:
        try:
            at_root = read_text(os.path.join(layout.mount_point, "cgroup.controllers")).split()
        except OSError:
            at_root = []
        if "memory" not in at_root:
            raise CgroupError(f"cgroup v2 at {layout.mount_point} has no memory controller")
        raise CgroupError(
            f"the memory controller is not delegated to {base}"
            " (run pmrun in a unit with Delegate=yes:"
            " `systemd-run --user --scope -p Delegate=yes pmrun ...`)"
        )
    return layout
