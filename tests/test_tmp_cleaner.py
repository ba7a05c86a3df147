"""The coordinator survives a /tmp cleaner and a SIGKILL: real daemons, real ``pmrun``
launchers, real files deleted under them. Each time, within a few seconds there is exactly
one reachable coordinator again, and every agent is in its pool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PMRUN
from coordinator_fixtures import PYTHON, Daemon, coordinator_pids
from helpers import wait_until
from pmrun.coordinator import query
from pmrun.coordinator.paths import lock_path, log_path
from pmrun.errors import PmrunError

WAIT_FOR_FILE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)"


def launch(procs, sock: str, release: Path, name: str) -> subprocess.Popen:
    return procs.popen(
        [PMRUN, "--socket", sock, "--backend", "sampling", "--name", name, "--",
         PYTHON, "-c", WAIT_FOR_FILE, str(release)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def one_pool(sock: str, names: set[str]) -> int | None:
    """The pid of the one coordinator serving ``sock`` once it has every agent in ``names``."""
    pids = coordinator_pids(sock)
    if len(pids) != 1:
        return None
    try:
        status = query.status(sock, timeout_s=1.0)
    except PmrunError:
        return None
    if status["coordinator"]["pid"] != pids[0]:
        return None
    return pids[0] if names <= {a["name"] for a in status["agents"]} else None


def finish(release: Path, *launchers: subprocess.Popen) -> None:
    release.touch()
    for proc in launchers:
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "Traceback" not in err and "warning" not in err, err


@pytest.mark.parametrize("deleted", ["socket", "socket and lock", "directory"])
def test_a_tmp_cleaner_leaves_exactly_one_reachable_pool(procs, sockdir, tmp_path, deleted):
    sock = str(sockdir / "c.sock")
    daemon = Daemon(procs, sock).start()
    release = tmp_path / "release"
    before = launch(procs, sock, release, "before")
    wait_until(lambda: "before" in daemon.agents(), 20, "the first agent registered")

    if deleted == "socket":
        os.unlink(sock)
    elif deleted == "socket and lock":
        os.unlink(sock)
        os.unlink(lock_path(sock))
    else:
        shutil.rmtree(sockdir)
    after = launch(procs, sock, release, "after")  # started while the files are gone

    pid = wait_until(lambda: one_pool(sock, {"before", "after"}), 20, "one pool, both agents")
    procs.adopt(pid)
    if deleted == "socket":  # the lock still held: the same coordinator bound its socket again
        assert pid == daemon.proc.pid
        # ... and no launcher started one that exited with "already serves"
        assert not os.path.exists(log_path(sock))
    finish(release, before, after)
    wait_until(lambda: coordinator_pids(sock) == [pid], 10, "no second coordinator left")


def test_status_finds_a_coordinator_whose_socket_was_just_deleted(
    procs,
    sockdir,
    run_pmrun,
):
    sock = str(sockdir / "c.sock")
    daemon = Daemon(procs, sock).start()
    os.unlink(sock)
    r = run_pmrun("status", "--socket", sock, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["coordinator"]["pid"] == daemon.proc.pid


def test_launchers_start_exactly_one_coordinator_after_a_sigkill(procs, sockdir, tmp_path):
    sock = str(sockdir / "c.sock")
    daemon = Daemon(procs, sock).start()
    release = tmp_path / "release"
    names = {f"a{i}" for i in range(4)}
    launchers = [launch(procs, sock, release, name) for name in sorted(names)]
    wait_until(lambda: names <= set(daemon.agents()), 30, "every agent registered")
    daemon.kill()  # SIGKILL: a stale socket is left, nobody restarts it

    pid = wait_until(lambda: one_pool(sock, names), 30, "a new coordinator with every agent")
    procs.adopt(pid)
    assert pid != daemon.proc.pid
    # The daemon a launcher started logs to coordinator.log: deleted, it comes back.
    log = log_path(sock)
    wait_until(lambda: os.path.exists(log), 10, "the new daemon's log")
    os.unlink(log)
    wait_until(lambda: os.path.exists(log), 10, "coordinator.log made again")
    finish(release, *launchers)
    assert coordinator_pids(sock) == [pid]
