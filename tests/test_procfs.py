"""The /proc reader: parsing on a fake tree, and the real tree of real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmrun import _procfs


def make_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    p = proc / "42"
    (p / "task" / "42").mkdir(parents=True)
    (p / "statm").write_text("2560 1024 100 1 0 500 0\n")
    (p / "stat").write_text(
        "42 (my (odd) name) S 1 42 42 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 777 4096 3\n"
    )
    (p / "comm").write_text("my (odd) name\n")
    (p / "task" / "42" / "children").write_text("43 44 ")
    (p / "smaps_rollup").write_text(
        "00400000-7ffc [rollup]\nRss: 4096 kB\nPss: 2048 kB\nPrivate_Clean: 100 kB\n"
        "Private_Dirty: 900 kB\nSwap: 10 kB\n"
    )
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 250 kB\nHugePages_Total: 0\n")
    (proc / "pressure").mkdir()
    (proc / "pressure" / "memory").write_text(
        "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    return proc


def test_parsing_a_fake_proc(tmp_path: Path) -> None:
    proc = str(make_proc(tmp_path))
    assert _procfs.statm(42, proc) == (2560 * _procfs.PAGE_SIZE, 1024 * _procfs.PAGE_SIZE)
    st = _procfs.stat(42, proc)
    assert (st.pid, st.comm, st.state, st.ppid, st.pgrp, st.session) == (
        42, "my (odd) name", "S", 1, 42, 42,
    )  # fmt: skip
    assert (st.threads, st.start_time, st.vsize_bytes) == (1, 777, 4096)
    assert st.rss_bytes == 3 * _procfs.PAGE_SIZE and st.running
    assert _procfs.start_time(42, proc) == 777
    assert _procfs.children(42, proc) == [43, 44]
    assert _procfs.uss_pss(42, proc) == (1000 * 1024, 2048 * 1024, 10 * 1024)
    assert _procfs.meminfo(proc)["MemAvailable"] == 250 * 1024
    assert _procfs.meminfo(proc)["HugePages_Total"] == 0
    psi = _procfs.memory_pressure(proc)
    assert psi is not None and psi["some"].avg10 == 1.5 and psi["some"].total_us == 12345


def test_vanished_process_is_process_gone(tmp_path: Path) -> None:
    proc = str(make_proc(tmp_path))
    with pytest.raises(_procfs.ProcessGone):
        _procfs.statm(99, proc)
    with pytest.raises(_procfs.ProcessGone):
        _procfs.children(99, proc)
    assert _procfs.memory_pressure(str(tmp_path)) is None


def test_real_tree_is_found() -> None:
    # A parent with two children, one of them with a grandchild.
    script = (
        "import subprocess, sys, time\n"
        "a = subprocess.Popen([sys.executable, '-c', 'import subprocess,sys,time; "
        'p=subprocess.Popen(["sleep","30"]); print(p.pid, flush=True); time.sleep(30)\'],'
        " stdout=subprocess.PIPE, text=True)\n"
        "b = subprocess.Popen(['sleep', '30'])\n"
        "g = a.stdout.readline().strip()\n"
        "print(a.pid, b.pid, g, flush=True)\n"
        "time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        a, b, g = (int(x) for x in p.stdout.readline().split())
        tree = _procfs.descendants([p.pid])
        assert tree[0] == p.pid
        assert {a, b, g} <= set(tree)
        assert tree.index(a) < tree.index(g)  # parents before children
        vsz, rss = _procfs.statm(p.pid)
        assert vsz > rss > 0
    finally:
        for pid in _procfs.descendants([p.pid])[::-1]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        p.wait()
        # Reap nothing else: the grandchildren were children of a and are reaped by init/a's death.


def test_real_meminfo_and_self() -> None:
    info = _procfs.meminfo()
    assert info["MemTotal"] > info["MemAvailable"] > 0
    assert _procfs.comm(os.getpid()).startswith(("python", "pytest"))


def test_tree_reader_finds_children_of_every_thread() -> None:
    """A child forked by a second thread hangs under that thread's children file."""
    script = (
        "import subprocess, threading, time\n"
        "kids = []\n"
        "def spawn():\n"
        "    kids.append(subprocess.Popen(['sleep', '30']))\n"
        "    time.sleep(30)\n"
        "threading.Thread(target=spawn, daemon=True).start()\n"
        "while not kids: time.sleep(0.01)\n"
        "print(kids[0].pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    reader = _procfs.TreeReader()
    try:
        assert p.stdout is not None
        child = int(p.stdout.readline())
        found = {pid: (vsz, rss) for pid, vsz, rss in reader.walk([p.pid])}
        assert set(found) == {p.pid, child}
        assert found[p.pid][0] == _procfs.statm(p.pid)[0]
        # Counted: anonymous (statm's resident - shared) + shmem + swap, no file pages.
        fields = [int(x) * _procfs.PAGE_SIZE for x in open(f"/proc/{p.pid}/statm").read().split()]
        assert abs(found[p.pid][1] - (fields[1] - fields[2])) < 4 << 20
        assert child in {pid for pid, _, _ in reader.walk([p.pid])}  # from the cached thread list
    finally:
        reader.close()
        for pid in _procfs.descendants([p.pid])[::-1]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        p.wait()


def stat_line(state: str = "S", flags: int = 0, start: int = 777) -> str:
    return f"42 (a) {state} 1 42 42 0 -1 {flags} 0 0 0 0 1 2 0 0 20 0 1 0 {start} 4096 3\n"


@pytest.mark.parametrize(
    ("line", "same"),
    [
        (stat_line(), True),
        (stat_line(start=778), False),  # a recycled pid
        (stat_line(state="Z"), False),
        (stat_line(state="X"), False),
        (stat_line(flags=_procfs.PF_EXITING | 0x400000), False),  # past exit(2)
        (stat_line(state="D", flags=0x400100), True),
        ("42 (a) S 1 42\n", False),  # truncated: not a process we can vouch for
        ("garbage", False),
    ],
)
def test_same_process_on_a_fake_proc(tmp_path: Path, line: str, same: bool) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text(line)
    assert _procfs.same_process(42, 777, str(tmp_path)) is same


def test_same_process_edges(tmp_path: Path) -> None:
    assert not _procfs.same_process(0, None) and not _procfs.same_process(-1, None)
    assert not _procfs.same_process(42, 777, str(tmp_path))  # gone
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text(stat_line(start=1))
    assert _procfs.same_process(42, None, str(tmp_path))  # no start time: liveness only
    (tmp_path / "43" / "stat").mkdir(parents=True)  # unreadable: the caller says what it means
    assert not _procfs.same_process(43, 777, str(tmp_path))
    assert _procfs.same_process(43, 777, str(tmp_path), unreadable=True)


def test_stat_and_same_process_on_real_processes() -> None:
    me = _procfs.stat(os.getpid())
    assert me.pid == os.getpid() and me.ppid == os.getppid() and me.state == "R"
    assert me.pgrp == os.getpgrp() and me.session == os.getsid(0) and me.running
    p = subprocess.Popen(["sleep", "60"])
    try:
        st = _procfs.stat(p.pid)
        assert st.ppid == os.getpid() and st.comm in ("sleep", "python")
        assert _procfs.same_process(p.pid, st.start_time)
        assert not _procfs.same_process(p.pid, st.start_time + 1)
        p.kill()
        deadline = time.monotonic() + 10
        while _procfs.stat(p.pid).state != "Z":  # killed, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert not _procfs.same_process(p.pid, st.start_time)
    finally:
        p.kill()
        p.wait()
    assert not _procfs.same_process(p.pid, st.start_time)
