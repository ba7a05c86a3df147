"""No agent invisible to the pool: the real ``pmrun`` registers whatever its argv and name,
refuses values that cannot fit at the edge (one line, exit 125), and says once when a
coordinator refuses it instead of retrying silently forever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import PMRUN
from coordinator_fixtures import PYTHON, Daemon
from helpers import wait_until
from pmrun.coordinator import protocol as p

# The command waits until the test creates the file it names, then exits 0.
WAIT_FOR_FILE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)"


class Lines:
    """Collects a process's stderr lines in a thread."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> list[str]:
        self._t.join(10)
        return self.lines


def launch(procs, sock: str, release: Path, *opts: str, args: tuple[str, ...] = ()):
    return procs.popen(
        [PMRUN, "--socket", sock, "--backend", "sampling", *opts, "--",
         PYTHON, "-c", WAIT_FOR_FILE, str(release), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_an_agent_whose_argv_is_a_whole_prompt_is_in_the_pool(procs, sockdir):
    daemon = Daemon(procs, str(sockdir / "c.sock")).start()
    prompt = tuple("word " * 4000 for _ in range(20))  # 400 KB of arguments
    release = sockdir / "release"
    proc = launch(procs, daemon.socket, release, "--name", "big", args=prompt)
    agent = wait_until(lambda: daemon.agents().get("big"), 20, "the agent is registered")
    shown = agent["argv"]
    assert shown[:3] == [PYTHON, "-c", WAIT_FOR_FILE]
    assert len(json.dumps(shown)) <= p.ARGV_SHOWN_BYTES
    assert "more" in shown[-1] and "bytes" in shown[-1]  # says what was left out
    release.touch()
    assert proc.wait(20) == 0
    report = daemon.events("agent.deregister")
    assert report and report[-1]["name"] == "big"  # the exit report fits too


def test_a_long_name_is_in_the_pool_and_an_absurd_one_is_refused_at_the_edge(
    procs,
    sockdir,
    run_pmrun,
):
    daemon = Daemon(procs, str(sockdir / "c.sock")).start()
    name = "n" * p.MAX_AGENT_NAME
    release = sockdir / "release"
    proc = launch(procs, daemon.socket, release, "--name", name)
    wait_until(lambda: name in daemon.agents(), 20, "the long-named agent is registered")
    release.touch()
    assert proc.wait(20) == 0

    r = run_pmrun("--name", "n" * (p.MAX_AGENT_NAME + 1), "--", "true")
    assert r.returncode == 125
    assert len(r.stderr.splitlines()) == 1 and "--name" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["1e300", "99999999999999999999", "-1", "2.5", "nan"])
@pytest.mark.parametrize("where", ["flag", "env", "toml"])
def test_a_priority_that_cannot_fit_is_refused_with_one_line(run_pmrun, tmp_path, value, where):
    env = dict(os.environ)
    args = ["--no-coordinator", "--", "true"]
    if where == "flag":
        args = ["--priority", value, *args]
    elif where == "env":
        env["PMRUN_PRIORITY"] = value
    else:
        (tmp_path / "pmrun.toml").write_text(f"[agent]\npriority = {value}\n")
    r = run_pmrun(*args, env=env, cwd=tmp_path)
    assert r.returncode == 125, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "priority" in r.stderr
    assert "Traceback" not in r.stderr


class RefusingCoordinator:
    """Answers every register with an error, keeps the connection open, counts registers."""

    def __init__(self, path: str, code: str = "bad-frame") -> None:
        self.code = code
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.conns: list[socket.socket] = []
        self.registers = 0
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = p.FrameBuffer()
        try:
            while data := conn.recv(1 << 16):
                for frame in buf.feed(data):
                    if p.decode(frame).TYPE == "register":
                        self.registers += 1
                        conn.sendall(p.encode(p.Error(code=self.code, message="no, thanks")))
        except OSError:
            pass

    def close(self) -> None:
        for s in (self.sock, *self.conns):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._t.join(5)


@pytest.mark.parametrize("code", ["bad-frame", "forbidden"])
def test_a_refused_registration_is_said_once_and_not_retried(procs, sockdir, code):
    fake = RefusingCoordinator(str(sockdir / "c.sock"), code)
    try:
        release = sockdir / "release"
        proc = launch(procs, str(sockdir / "c.sock"), release)
        err = Lines(proc.stderr)
        wait_until(lambda: any("refused" in line for line in err.lines), 20, "the launcher says")
        release.touch()
        assert proc.wait(20) == 0  # the command ran as it would bare
        lines = err.join()
        assert len(lines) == 1, lines
        assert "not in the pool" in lines[0] and "no, thanks" in lines[0]
        assert fake.registers == 1  # no silent retry loop
    finally:
        fake.close()
