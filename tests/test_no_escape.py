"""No process of an agent's tree survives pmrun, whatever the tree and however pmrun ends.

Randomized trees (double forks, setsid, SIGTERM ignored, forks while being killed,
bounded fork storms) under every backend, ended three ways: by the memory limit, by
a signal to pmrun, and by SIGKILL of pmrun itself. Every process that ever existed
recorded its pid and start time; afterwards none of them may be alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PMRUN, PYTHON
from helpers import NOBODY, pid_alive, wait_until

TREE = str(Path(__file__).parent / "agents" / "tree.py")
SEEDS = range(4)


def backends() -> list[str]:
    out = ["sampling"]
    try:
        from pmrun.backends.cgroup import create_cgroup_backend  # noqa: F401

        out.append("cgroup")
    except ImportError:
        pass
    return out


def survivors(piddir: Path) -> tuple[int, list[int]]:
    """(processes recorded, those still alive with the same start time)."""
    alive = []
    files = [f for f in piddir.iterdir() if not f.name.startswith(".")]
    for f in files:
        pid, start = (int(x) for x in f.read_text().split())
        try:
            with open(f"/proc/{pid}/stat") as st:
                rest = st.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[19]) == start and rest[0] not in ("Z", "X"):
            alive.append(pid)
    return len(files), alive


def kill_all(piddir: Path) -> None:
    for pid in survivors(piddir)[1]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(
    backend: str, seed: int, piddir: Path, *extra: str, alloc_mb: int = 0
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [
            PMRUN,
            "--no-coordinator",
            "--backend",
            backend,
            "--grace",
            "0.3",
            *extra,
            "--",
            PYTHON,
            TREE,
            str(seed),
            str(piddir),
            str(alloc_mb),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    return p


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("how", ["limit", "signal", "sigkill"])
def test_nothing_escapes(tmp_path: Path, backend: str, how: str) -> None:
    runs, recorded, found = 0, 0, []
    for seed in SEEDS:
        piddir = tmp_path / f"{how}-{seed}"
        piddir.mkdir()
        p = None
        try:
            if how == "limit":
                p = start(backend, seed, piddir, "--max-rss", "600M", alloc_mb=700)
                assert p.wait(30) == 137
            elif how == "signal":
                p = start(backend, seed, piddir)
                p.send_signal(signal.SIGTERM)
                assert p.wait(30) != 0
            else:
                p = start(backend, seed, piddir)
                p.kill()
                p.wait(30)
            # After SIGKILL the keeper (sampling) or the group (cgroup) takes the tree down;
            # wait for that to finish, bounded, before counting.
            n, alive = survivors(piddir)
            if alive and how == "sigkill":
                wait_until(lambda d=piddir: not survivors(d)[1], timeout=10)
                n, alive = survivors(piddir)
            runs += 1
            recorded += n
            found += alive
        finally:
            if p is not None:
                p.kill()
                p.wait()
            kill_all(piddir)
    print(f"{backend}/{how}: {runs} runs, {recorded} processes, {len(found)} survivors")
    assert recorded > runs  # the trees really had processes
    assert found == []


# -- processes of another uid, and an agent that kills its keeper ----------------------

SETUID_HELPER = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
/* argv[1]: "full" takes uid 0 for real, effective and saved (as sudo does); "euid" keeps
   the caller's real uid (a plain setuid-root program). Prints its pid, then sleeps. */
int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0] == 'f' && setresuid(0, 0, 0) != 0) return 3;
    printf("%d\n", getpid());
    fflush(stdout);
    sleep(60);
    return 0;
}
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory of `nobody`'s (the test's tmp_path is root's, 0700)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pmnobody", dir="/tmp"))
    d.chmod(0o755)
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def setuid_helper(shared_dir: Path) -> str:
    import shutil

    if os.geteuid() != 0 or shutil.which("gcc") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, gcc and setpriv")
    src = shared_dir / "helper.c"
    src.write_text(SETUID_HELPER)
    exe = shared_dir / "helper"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    os.chmod(exe, 0o4755)  # setuid root
    return str(exe)


def _as_nobody(*argv: str) -> list[str]:
    # Not become_nobody(): setpriv keeps root's capabilities until its exec, so pmrun's
    # interpreter may live where nobody cannot look (a Python under /root).
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@pytest.mark.parametrize("mode", ["euid", "full"])
def test_a_process_of_another_uid_in_a_non_root_agent_does_not_crash_pmrun(
    setuid_helper: str, shared_dir: Path, mode: str
) -> None:
    """euid: killable (its real uid is ours), so killed. full: pmrun cannot stop it: it says
    so in one line and in the report, exits with the command's status, never hangs."""
    import json

    pidfile, report = shared_dir / "helper.pid", shared_dir / "r.json"
    # The helper keeps no pipe of ours open: the test reads pmrun's output to EOF.
    script = f"{setuid_helper} {mode} > {pidfile} 2>/dev/null & while [ ! -s {pidfile} ]; do sleep 0.01; done"
    r = subprocess.run(
        _as_nobody(PMRUN, "--no-coordinator", "--report", str(report), "--", "sh", "-c", script),
        cwd=shared_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    helper = int(pidfile.read_text())
    try:
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == 0, r.stderr
        data = json.loads(report.read_text())
        if mode == "euid":
            assert r.stderr == ""
            wait_until(lambda: not pid_alive(helper), 10)
        else:
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and "changed their uid" in lines[0], r.stderr
            assert f"pid {helper}" in lines[0]
            assert data["extra"]["pmrun_errors"] == [lines[0].removeprefix("pmrun: ")]
            assert pid_alive(helper)  # what cannot be guaranteed (README)
    finally:
        if pid_alive(helper):
            os.kill(helper, signal.SIGKILL)


@pytest.mark.parametrize("coordinator", [False, True], ids=["standalone", "coordinator"])
@pytest.mark.parametrize("backend", backends())
def test_agent_that_kills_its_keeper_leaves_no_daemon(
    tmp_path: Path, backend: str, coordinator: bool
) -> None:
    """pmrun is a subreaper too: the keeper's orphans come to it and are killed; a
    coordinator it started on demand (double-forked, so its child as well) is spared."""
    from coordinator_fixtures import coordinator_pids

    pidfile, sock = tmp_path / "daemon.pid", str(tmp_path / "s" / "c.sock")
    wait_coordinator = f"while [ ! -S {sock} ]; do sleep 0.01; done;" if coordinator else ""
    script = (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & {wait_coordinator}"
        f" while [ ! -s {pidfile} ]; do sleep 0.01; done; kill -9 $PPID; sleep 30"
    )
    opts = ["--socket", sock] if coordinator else ["--no-coordinator"]
    r = subprocess.run(
        [PMRUN, *opts, "--backend", backend, "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    daemon = int(pidfile.read_text())
    try:
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == -signal.SIGKILL  # the command died with its keeper
        wait_until(lambda: not pid_alive(daemon), 10)
        if coordinator:
            assert [p for p in coordinator_pids(sock) if pid_alive(p)]
    finally:
        if pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)
        for p in coordinator_pids(sock):
            os.kill(p, signal.SIGTERM)
        wait_until(lambda: not any(pid_alive(p) for p in coordinator_pids(sock)), 10)
