"""One meaning of --max-rss on every backend: anonymous + shared memory + swap.

Pages the kernel can drop (a read-only mapping of a file) are not the agent's
memory, and pages a fork shares are counted once, as the cgroup backend counts
them; memory the agent really allocates past the limit is stopped on both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import backends_here
from pmrun import _procfs

PYTHON = sys.executable
BASE = ["--no-coordinator", "--grace", "1"]
REPO = Path(__file__).resolve().parent.parent


BACKENDS = backends_here()

# Maps a file read-only, touches every page, holds it (so samples see it), and exits 0.
MMAP_FILE = r"""
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
total = sum(m[i] for i in range(0, len(m), 4096))
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    total += sum(m[i] for i in range(0, len(m), 1 << 20))
    time.sleep(0.05)
print("done")
"""

# A parent with MB of touched anonymous memory forks N children that share it (copy on
# write) and hold it; with write=1 each child writes its copy, which is then its own.
FORK_SHARED = r"""
import os, sys, time
mb, n, write, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
data = bytearray(b"x") * (mb << 20)
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        if write:
            for i in range(0, len(data), 4096):
                data[i] = 1
        time.sleep(hold)
        os._exit(0)
    kids.append(pid)
ok = all(os.waitpid(k, 0)[1] == 0 for k in kids)
print("done" if ok else "child failed")
"""

ALLOC = r"""
import time
chunks = []
for _ in range(100):
    chunks.append(bytearray(b"x") * (10 << 20))
    time.sleep(0.02)
