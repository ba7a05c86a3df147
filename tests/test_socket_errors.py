"""A socket path that cannot work, or a coordinator that cannot be reached, is said in one
line with a documented exit status: nothing is created next to a bad path, and `pmrun
status` tells "none runs" from "permission denied" and "hung"."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import PMRUN
from coordinator_fixtures import coordinator_pids


def bad_path(kind: str, d: Path) -> str:
    if kind == "/dev/null":
        return "/dev/null"
    p = d / "c.sock"
    if kind == "regular file":
        p.write_text("x")
    elif kind == "directory":
        p.mkdir()
    elif kind == "FIFO":
        os.mkfifo(p)
    elif kind == "symlink":
        (d / "real.sock").touch()
        p.symlink_to(d / "real.sock")
    return str(p)


KINDS = ["/dev/null", "regular file", "directory", "FIFO", "symlink"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_socket_path_is_refused_early_and_nothing_is_created(run_pmrun, sockdir, kind):
    path = bad_path(kind, sockdir)
    where = Path(path).parent
    before = sorted(os.listdir(where))
    launched = run_pmrun("--socket", path, "--", "sh", "-c", "echo ran")
    assert launched.returncode == 0 and launched.stdout == "ran\n"  # the command runs anyway
    assert len(launched.stderr.splitlines()) == 1 and "not a socket" in launched.stderr
    for sub, code in (("coordinator", 1), ("status", 1), ("cleanup", 1)):
        r = run_pmrun(sub, "--socket", path)
        assert r.returncode == code, (sub, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "not a socket" in r.stderr, (sub, r.stderr)
    assert sorted(os.listdir(where)) == before  # no lock, log or events file next to it
    assert not coordinator_pids(path)


class Silent:
    """A listening socket that accepts connections and never answers (a hung coordinator)."""

    def __init__(self, path: str, *, accept: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        if accept:  # accepted, read, never answered
            import threading

            def run() -> None:
                while True:
                    try:
                        self.held.append(self.sock.accept()[0])
                    except OSError:
                        return

            threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("accept", [True, False])
def test_status_says_a_coordinator_that_never_answers_is_hung(run_pmrun, sockdir, accept):
    path = str(sockdir / "c.sock")
    hung = Silent(path, accept=accept)
    try:
        r = run_pmrun("status", "--socket", path)
    finally:
        hung.close()
    assert r.returncode == 1, r.stdout
    assert len(r.stderr.splitlines()) == 1 and "did not answer" in r.stderr
    assert "no coordinator" not in r.stderr + r.stdout


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's DAC override to be refused")
def test_status_says_permission_denied_rather_than_no_coordinator(sockdir):
    path = str(sockdir / "c.sock")
    listener = Silent(path, accept=False)
    os.chmod(path, 0)
    try:
        r = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             "--inh-caps=-dac_override,-dac_read_search", PMRUN, "status", "--socket", path],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        listener.close()
    assert r.returncode == 1, r.stdout
    assert len(r.stderr.splitlines()) == 1 and "permission denied" in r.stderr


def test_status_without_a_coordinator_still_says_so_and_exits_0(run_pmrun, sockdir):
    r = run_pmrun("status", "--socket", str(sockdir / "c.sock"))
    assert r.returncode == 0 and "no coordinator" in r.stdout and not r.stderr
