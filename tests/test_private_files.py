"""pmrun's own files next to the socket (the lock, ``coordinator.log``, ``events.jsonl``) are
never opened through a symlink, never block on a planted FIFO, and are never another
user's: real ``pmrun`` processes against files planted in the socket's directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import PMRUN
from coordinator_fixtures import Daemon, coordinator_pids
from helpers import NOBODY, wait_until
from pmrun.coordinator import query
from pmrun.coordinator.paths import lock_path, log_path
from pmrun.errors import SocketSecurityError


def plant(kind: str, path: str, target: Path) -> None:
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "FIFO":
        os.mkfifo(path, 0o600)
    else:  # another user's file, writable by us (as root) or by anyone
        Path(path).write_text("theirs\n")
        os.chmod(path, 0o666)
        os.chown(path, NOBODY, NOBODY)


KINDS = ["symlink", "FIFO", pytest.param("other uid", marks=pytest.mark.skipif(
    os.geteuid() != 0, reason="chown to another uid needs root"))]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["coordinator.log", "lock"])
def test_a_launcher_never_writes_through_a_planted_log_or_lock(sockdir, tmp_path, kind, which):
    sock = str(sockdir / "c.sock")
    planted = log_path(sock) if which == "coordinator.log" else lock_path(sock)
    target = tmp_path / "target"
    plant(kind, planted, target)
    before = os.lstat(planted)
    r = subprocess.run(
        [PMRUN, "--socket", sock, "--", "sh", "-c", "echo ran"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == "ran\n"  # the command ran, nothing hung
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 1, r.stderr
    assert not target.exists()  # nothing written through the symlink
    after = os.lstat(planted)
    assert (after.st_ino, after.st_size, after.st_uid) == (
        before.st_ino, before.st_size, before.st_uid,
    )  # fmt: skip
    for pid in coordinator_pids(sock):  # a coordinator refused its lock must not run
        os.kill(pid, 9)
        pytest.fail(f"a coordinator runs on a planted {which}")


@pytest.mark.parametrize("kind", KINDS)
def test_the_coordinator_serves_past_a_planted_event_log_and_writes_nothing_to_it(
    procs,
    sockdir,
    tmp_path,
    kind,
):
    sock = str(sockdir / "c.sock")
    events = str(sockdir / "events.jsonl")
    target = tmp_path / "target"
    plant(kind, events, target)
    before = os.lstat(events)
    d = Daemon(procs, sock).start()  # a FIFO without a reader would hang it at once
    assert query.status(sock)["coordinator"]["pid"] == d.proc.pid
    assert not target.exists()
    after = os.lstat(events)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    wait_until(lambda: "cannot write the event log" in d.stderr(), 10, "the refusal is logged")


def test_open_private_refuses_what_is_not_ours(tmp_path):
    from pmrun.coordinator.paths import open_private

    mine = tmp_path / "mine"
    fd = open_private(str(mine), os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert mine.stat().st_mode & 0o777 == 0o600
    os.symlink(mine, tmp_path / "link")
    with pytest.raises(SocketSecurityError, match="symlink"):
        open_private(str(tmp_path / "link"), os.O_WRONLY)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SocketSecurityError, match="not a regular file"):
        open_private(str(tmp_path / "fifo"), os.O_RDWR | os.O_CREAT)
    with pytest.raises(OSError):  # no reader: ENXIO at once rather than blocking
        open_private(str(tmp_path / "fifo"), os.O_WRONLY, devices=True)
    os.close(open_private("/dev/null", os.O_WRONLY, devices=True))  # a device the user named
