"""The one container-aware "system memory" the coordinator's threshold and status watch.

Fake /proc and cgroup trees under tmp_path (mountinfo included, so the mount point is
found, never assumed); the real kernel's view is tested in test_cgroup_backend.
"""

from __future__ import annotations

from pathlib import Path

from pmrun import cgroups

GiB, MiB = 1 << 30, 1 << 20
V1_UNLIMITED = "9223372036854771712"

V2_MOUNTINFO = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
)
# A container's group bind-mounted at the hierarchy's root (no cgroup namespace).
V1_BIND_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "35 31 0:32 /docker/f00d /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
)


def fake(
    tmp_path: Path, mountinfo: str, proc_cgroup: str, files: dict[str, str]
) -> tuple[str, str]:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "self" / "cgroup").write_text(proc_cgroup)
    (proc / "meminfo").write_text("MemTotal: 8388608 kB\nMemAvailable: 6291456 kB\n")
    root = tmp_path / "root"
    for rel, text in files.items():
        f = root / "sys/fs/cgroup" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return str(proc), str(root)


def test_without_a_cgroup_limit_it_is_memtotal_minus_memavailable(tmp_path: Path) -> None:
    proc, root = fake(tmp_path, V2_MOUNTINFO, "0::/user.slice\n", {"user.slice/memory.max": "max"})
    m = cgroups.system_memory(proc, root)
    assert (m.total_bytes, m.used_bytes, m.source) == (8 * GiB, 2 * GiB, "meminfo")


def test_a_smaller_v2_limit_binds_with_its_working_set(tmp_path: Path) -> None:
    proc, root = fake(tmp_path, V2_MOUNTINFO, "0::/box\n", {
        "box/memory.max": str(GiB),
        "box/memory.current": str(700 * MiB),
        "box/memory.stat": f"anon 1\ninactive_file {100 * MiB}\n",
    })  # fmt: skip
    m = cgroups.system_memory(proc, root)
    assert (m.total_bytes, m.used_bytes) == (GiB, 600 * MiB)
    assert m.source == f"cgroup v2 {root}/sys/fs/cgroup/box"


def test_the_tightest_v1_ancestor_binds(tmp_path: Path) -> None:
    proc, root = fake(tmp_path, V1_MOUNTINFO, "4:memory:/outer/inner\n", {
        "memory/outer/memory.limit_in_bytes": str(2 * GiB),
        "memory/outer/memory.usage_in_bytes": str(GiB),
        "memory/outer/memory.stat": "total_inactive_file 0\n",
        "memory/outer/inner/memory.limit_in_bytes": V1_UNLIMITED,
        "memory/outer/inner/memory.stat": f"hierarchical_memory_limit {2 * GiB}\n",
    })  # fmt: skip
    m = cgroups.system_memory(proc, root)
    assert (m.total_bytes, m.used_bytes) == (2 * GiB, GiB)
    assert m.source.endswith("/memory/outer")


def test_a_limit_above_memtotal_binds_nothing(tmp_path: Path) -> None:
    proc, root = fake(tmp_path, V1_MOUNTINFO, "4:memory:/\n", {
        "memory/memory.limit_in_bytes": str(64 * GiB),
    })  # fmt: skip
    assert cgroups.system_memory(proc, root).source == "meminfo"


def test_a_limit_hidden_above_a_bind_mounted_root_still_binds(tmp_path: Path) -> None:
    # The copy this replaced read only the files it could see and missed this limit.
    proc, root = fake(tmp_path, V1_BIND_MOUNTINFO, "4:memory:/docker/f00d\n", {
        "memory/memory.limit_in_bytes": V1_UNLIMITED,
        "memory/memory.usage_in_bytes": str(300 * MiB),
        "memory/memory.stat": f"hierarchical_memory_limit {GiB}\ntotal_inactive_file 0\n",
    })  # fmt: skip
    m = cgroups.system_memory(proc, root)
    assert (m.total_bytes, m.used_bytes) == (GiB, 300 * MiB)


def test_no_cgroup_mounted_at_all_is_memtotal(tmp_path: Path) -> None:
    proc, root = fake(tmp_path, "", "", {})
    m = cgroups.system_memory(proc, root)
    assert (m.total_bytes, m.source) == (8 * GiB, "meminfo")


def test_a_kept_layout_is_used_as_is(tmp_path: Path) -> None:
    proc, root = fake(tmp_path, V2_MOUNTINFO, "0::/box\n", {
        "box/memory.max": str(GiB), "box/memory.current": "0", "box/memory.stat": "",
    })  # fmt: skip
    layout = cgroups.locate(proc, root)
    Path(proc, "self", "mountinfo").write_text("")  # a second locate would now find nothing
    assert cgroups.system_memory(proc, root, layout).total_bytes == GiB
