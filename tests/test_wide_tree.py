"""Resources that scale with the tree: a wide tree under a small fd limit is still supervised.

pmrun keeps /proc files open between samples; it must never need more fds than it
may have (it raises its own soft RLIMIT_NOFILE to the hard limit, gives the command
its original, and keeps at most a capped number open), and an EMFILE is a file it
reads the slow way or a process it skips this once, never a launcher that dies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import backends_here
from pmrun import _procfs

PMRUN = str(Path(sys.executable).parent / "pmrun")
WIDTH = 600

# Forks WIDTH children that sleep (so the tree is wide, not deep), then grows its own
# anonymous memory past any limit; prints the fd limit it was given.
SOURCE = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    printf("nofile %lu %lu\n", (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) { perror("fork"); return 2; }
    }
    sleep(1);  /* a few samples of the wide tree before it grows */
    for (int i = 0; i < 400; i++) {
        char *b = malloc(1 << 20);
        memset(b, 1, 1 << 20);
        usleep(20000);  /* 50 MiB/s: an agent-like rate pmrun stops before the kernel */
    }
    printf("not stopped\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def forker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("wide")
    (d / "wide.c").write_text(SOURCE)
    subprocess.run([gcc, "-O1", str(d / "wide.c"), "-o", str(d / "wide")], check=True)
    return d / "wide"


@pytest.mark.parametrize("limit", ["-Sn 256", "-n 256"], ids=["soft-256", "hard-256"])
@pytest.mark.parametrize("backend", backends_here())
def test_a_wide_tree_under_a_small_fd_limit_is_stopped_at_its_limit(
    forker: Path, tmp_path: Path, backend: str, limit: str
) -> None:
    report = tmp_path / "r.json"
    # The command's parent is pmrun's keeper: its fd limit shows what pmrun gave itself.
    command = f"grep 'Max open files' /proc/\\$PPID/limits; exec {forker} {WIDTH}"
    script = (
        f"ulimit {limit} && exec {PMRUN} --no-coordinator --backend {backend} --max-rss 300M"
        f' --grace 1 --report {report} -- sh -c "{command}"'
    )
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=180)
    assert r.returncode == 137, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    data = json.loads(report.read_text())
    # On the cgroup backend the kernel may get there first: 600 processes' own kernel
    # memory (page tables, stacks: ~50 MiB here) is charged to the group, not counted.
    assert data["reason"] in (("max-rss", "kernel-oom") if backend == "cgroup" else ("max-rss",))
    assert data["samples"] > 10, data
    # pmrun raised its own soft limit to the hard one; the command got the one it was given.
    keeper, command_limit = r.stdout.splitlines()[:2]
    soft, hard = keeper.split()[3:5]
    assert soft == hard, keeper
    assert command_limit == f"nofile 256 {hard}", r.stdout
    # (the conftest leak check then proves nothing of the 600 processes is left)


def test_the_reader_keeps_at_most_its_cap_of_files_open(tmp_path: Path) -> None:
    """Files past the cap are read and closed: the open count stays bounded."""
    proc = tmp_path / "proc"
    for pid in range(1, 41):
        p = proc / str(pid)
        p.mkdir(parents=True)
        (p / "statm").write_text("100 50 10 1 0 40 0\n")
    reader = _procfs.TreeReader(str(proc), max_open=16)
    try:
        for _ in range(3):
            for pid in range(1, 41):
                assert reader.statm(pid) == (100 * _procfs.PAGE_SIZE, 50 * _procfs.PAGE_SIZE)
        assert reader.open_files() == 16
    finally:
        reader.close()
    assert reader.open_files() == 0
