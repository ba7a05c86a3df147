"""``pmrun top`` under a real pseudo-terminal: it refreshes, and q or Ctrl-C ends it cleanly."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import PMRUN
from helpers import pid_alive


class PtyProcess:
    """A command on the slave side of a pty; :meth:`read_until` collects what it draws."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        master, slave = os.openpty()
        os.set_blocking(master, False)
        env = {
            **os.environ,
            "COLUMNS": "120",
            "LINES": "40",
            "TERM": "xterm-256color",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
            preexec_fn=lambda: _set_controlling_tty(),
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.output = b""

    def read_until(self, predicate, timeout: float = 15.0) -> bytes:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate(self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out; the terminal shows: {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # EIO: the slave side is closed (the process exited)
                    if self.proc.poll() is not None:
                        break
        return self.output

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _drain(self) -> bool:
        """Read what is there; False once the slave side is closed (EIO) or nothing came."""
        ready, _, _ = select.select([self.master], [], [], 0.05)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return False
        self.output += data
        return bool(data)

    def wait(self, timeout: float = 10.0) -> int:
        """Its exit status within ``timeout``, reading everything it wrote until then."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._drain()  # keep reading: a full pty buffer would block its writes
        status = self.proc.wait(timeout=0.1)
        while self._drain():
            pass
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def _set_controlling_tty() -> None:
    """In the child (new session): make stdin the controlling terminal, so ^C is a signal."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def refreshes(out: bytes) -> int:
    """How many frames top drew: each has the footer with its quit hint."""
    return out.count(b"q: quit")


@pytest.fixture
def top_in_pty(isolated_env) -> Iterator[PtyProcess]:  # type: ignore[no-untyped-def]
    sock = str(isolated_env / "none.sock")
    p = PtyProcess([PMRUN, "top", "--socket", sock, "--interval", "0.2"])
    yield p
    p.close()
    assert not pid_alive(p.proc.pid)


def test_top_refreshes_until_q_then_exits_0_and_restores_the_terminal(
    top_in_pty: PtyProcess,
) -> None:
    out = top_in_pty.read_until(lambda o: refreshes(o) >= 3)
    assert b"no coordinator running on" in out
    assert b"memory" in out and b"PSI" in out
    assert b"\x1b[?1049h" in out  # the alternate screen, like top
    top_in_pty.send(b"q")
    assert top_in_pty.wait() == 0
    assert b"\x1b[?1049l" in top_in_pty.output  # and back to the normal screen
    assert b"Traceback" not in top_in_pty.output


def test_top_ends_cleanly_on_ctrl_c(top_in_pty: PtyProcess) -> None:
    top_in_pty.read_until(lambda o: refreshes(o) >= 2)
    top_in_pty.send(b"\x03")  # the terminal turns ^C into SIGINT for the foreground group
    assert top_in_pty.wait() == 0
    assert b"Traceback" not in top_in_pty.output
    assert b"\x1b[?1049l" in top_in_pty.output


def test_top_ignores_other_keys(top_in_pty: PtyProcess) -> None:
    top_in_pty.read_until(lambda o: refreshes(o) >= 1)
    top_in_pty.send(b"x")
    n = refreshes(top_in_pty.output)
    top_in_pty.read_until(lambda o: refreshes(o) >= n + 2)
    assert top_in_pty.proc.poll() is None
    top_in_pty.send(b"Q")
    assert top_in_pty.wait() == 0


def test_top_without_a_terminal_draws_n_frames_and_exits(run_pmrun, isolated_env) -> None:  # type: ignore[no-untyped-def]
    r = run_pmrun(
        "top", "--socket", str(isolated_env / "none.sock"), "-n", "2", "-d", "0.1", timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("q: quit") >= 1
    assert "no coordinator running on" in r.stdout


def test_top_ends_cleanly_on_sigterm(top_in_pty: PtyProcess) -> None:
    """SIGTERM (a supervisor, a closing tmux pane) ends it like q: the terminal is restored."""
    top_in_pty.read_until(lambda o: refreshes(o) >= 1)
    os.kill(top_in_pty.proc.pid, signal.SIGTERM)
    assert top_in_pty.wait() == 0
    assert b"\x1b[?1049l" in top_in_pty.output
