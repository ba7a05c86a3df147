"""pmrun.cgroups without a kernel: parsers as tables, and v1/v2 file handling on a fake
cgroupfs under tmp_path (a small fake kernel gives mkdir its interface files and a few
writes their effect, so the same code runs as on /sys/fs/cgroup)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmrun import cgroups
from pmrun.backends.cgroup import (
    BACKSTOP_MIN_BYTES,
    backstop_margin_bytes,
    kernel_limit_bytes,
    memory_high_bytes,
)
from pmrun.cgroups import _group, _parse
from pmrun.errors import CgroupError

MiB = 1 << 20
GiB = 1 << 30

# -- samples from real machines ---------------------------------------------------------

# This project's CI machine: cgroup v1 for every controller, cgroup2 without memory.
HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
1:cpu:/
0::/
"""

# A systemd machine on the unified hierarchy (Fedora, Ubuntu 22.04+), with optional fields.
V2_MOUNTINFO = """\
25 1 0:23 / / rw shared:1 - ext4 /dev/sda1 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
V2_CGROUP = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope\n"

# Docker without a cgroup namespace, on v1: the container's group is bind-mounted.
DOCKER_V1_MOUNTINFO = """\
700 690 0:35 /docker/f00d /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:17 - cgroup cgroup rw,memory
701 690 0:36 /docker/f00d /sys/fs/cgroup/cpu,cpuacct ro,nosuid master:18 - cgroup cgroup rw,cpu,cpuacct
"""
DOCKER_V1_CGROUP = "11:memory:/docker/f00d\n3:cpu,cpuacct:/docker/f00d\n"

V1_STAT = """\
cache 1048576
rss 2097152
rss_huge 0
shmem 4096
swap 0
total_cache 104857600
total_rss 73400320
total_rss_huge 67108864
total_shmem 33554432
total_swap 8192
total_inactive_file 50331648
hierarchical_memory_limit 9223372036854771712
"""

V2_STAT = """\
anon 73400320
file 104857600
kernel 1048576
shmem 33554432
inactive_file 50331648
active_file 20971520
anon_thp 67108864
"""

OOM_LINES = [
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/process_api/abc/pmrun/a.1@1.2,task_memcg=/process_api/abc/pmrun/a.1@1.2,"
    "task=python3,pid=5829,uid=0",
    "Memory cgroup out of memory: Killed process 5829 (python3) total-vm:214968kB,"
    " anon-rss:204288kB, file-rss:6628kB, shmem-rss:0kB, UID:0 pgtables:468kB oom_score_adj:0",
]


# -- parsers ------------------------------------------------------------------------------


def test_mountinfo_finds_cgroup_mounts_only() -> None:
    mounts = _parse.parse_mountinfo(HYBRID_MOUNTINFO)
    assert [(m.mount_point, m.version) for m in mounts] == [
        ("/sys/fs/cgroup/cpu", 1),
        ("/sys/fs/cgroup/memory", 1),
        ("/sys/fs/cgroup/freezer", 1),
        ("/sys/fs/cgroup/pids", 1),
        ("/sys/fs/cgroup/systemd", 1),
        ("/sys/fs/cgroup/unified", 2),
    ]
    assert "memory" in mounts[1].options and "name=systemd" in mounts[4].options


def test_mountinfo_optional_fields_and_escapes() -> None:
    text = (
        "35 24 0:30 / /sys/fs/cgroup rw shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate\n"
        "36 24 0:31 /a\\040b /mnt/my\\040cg\\134x rw - cgroup cgroup rw,memory\n"
        "garbage line\n"
        "37 24 0:32 / /mnt/x rw - tmpfs tmpfs rw\n"
    )
    a, b = _parse.parse_mountinfo(text)
    assert (a.mount_point, a.version, a.root) == ("/sys/fs/cgroup", 2, "/")
    assert (b.mount_point, b.root) == ("/mnt/my cg\\x", "/a b")


def test_proc_cgroup_v1_and_v2_lines() -> None:
    v1, v2 = _parse.parse_proc_cgroup(HYBRID_CGROUP + "3:cpu,cpuacct:/a:b\n")
    assert v1["memory"] == "/process_api/abc" and v1["freezer"] == "/"
    assert v1["cpuacct"] == "/a:b" and v1["name=systemd"] == "/"
    assert v2 == "/"
    v1, v2 = _parse.parse_proc_cgroup(V2_CGROUP)
    assert v1 == {} and v2 is not None and v2.endswith("run-u7.scope")


@pytest.mark.parametrize(
    ("mount_root", "path", "expected"),
    [
        ("/", "/", "/m"),
        ("/", "/a/b", "/m/a/b"),
        ("/docker/f00d", "/docker/f00d", "/m"),
        ("/docker/f00d", "/docker/f00d/x", "/m/x"),
        ("/docker/f00d", "/docker/f00dx", None),  # a sibling whose name starts the same
        ("/docker/f00d", "/other", None),
        ("/", "/../a", None),  # a cgroup outside our cgroup namespace
        ("/", "relative", None),
    ],
)
def test_dir_in_mount(mount_root: str, path: str, expected: str | None) -> None:
    m = _parse.Mount("/m", mount_root, 1, frozenset({"memory"}))
    assert _parse.dir_in_mount(m, path) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),
        ("9223372036854771712\n", None),  # v1's "unlimited"
        ("1073741824\n", GiB),
        ("0", 0),
        ("", None),
    ],
)
def test_parse_limit(text: str, expected: int | None) -> None:
    assert _parse.parse_limit(text) == expected


def test_flat_keyed_skips_what_is_not_a_number() -> None:
    text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\nweird\nname text\n"
    assert _parse.parse_flat_keyed(text) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}


def test_memory_stat_v1_counts_anon_shmem_swap_not_cache() -> None:
    s = _parse.memory_stat_v1(V1_STAT)
    # total_ keys (the group and its children); rss already includes rss_huge
    assert s.anon_bytes == 70 * MiB and s.shmem_bytes == 32 * MiB and s.swap_bytes == 8192
    assert s.file_bytes == 100 * MiB - 32 * MiB  # v1 cache includes shmem
    assert s.counted_bytes == 70 * MiB + 32 * MiB + 8192
    assert s.inactive_file_bytes == 48 * MiB


def test_memory_stat_v2_takes_swap_from_swap_current() -> None:
    s = _parse.memory_stat_v2(V2_STAT, "4096\n")
    assert s.anon_bytes == 70 * MiB and s.shmem_bytes == 32 * MiB and s.swap_bytes == 4096
    assert s.file_bytes == 68 * MiB  # v2 file includes shmem
    assert _parse.memory_stat_v2(V2_STAT, None).swap_bytes == 0


@given(
    agent_id=st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=_parse.MAX_AGENT_ID),
    pid=st.integers(1, 1 << 22),
    start=st.integers(0, 1 << 60),
)
def test_group_name_round_trips(agent_id: str, pid: int, start: int) -> None:
    name = cgroups.group_name(agent_id, pid, start)
    assert cgroups.parse_group_name(name) == (agent_id, pid, start)
    assert len(name) <= 255


@pytest.mark.parametrize(
    "name",
    [
        "pmrun-launcher",
        "foreign",
        "a@1",
        "a@1.",
        "a@.2",
        "a@x.2",
        "a b@1.2",
        "@1.2",
        "a@01.2",
        "a@1.2.3",
        "a@1.٣",  # a digit, but not an ASCII one
        "system.slice",
    ],
)
def test_names_pmrun_did_not_make_do_not_parse(name: str) -> None:
    assert cgroups.parse_group_name(name) is None


def test_group_name_refuses_a_bad_agent_id() -> None:
    for bad in ("", "a/b", "a@b", "x" * 201, "..\n"):
        with pytest.raises(ValueError):
            cgroups.group_name(bad, 1, 2)


def test_kernel_log_lines() -> None:
    assert _parse.kmsg_text(b"6,421,428623963,-;" + OOM_LINES[0].encode() + b"\n") == OOM_LINES[0]
    assert _parse.kmsg_text(b"4,1,2,-;hello\n SUBSYSTEM=x\n") == "hello"
    assert _parse.parse_oom_kill(OOM_LINES[0]) == (
        "/process_api/abc/pmrun/a.1@1.2",
        "/process_api/abc/pmrun/a.1@1.2",
        5829,
        "python3",
    )
    assert _parse.parse_killed_process(OOM_LINES[1]) == (5829, "python3", 204288 * 1024)
    odd = "oom-kill:constraint=CONSTRAINT_NONE,cpuset=/a,b,mems_allowed=0,task_memcg=/x,y,task=a,b,pid=7,uid=0"
    assert _parse.parse_oom_kill(odd) == ("", "/x,y", 7, "a,b")
    assert _parse.parse_oom_kill("oom-kill:garbage") is None
    assert _parse.parse_killed_process("Killed process x (y)") is None
    assert (
        _parse.parse_oom_group_kill(
            "Tasks in /a/pmrun/b@1.2 are going to be killed due to memory.oom.group set"
        )
        == "/a/pmrun/b@1.2"
    )


# -- the backstop and throttling policy ---------------------------------------------------


@pytest.mark.parametrize(
    ("max_rss", "margin"),
    [
        (100 * MiB, 32 * MiB),
        (200 * MiB, 32 * MiB),
        (GiB, 32 * MiB),
        (2 * GiB, 64 * MiB),
        (8 * GiB, 256 * MiB),
    ],
)
def test_backstop_margin(max_rss: int, margin: int) -> None:
    assert backstop_margin_bytes(max_rss) == margin
    assert kernel_limit_bytes(max_rss) == max_rss + margin


@given(st.integers(1, 1 << 50))
def test_kernel_limit_is_above_max_rss_and_tight(max_rss: int) -> None:
    limit = kernel_limit_bytes(max_rss)
    assert limit - max_rss >= BACKSTOP_MIN_BYTES
    assert limit - max_rss <= max(BACKSTOP_MIN_BYTES, max_rss // 32)


def test_memory_high_levels() -> None:
    # The default: half-way between --max-rss and the kernel's limit, never at --warn-rss.
    assert memory_high_bytes("backstop", 200 * MiB, 100 * MiB) == 216 * MiB
    assert memory_high_bytes("backstop", 2 * GiB, GiB) == 2 * GiB + 32 * MiB
    assert memory_high_bytes("warn", GiB, 500 * MiB) == 500 * MiB
    assert memory_high_bytes("warn", GiB, GiB) is None  # warning at the stop: nothing to add
    assert memory_high_bytes("warn", GiB, 0) is None
    assert memory_high_bytes("max-rss", GiB, 500 * MiB) == GiB
    assert memory_high_bytes("off", GiB, 500 * MiB) is None
    with pytest.raises(ValueError):
        memory_high_bytes("sometimes", GiB, 0)


# -- a fake cgroupfs ------------------------------------------------------------------------

V2_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": "memory pids",
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0",
    "cgroup.kill": "",
    "memory.max": "max",
    "memory.high": "max",
    "memory.swap.max": "max",
    "memory.swap.current": "0",
    "memory.oom.group": "0",
    "memory.current": "0",
    "memory.peak": "0",
    "memory.stat": "anon 0\nfile 0\nshmem 0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
}
V1_MEMORY_FILES = {
    "cgroup.procs": "",
    "memory.limit_in_bytes": "9223372036854771712",
    "memory.memsw.limit_in_bytes": "9223372036854771712",
    "memory.usage_in_bytes": "0",
    "memory.max_usage_in_bytes": "0",
    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    "memory.stat": "total_rss 0\ntotal_cache 0\n",
}
V1_FREEZER_FILES = {"cgroup.procs": "", "freezer.state": "THAWED"}


class FakeKernel:
    """Gives directories made under ``root`` their interface files, and plays the kernel's
    part for the writes whose effect pmrun relies on."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root)
        self.writes: list[tuple[str, str]] = []
        self.killed: list[str] = []
        self.denied = ""  # mkdir under this directory fails with EACCES
        self._mkdir, self._rmdir = os.mkdir, os.rmdir
        self._write = _group.write_file
        monkeypatch.setattr(os, "mkdir", self.mkdir)
        monkeypatch.setattr(os, "rmdir", self.rmdir)
        monkeypatch.setattr(_group, "write_file", self.write_file)

    def _files_for(self, path: str) -> dict[str, str]:
        inside = path[len(self.root) :]
        if inside.startswith("/sys/fs/cgroup/memory"):
            return V1_MEMORY_FILES
        if inside.startswith("/sys/fs/cgroup/freezer"):
            return V1_FREEZER_FILES
        return V2_FILES

    def populate(self, path: str | Path, **extra: str) -> None:
        path = str(path)
        os.makedirs(path, exist_ok=True)
        files = dict(self._files_for(path))
        files.update({k.replace("__", "."): v for k, v in extra.items()})
        for name, text in files.items():
            with open(os.path.join(path, name), "w") as f:
                f.write(text)

    def mkdir(self, path: str | bytes, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        path = os.fsdecode(path)
        if self.denied and path.startswith(self.denied + "/"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        self._mkdir(path, mode)
        if path.startswith(self.root + "/sys/"):
            self.populate(path)

    def rmdir(self, path: str | bytes, *, dir_fd: int | None = None) -> None:
        path = os.fsdecode(path)
        if path.startswith(self.root + "/sys/") and os.path.isdir(path):
            entries = os.listdir(path)
            if any(os.path.isdir(os.path.join(path, e)) for e in entries):
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
            if open(os.path.join(path, "cgroup.procs")).read().split():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
            for e in entries:
                os.unlink(os.path.join(path, e))
        self._rmdir(path)

    def read(self, path: str | Path) -> str:
        return Path(path).read_text()

    def write_file(self, path: str, text: str) -> None:
        self.writes.append((path, text))
        d, name = os.path.split(path)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if name == "cgroup.subtree_control" and text.startswith("+"):
            procs = self.read(os.path.join(d, "cgroup.procs")).split()
            if procs and d != self.root + "/sys/fs/cgroup":  # the no-internal-process rule
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
            now = self.read(path).split()
            text = " ".join([*now, text[1:]])
        elif name == "cgroup.procs":
            pid = text.strip()
            # a pid moves: it leaves every sibling and parent group in the fake tree
            for parent in (os.path.dirname(d), os.path.dirname(os.path.dirname(d))):
                procs_file = os.path.join(parent, "cgroup.procs")
                if os.path.exists(procs_file):
                    left = [p for p in self.read(procs_file).split() if p != pid]
                    Path(procs_file).write_text("\n".join(left))
            text = "\n".join([*self.read(path).split(), pid])
        elif name == "cgroup.kill":
            self.killed.append(d)
            Path(d, "cgroup.procs").write_text("")
            return
        Path(path).write_text(text)


def make_tree(
    tmp_path: Path, mountinfo: str, proc_cgroup: str, *, pid_start: int = 4242
) -> tuple[str, str]:
    """A fake /proc (this process's mountinfo, cgroup and stat) and an empty root."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "self" / "cgroup").write_text(proc_cgroup)
    me = proc / str(os.getpid())
    me.mkdir()
    fields = ["S"] + ["0"] * 18 + [str(pid_start)] + ["0"] * 10
    (me / "stat").write_text(f"{os.getpid()} (pytest) {' '.join(fields)}\n")
    (proc / "meminfo").write_text(f"MemTotal: {64 * GiB // 1024} kB\n")
    root = tmp_path / "root"
    root.mkdir()
    return str(proc), str(root)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return FakeKernel(tmp_path / "root", monkeypatch)


def add_process(proc: str, pid: int, start: int) -> None:
    d = Path(proc, str(pid))
    d.mkdir()
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} (pmrun) {' '.join(fields)}\n")


# -- detection -------------------------------------------------------------------------------


def test_detect_v1_on_a_hybrid_machine(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, HYBRID_MOUNTINFO, HYBRID_CGROUP)
    layout = cgroups.detect(proc, root)
    assert layout.version == 1
    assert layout.memory_dir == root + "/sys/fs/cgroup/memory/process_api/abc"
    assert layout.freezer_dir == root + "/sys/fs/cgroup/freezer"
    assert layout.memory_parent == root + "/sys/fs/cgroup/memory/process_api/abc/pmrun"
    assert layout.freezer_parent == root + "/sys/fs/cgroup/freezer/pmrun"
    assert layout.parent_path == "/process_api/abc/pmrun"


def test_detect_v1_in_a_container_without_cgroup_namespace(tmp_path: Path) -> None:
    proc, root = make_tree(tmp_path, DOCKER_V1_MOUNTINFO, DOCKER_V1_CGROUP)
    layout = cgroups.detect(proc, root)
    assert layout.memory_dir == root + "/sys/fs/cgroup/memory"
    assert layout.freezer_dir is None
    assert layout.parent_path == "/docker/f00d/pmrun"


def test_detect_v2_delegated_scope(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, V2_MOUNTINFO, V2_CGROUP)
    scope = root + "/sys/fs/cgroup" + V2_CGROUP[3:].strip()
    kernel.populate(root + "/sys/fs/cgroup")
    kernel.populate(scope)
    layout = cgroups.detect(proc, root)
    assert (layout.version, layout.memory_dir) == (2, scope)
    assert layout.memory_parent == scope + "/pmrun"


def test_detect_v2_without_memory_says_why(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, V2_MOUNTINFO, "0::/a\n")
    kernel.populate(root + "/sys/fs/cgroup")
    kernel.populate(root + "/sys/fs/cgroup/a", cgroup__controllers="pids")
    with pytest.raises(CgroupError, match="not delegated to .*/a"):
        cgroups.detect(proc, root)
    Path(root, "sys/fs/cgroup/cgroup.controllers").write_text("cpu io")
    with pytest.raises(CgroupError, match="has no memory controller"):
        cgroups.detect(proc, root)


def test_detect_without_any_memory_controller(tmp_path: Path) -> None:
    no_memory = "\n".join(
        line
        for line in HYBRID_MOUNTINFO.splitlines()
        if "memory" not in line and "cgroup2" not in line
    )
    proc, root = make_tree(tmp_path, no_memory, "8:pids:/\n")
    with pytest.raises(CgroupError, match="no cgroup memory controller"):
        cgroups.detect(proc, root)
    Path(proc, "self", "cgroup").write_text(HYBRID_CGROUP)
    with pytest.raises(CgroupError, match="v1 memory controller is not mounted"):
        cgroups.detect(proc, root)


def test_detect_a_group_outside_the_mount(tmp_path: Path) -> None:
    proc, root = make_tree(tmp_path, DOCKER_V1_MOUNTINFO, "11:memory:/elsewhere\n")
    with pytest.raises(CgroupError, match="not visible"):
        cgroups.detect(proc, root)


def test_a_pmrun_in_its_launcher_leaf_uses_the_group_above(
    tmp_path: Path, kernel: FakeKernel
) -> None:
    proc, root = make_tree(tmp_path, V2_MOUNTINFO, "0::/app.scope/pmrun-launcher\n")
    kernel.populate(root + "/sys/fs/cgroup")
    kernel.populate(root + "/sys/fs/cgroup/app.scope/pmrun-launcher")
    layout = cgroups.detect(proc, root)
    assert layout.memory_parent == root + "/sys/fs/cgroup/app.scope/pmrun"
    assert layout.parent_path == "/app.scope/pmrun"


# -- v2 file handling -------------------------------------------------------------------------


def v2_tree(tmp_path: Path, kernel: FakeKernel, scope_procs: str = "") -> tuple[str, str, str]:
    proc, root = make_tree(tmp_path, V2_MOUNTINFO, "0::/app.scope\n")
    kernel.populate(root + "/sys/fs/cgroup")
    scope = root + "/sys/fs/cgroup/app.scope"
    kernel.populate(scope, cgroup__procs=scope_procs)
    return proc, root, scope


def test_v2_group_is_created_limited_read_killed_and_removed(
    tmp_path: Path, kernel: FakeKernel
) -> None:
    proc, root, scope = v2_tree(tmp_path, kernel)
    layout = cgroups.detect(proc, root)
    group = cgroups.create_group(layout, "a.1@1.2")
    assert isinstance(group, cgroups.V2Group)
    assert group.memory_dir == scope + "/pmrun/a.1@1.2"
    assert group.path == "/app.scope/pmrun/a.1@1.2"
    assert group.join_files == (os.fsencode(scope + "/pmrun/a.1@1.2/cgroup.procs"),)
    # the memory controller reaches the new group: enabled in the scope and the parent
    assert "memory" in kernel.read(scope + "/cgroup.subtree_control").split()
    assert "memory" in kernel.read(scope + "/pmrun/cgroup.subtree_control").split()

    group.set_limits(232 * MiB, 100 * MiB)
    d = Path(group.memory_dir)
    assert (d / "memory.max").read_text() == str(232 * MiB)
    assert (d / "memory.high").read_text() == str(100 * MiB)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "memory.oom.group").read_text() == "1"
    assert group.limit_bytes() == 232 * MiB
    group.set_limits(232 * MiB, None)
    assert (d / "memory.high").read_text() == "max"

    (d / "memory.stat").write_text(V2_STAT)
    (d / "memory.swap.current").write_text("4096\n")
    (d / "memory.current").write_text(str(180 * MiB))
    (d / "memory.peak").write_text(str(200 * MiB))
    (d / "memory.events").write_text("low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\n")
    assert group.memory_stat().counted_bytes == 70 * MiB + 32 * MiB + 4096
    assert (group.usage_bytes(), group.peak_bytes(), group.oom_kills()) == (180 * MiB, 200 * MiB, 1)
    (d / "memory.peak").unlink()  # before Linux 5.19
    assert group.peak_bytes() is None

    (d / "cgroup.procs").write_text("101\n102\n")
    assert group.pids() == [101, 102]
    reaped: list[int] = []
    assert group.kill(lambda: reaped.append(1)) == 2
    assert kernel.killed == [group.memory_dir] and reaped
    group.remove()
    assert not os.path.exists(scope + "/pmrun")  # the empty parent went too
    assert os.path.isdir(scope)


def test_v2_a_delegated_group_with_processes_moves_them_to_a_leaf(
    tmp_path: Path, kernel: FakeKernel
) -> None:
    # `systemd-run --user --scope -p Delegate=yes pmrun ...`: pmrun (and the coordinator it
    # started) sit in the scope, which therefore cannot give memory to children.
    proc, root, scope = v2_tree(tmp_path, kernel, scope_procs="500\n501\n")
    layout = cgroups.detect(proc, root)
    group = cgroups.create_group(layout, "a.1@1.2")
    assert kernel.read(scope + "/cgroup.procs").split() == []
    assert kernel.read(scope + "/pmrun-launcher/cgroup.procs").split() == ["500", "501"]
    assert "memory" in kernel.read(scope + "/cgroup.subtree_control").split()
    assert os.path.isdir(group.memory_dir)
    group.remove()


def test_v2_a_group_that_cannot_be_made_says_where(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root, scope = v2_tree(tmp_path, kernel)
    kernel.denied = scope  # e.g. nobody under root's group
    with pytest.raises(
        CgroupError, match=f"cannot create a cgroup under {scope}/pmrun: Permission"
    ):
        cgroups.create_group(cgroups.detect(proc, root), "a.1@1.2")


def test_v2_without_cgroup_kill_freezes_and_kills_each(
    tmp_path: Path, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, root, scope = v2_tree(tmp_path, kernel)
    group = cgroups.create_group(cgroups.detect(proc, root), "a.1@1.2")
    d = Path(group.memory_dir)
    (d / "cgroup.kill").unlink()  # before Linux 5.14
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    (d / "cgroup.procs").write_text("101\n")
    sent: list[tuple[int, int]] = []

    def fake_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        (d / "cgroup.procs").write_text("")

    monkeypatch.setattr(_group.os, "kill", fake_kill)
    assert group.kill(lambda: None) == 1
    assert sent == [(101, 9)]
    freezes = [t for p, t in kernel.writes if p.endswith("cgroup.freeze")]
    assert freezes == ["1", "0"]  # frozen for the listing, thawed for the kill to land
    group.remove()


# -- v1 file handling -------------------------------------------------------------------------


def test_v1_group_in_memory_and_freezer(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, HYBRID_MOUNTINFO, HYBRID_CGROUP)
    kernel.populate(root + "/sys/fs/cgroup/memory/process_api/abc")
    kernel.populate(root + "/sys/fs/cgroup/freezer")
    layout = cgroups.detect(proc, root)
    group = cgroups.create_group(layout, "a.1@1.2")
    assert isinstance(group, cgroups.V1Group)
    assert group.dirs == (
        root + "/sys/fs/cgroup/memory/process_api/abc/pmrun/a.1@1.2",
        root + "/sys/fs/cgroup/freezer/pmrun/a.1@1.2",
    )
    group.set_limits(232 * MiB, 100 * MiB)
    d = Path(group.memory_dir)
    assert (d / "memory.limit_in_bytes").read_text() == str(232 * MiB)
    assert (d / "memory.memsw.limit_in_bytes").read_text() == str(232 * MiB)
    (d / "memory.stat").write_text(V1_STAT)
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert group.memory_stat().counted_bytes == 70 * MiB + 32 * MiB + 8192
    assert group.oom_kills() == 2
    assert cgroups.open_group(layout, "a.1@1.2").dirs == group.dirs
    group.remove()
    assert not os.path.exists(root + "/sys/fs/cgroup/freezer/pmrun")


# -- orphans ----------------------------------------------------------------------------------


def test_orphans_are_groups_whose_launcher_is_gone(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, HYBRID_MOUNTINFO, HYBRID_CGROUP)
    kernel.populate(root + "/sys/fs/cgroup/memory/process_api/abc")
    kernel.populate(root + "/sys/fs/cgroup/freezer")
    layout = cgroups.detect(proc, root)
    add_process(proc, 700, 5000)
    add_process(proc, 701, 9999)  # pid 701 was reused by a process started later
    for name in ("alive.700@700.5000", "dead.9@9.1", "reused.701@701.5000"):
        cgroups.create_group(layout, name)
    parent = Path(layout.memory_parent)
    kernel.populate(parent / "foreign")  # not a name pmrun makes: never touched
    kernel.populate(parent / "pmrun-launcher")
    kernel.populate(Path(layout.freezer_parent or "") / "halfmade.8@8.1")  # died between mkdirs

    found = sorted(o.agent_id for o in cgroups.find_orphans(layout, proc))
    assert found == ["dead.9", "reused.701"]
    thorough = sorted(o.agent_id for o in cgroups.find_orphans(layout, proc, thorough=True))
    assert thorough == ["dead.9", "halfmade.8", "reused.701"]

    removed = cgroups.cleanup_orphans(layout, proc=proc, thorough=True)
    assert sorted(os.path.basename(r) for r in removed) == [
        "dead.9@9.1",
        "halfmade.8@8.1",
        "reused.701@701.5000",
    ]
    left = {e for e in os.listdir(parent) if os.path.isdir(parent / e)}
    assert left == {"alive.700@700.5000", "foreign", "pmrun-launcher"}
    assert not os.path.exists(Path(layout.freezer_parent or "") / "dead.9@9.1")
    assert os.path.isdir(Path(layout.freezer_parent or "") / "alive.700@700.5000")


def test_cleanup_orphans_without_cgroups_is_nothing_to_do(tmp_path: Path) -> None:
    proc, root = make_tree(tmp_path, "", "")
    assert cgroups.cleanup_orphans(proc=proc, root=root) == []


# -- container awareness ----------------------------------------------------------------------


def test_v1_container_limit_is_the_tightest_ancestor(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, HYBRID_MOUNTINFO, HYBRID_CGROUP)
    mem = root + "/sys/fs/cgroup/memory"
    kernel.populate(mem)
    kernel.populate(mem + "/process_api", memory__limit_in_bytes=str(4 * GiB))
    kernel.populate(
        mem + "/process_api/abc",
        memory__usage_in_bytes=str(3 * GiB),
        memory__stat=f"hierarchical_memory_limit {4 * GiB}\ntotal_inactive_file {GiB}\n",
    )
    Path(mem, "process_api", "memory.usage_in_bytes").write_text(str(3 * GiB))
    Path(mem, "process_api", "memory.stat").write_text(f"total_inactive_file {GiB}\n")
    found = cgroups.container_memory(proc, root)
    assert found is not None
    assert found.limit_bytes == 4 * GiB
    assert (found.usage_bytes, found.working_set_bytes) == (3 * GiB, 2 * GiB)
    assert found.source == f"cgroup v1 {mem}/process_api"
    assert cgroups.container_memory_limit(proc, root) == 4 * GiB
    assert cgroups.effective_total_memory(proc, root) == 4 * GiB  # MemTotal is 64 GiB


def test_v1_container_limit_hidden_above_the_mount(tmp_path: Path, kernel: FakeKernel) -> None:
    # Docker without a cgroup namespace: the limit is on /docker/f00d, which is the
    # mount's root; hierarchical_memory_limit reports it.
    proc, root = make_tree(tmp_path, DOCKER_V1_MOUNTINFO, DOCKER_V1_CGROUP)
    kernel.populate(
        root + "/sys/fs/cgroup/memory",
        memory__stat=f"hierarchical_memory_limit {GiB}\n",
    )
    assert cgroups.container_memory_limit(proc, root) == GiB


def test_v2_pod_limit_found_walking_up(tmp_path: Path, kernel: FakeKernel) -> None:
    # A Kubernetes pod: the limit is on the pod's group, the container's group is below.
    proc, root = make_tree(tmp_path, V2_MOUNTINFO, "0::/kubepods/pod1/ctr\n")
    cg = root + "/sys/fs/cgroup"
    kernel.populate(cg)
    kernel.populate(cg + "/kubepods")
    kernel.populate(
        cg + "/kubepods/pod1",
        memory__max=str(4 * GiB),
        memory__current=str(GiB),
        memory__stat=f"anon {GiB // 2}\ninactive_file {GiB // 4}\n",
    )
    kernel.populate(cg + "/kubepods/pod1/ctr", memory__max="max")
    Path(cg, "memory.max").unlink()  # the root group has no limit file
    found = cgroups.container_memory(proc, root)
    assert found is not None and found.limit_bytes == 4 * GiB
    assert found.working_set_bytes == GiB - GiB // 4
    assert cgroups.effective_total_memory(proc, root) == 4 * GiB


def test_no_limit_means_memtotal(tmp_path: Path, kernel: FakeKernel) -> None:
    proc, root = make_tree(tmp_path, V2_MOUNTINFO, "0::/a\n")
    kernel.populate(root + "/sys/fs/cgroup")
    kernel.populate(root + "/sys/fs/cgroup/a")
    assert cgroups.container_memory_limit(proc, root) is None
    assert cgroups.effective_total_memory(proc, root) == 64 * GiB
    # a limit above MemTotal binds nothing
    Path(root, "sys/fs/cgroup/a/memory.max").write_text(str(128 * GiB))
    assert cgroups.effective_total_memory(proc, root) == 64 * GiB
    # and without cgroups at all
    proc2, root2 = make_tree(tmp_path / "none", "", "")
    assert cgroups.effective_total_memory(proc2, root2) == 64 * GiB


# -- the kernel log -------------------------------------------------------------------------------


def test_oom_log_names_the_victim_of_its_group_only(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_text("6,1,1,-;before we started\n")
    oom = cgroups.OomLog("/process_api/abc/pmrun/a.1@1.2", kmsg=str(log))
    assert oom.readable
    assert oom.update(0) == []
    other = OOM_LINES[0].replace("a.1@1.2", "b.2@2.3").replace("5829", "6000")
    with open(log, "a") as f:
        for i, line in enumerate([other, OOM_LINES[0], OOM_LINES[1]]):
            f.write(f"6,{i + 2},100,-;{line}\n SUBSYSTEM=memory\n")
    (kill,) = oom.update(1)
    assert (kill.pid, kill.comm, kill.anon_rss_bytes) == (5829, "python3", 204288 * 1024)
    # a kill the log did not show (e.g. records lost) is still counted
    kills = oom.update(2)
    assert len(kills) == 2 and kills[1].pid is None
    oom.close()


def test_oom_log_group_kill_names_every_task(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_text("")
    oom = cgroups.OomLog("/s/pmrun/a.1@1.2", kmsg=str(log))
    with open(log, "a") as f:
        f.write(
            "6,1,1,-;oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/s/pmrun/a.1@1.2,"
            "task_memcg=/s/pmrun/a.1@1.2,task=node,pid=10,uid=1000\n"
        )
        f.write(
            "6,2,1,-;Tasks in /s/pmrun/a.1@1.2 are going to be killed due to memory.oom.group set\n"
        )
        f.write(
            "3,3,1,-;Memory cgroup out of memory: Killed process 10 (node) total-vm:1kB, anon-rss:8kB\n"
        )
        f.write(
            "3,4,1,-;Memory cgroup out of memory: Killed process 11 (sh) total-vm:1kB, anon-rss:4kB\n"
        )
    kills = oom.update(2)
    assert [(k.pid, k.comm, k.anon_rss_bytes) for k in kills] == [
        (10, "node", 8192),
        (11, "sh", 4096),
    ]
    oom.close()


def test_oom_log_without_access(tmp_path: Path) -> None:
    oom = cgroups.OomLog("/x", kmsg=str(tmp_path / "missing"))
    assert not oom.readable
    assert [k.pid for k in oom.update(1)] == [None]