print("not stopped")
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 256 MiB file on a real disk (tmpfs pages would be shared memory, counted)."""
    d = tmp_path_factory.mktemp("mmap")
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(d)], capture_output=True, text=True)
    if "tmpfs" in fs.stdout:  # the repo's .venv is on the disk the checkout is on
        d = Path(tempfile.mkdtemp(prefix="mmap-", dir=REPO / ".venv"))
    path = d / "big.bin"
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(256):
            f.write(block)
    yield path
    shutil.rmtree(d, ignore_errors=True)


def _same_measure(process_bytes: int, tree_bytes: int) -> bool:
    """A process's figure is within its tree's, up to the kernel's counter lag.

    The cgroup's statistics and a process's RSS counters are kept per CPU and folded
    in batches, read a moment apart: they may differ by a few hundred KiB. Counted in
    different measures they differ by the binary's file pages (tens of MiB).
    """
    return process_bytes <= tree_bytes + (2 << 20)


def _run(run_pmrun, tmp_path: Path, backend: str, max_rss: str, *cmd: str) -> tuple:
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE, "--backend", backend, "--max-rss", max_rss, "--report", str(report), "--", *cmd
    )
    return r, json.loads(report.read_text())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_read_only_mapped_file_is_not_the_agents_memory(
    run_pmrun, tmp_path: Path, big_file: Path, backend: str
) -> None:
    r, data = _run(
        run_pmrun, tmp_path, backend, "128M", PYTHON, "-c", MMAP_FILE, str(big_file), "1.5"
    )
    assert (r.returncode, r.stdout) == (0, "done\n"), (r.stderr, data)
    assert data["reason"] == "exit"
    assert data["peak_rss_bytes"] < 128 << 20
    # The biggest process is named in the same measure as the tree.
    assert _same_measure(data["biggest_at_peak"]["rss_bytes"], data["peak_rss_bytes"]), data


@pytest.mark.parametrize("backend", BACKENDS)
def test_pages_shared_by_fork_are_counted_once(run_pmrun, tmp_path: Path, backend: str) -> None:
    r, data = _run(
        run_pmrun, tmp_path, backend, "250M", PYTHON, "-c", FORK_SHARED, "100", "3", "0", "2"
    )
    assert (r.returncode, r.stdout) == (0, "done\n"), (r.stderr, data)
    assert 100 << 20 <= data["peak_rss_bytes"] < 250 << 20, data


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_written_after_fork_are_stopped(run_pmrun, tmp_path: Path, backend: str) -> None:
    r, data = _run(
        run_pmrun, tmp_path, backend, "250M", PYTHON, "-c", FORK_SHARED, "100", "3", "1", "30"
    )
    assert r.returncode == 137, (r.stderr, data)
    assert data["reason"] == "max-rss"


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_memory_past_the_limit_is_stopped(
    run_pmrun, tmp_path: Path, backend: str
) -> None:
    r, data = _run(run_pmrun, tmp_path, backend, "150M", PYTHON, "-c", ALLOC)
    assert r.returncode == 137, (r.stderr, data)
    assert data["reason"] == "max-rss"
    assert "anon+shmem+swap" in r.stderr
    big = data["biggest_at_peak"]
    assert big is not None and _same_measure(big["rss_bytes"], data["peak_rss_bytes"]), data


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_measure_is_named_in_the_report(run_pmrun, tmp_path: Path, backend: str) -> None:
    _, data = _run(run_pmrun, tmp_path, backend, "1G", "true")
    assert data["backend"]["counted"] == "anon+shmem+swap"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_peak_of_a_short_command_is_seen(run_pmrun, tmp_path: Path, backend: str) -> None:
    hold = "import time; x = bytearray(b'x') * (64 << 20); time.sleep(0.05)"
    r, data = _run(run_pmrun, tmp_path, backend, "1G", PYTHON, "-c", hold)
    assert r.returncode == 0, r.stderr
    assert data["peak_rss_bytes"] >= 64 << 20, data


def test_status_counts_anon_shmem_and_swap(tmp_path: Path) -> None:
    """The per-process figure is RssAnon + RssShmem + VmSwap of /proc/PID/status."""
    proc = tmp_path / "proc"
    p = proc / "42"
    p.mkdir(parents=True)
    (p / "status").write_text(
        "Name:\tx\nState:\tS (sleeping)\nVmSize:\t  2000 kB\nVmRSS:\t 900 kB\n"
        "RssAnon:\t 300 kB\nRssFile:\t 500 kB\nRssShmem:\t 100 kB\nVmSwap:\t 20 kB\nThreads:\t1\n"
    )
    reader = _procfs.TreeReader(str(proc))
    assert reader.memory(42) == (2000 << 10, 420 << 10)
    (p / "status").write_text("Name:\tx\nState:\tZ (zombie)\nThreads:\t1\n")
    reader.close()
    with pytest.raises(_procfs.ProcessGone):
        _procfs.TreeReader(str(proc)).memory(42)


def _procs(*figures: tuple[int, int]) -> tuple:
    from pmrun.backends.base import ProcSample

    return tuple(ProcSample(pid, own, 0) for pid, own in figures)


def test_between_passes_a_process_counts_its_share_plus_its_growth() -> None:
    from pmrun.backends.sampling import SamplingBackend

    b = SamplingBackend("test")
    # No pass yet: every process counts as its own figure (an upper bound).
    assert b._tree_bytes(_procs((1, 100), (2, 100))) == 200
    # A pass found the two share 100 (50 each); growth since is counted in full...
    b._pss = {1: (100, 50), 2: (100, 50)}
    assert b._tree_bytes(_procs((1, 100), (2, 100))) == 100
    assert b._tree_bytes(_procs((1, 130), (2, 100))) == 130
    # ...a newcomer counts as its own figure, and a shrinking process never above it.
    assert b._tree_bytes(_procs((1, 100), (2, 100), (3, 40))) == 140
    assert b._tree_bytes(_procs((1, 30), (2, 100))) == 100  # min(30, 50) + 50 = 80 < 100
    # A sharer gone: the other's old share would be too small; its own figure is the floor.
    assert b._tree_bytes(_procs((1, 100))) == 100
    assert b._tree_bytes(_procs((1, 100), (3, 1))) == 100
    assert b._tree_bytes(()) == 0
