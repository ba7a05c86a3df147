"""The wrapper's contract, against the real ``pmrun`` executable.

pmrun sits in front of commands in users' scripts, so whatever pmrun's own trouble it
must never hang, print a traceback or take the command down with it: one line on
stderr, a documented exit code, and the command's own behaviour where it could run.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PMRUN, PYTHON
from coordinator_fixtures import coordinator_pids, pid_alive, wait_until


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    """A private coordinator socket; whatever coordinator pmrun starts on it is stopped after."""
    path = str(tmp_path / "s" / "coordinator.sock")
    yield path
    for pid in coordinator_pids(path):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(pid_alive(p) for p in coordinator_pids(path)), 10, "coordinator")


def pmrun(*args: str, timeout: float = 30, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PMRUN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[call-overload]
    )


def assert_one_pmrun_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pmrun:")]
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], stderr


# -- exec failures (item: hang on exec failure with a coordinator) --------------------


def _script(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(0o755)
    return str(p)


@pytest.mark.parametrize("coordinator", [True, False], ids=["coordinator", "standalone"])
def test_file_without_shebang_runs_with_bin_sh(
    tmp_path: Path, socket_path: str, coordinator: bool
) -> None:
    """As execvp(3) and env(1) do: ENOEXEC → /bin/sh FILE ARGS."""
    script = _script(tmp_path, "plain", 'echo "sh says $1 $#"\nexit 7\n')
    opts = ["--socket", socket_path] if coordinator else ["--no-coordinator"]
    r = pmrun(*opts, "--", script, "hello")
    assert r.returncode == 7, r.stderr
    assert r.stdout == "sh says hello 1\n"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("coordinator", [True, False], ids=["coordinator", "standalone"])
def test_missing_interpreter_is_127_with_a_clear_line(
    tmp_path: Path, socket_path: str, coordinator: bool
) -> None:
    script = _script(tmp_path, "bad", "#!/nonexistent/interp -x\necho never\n")
    opts = ["--socket", socket_path] if coordinator else ["--no-coordinator"]
    r = pmrun(*opts, "--", script)
    assert r.returncode == 127, r.stderr
    assert_one_pmrun_line(r.stderr, "/nonexistent/interp", "interpreter")
    assert r.stdout == ""


@pytest.mark.parametrize(
    "text, code",
    [
        ("#!/nonexistent/interp\n", 127),  # bad interpreter
        (None, 126),  # a directory
        ("\x7fELF\x02garbage", 126),  # not a valid binary, but looks like one
    ],
    ids=["bad-interpreter", "directory", "bad-elf"],
)
def test_exec_failure_with_a_coordinator_never_hangs(
    tmp_path: Path, socket_path: str, text: str | None, code: int
) -> None:
    if text is None:
        target = str(tmp_path / "dir")
        os.mkdir(target)
    else:
        target = _script(tmp_path, "x", text)
    r = pmrun("--socket", socket_path, "--", target, timeout=20)
    assert r.returncode == code, r.stderr
    assert_one_pmrun_line(r.stderr)


# -- signals: behave like the command in a terminal and in scripts -----------------


def _read_until(fd: int, needle: bytes, out: bytearray, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while needle not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's last process is gone
                return needle in out
            if not chunk:
                break
            out += chunk
    return needle in out


def test_ctrl_c_ends_a_shell_loop_as_it_does_bare(tmp_path: Path) -> None:
    """bash ends a loop on ^C only if the foreground command died *by* SIGINT."""
    marker = tmp_path / "started"
    loop = (
        f"for i in 1 2 3; do {PMRUN} --no-coordinator -- sh -c 'touch {marker}; exec sleep 30';"
        " echo next $i; done; echo loop-done"
    )
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execv("/bin/bash", ["bash", "--norc", "--noprofile", "-c", loop])
    out = bytearray()
    try:
        wait_until(marker.exists, 20, "first pmrun started its command")
        wait_until(lambda: _sleeping_child_of_pmrun(pid), 20, "sleep running under pmrun")
        os.write(fd, b"\x03")  # ^C: the terminal signals the foreground process group
        _, status = os.waitpid(pid, 0)
        _read_until(fd, b"\0", out, timeout=1)  # drain what the loop printed
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    assert b"next" not in out and b"loop-done" not in out, out
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT, status


def _sleeping_child_of_pmrun(shell: int) -> bool:
    """True once a `sleep` runs somewhere below ``shell``."""
    todo = [shell]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "sleep":
                    return True
        except OSError:
            continue
        todo += kids
    return False


def test_command_killed_by_a_signal_kills_pmrun_by_the_same_signal() -> None:
    r = pmrun("--no-coordinator", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == -signal.SIGTERM, r.stderr
    assert r.stderr == ""
    # As the shell sees it: 128+N, as bare.
    sh = subprocess.run(
        [
            "sh",
            "-c",
            f"{PMRUN} --no-coordinator -- sh -c 'kill -USR2 $$'; echo $?",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sh.stdout == f"{128 + signal.SIGUSR2}\n"


# The command counts every delivery of the signals it is given (each one the kernel
# delivers writes a byte to the wakeup fd, where Python's handlers would coalesce two
# that come close together) and prints them when FINISH comes.
COUNTER = """
import os, select, signal, sys
FINISH = signal.SIGRTMIN + 8
names = {}
for n in sys.argv[1].split(","):
    s = getattr(signal, n) if not n.startswith("RTMIN") else signal.SIGRTMIN + int(n[6:])
    names[int(s)] = n
    signal.signal(s, lambda k, f: None)
signal.signal(FINISH, lambda k, f: None)
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w, warn_on_full_buffer=False)
print("ready", flush=True)
got = []
while select.select([r], [], [], 30)[0]:
    data = os.read(r, 100)
    got += [names[b] for b in data if b in names]
    if FINISH in data:
        break
print(",".join(got), flush=True)
sys.exit(5)
"""
FINISH = signal.SIGRTMIN + 8


def _counter(*names: str, **kw: object) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [PMRUN, "--no-coordinator", "--", PYTHON, "-c", COUNTER, ",".join(names)],
        stdout=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    return p


def _finish(p: subprocess.Popen[str]) -> list[str]:
    assert p.stdout is not None
    p.send_signal(FINISH)
    line = p.stdout.readline().strip()
    assert p.wait(20) == 5
    return line.split(",") if line else []


def test_signals_pmrun_does_not_use_are_forwarded_not_fatal() -> None:
    names = ("SIGPWR", "SIGXCPU", "SIGVTALRM", "SIGPROF", "SIGURG", "SIGCONT", "RTMIN+1")
    p = _counter(*names)
    try:
        for n in names:
            s = getattr(signal, n) if not n.startswith("RTMIN") else signal.SIGRTMIN + 1
            p.send_signal(s)
            time.sleep(0.02)  # keeps the order observable; each is delivered regardless
        got = _finish(p)
    finally:
        p.kill()
        p.wait()
    assert sorted(got) == sorted(names)


def test_signal_to_the_process_group_reaches_the_command_once() -> None:
    # A real-time signal queues (two sends, two deliveries), so a duplicate always shows;
    # two standard ones close together may coalesce in the kernel and hide it.
    p = _counter("SIGTERM", "SIGHUP", "RTMIN+2", start_new_session=True)
    try:
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGRTMIN + 2, signal.SIGRTMIN + 2):
            os.killpg(p.pid, s)  # as `kill -TERM -- -PGID` does
        p.send_signal(signal.SIGHUP)  # to pmrun alone: forwarded, once
        p.send_signal(signal.SIGRTMIN + 2)
        got = _finish(p)
    finally:
        p.kill()
        p.wait()
    assert sorted(got) == ["RTMIN+2"] * 3 + ["SIGHUP"] * (got.count("SIGHUP")) + ["SIGTERM"]
    assert 1 <= got.count("SIGHUP") <= 2  # two SIGHUPs close together may coalesce


GROW = """
import time
chunks = []
print("ready", flush=True)
for _ in range(400):
    chunks.append(b"x" * (1 << 20))
    time.sleep(0.005)
time.sleep(30)
"""


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def test_sigstop_then_sigcont_of_pmrun_alone_resumes_supervision_at_once() -> None:
    """While pmrun is stopped nobody samples (sampling backend); once continued it catches up."""
    p = subprocess.Popen(
        [PMRUN, "--no-coordinator", "--backend", "sampling", "--max-rss", "100M", "--grace", "0"]
        + ["--", PYTHON, "-c", GROW],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        os.kill(p.pid, signal.SIGSTOP)
        wait_until(lambda: any(_rss(c) > 150 << 20 for c in _tree(p.pid)), 30, "past the limit")
        os.kill(p.pid, signal.SIGCONT)
        assert p.wait(10) == 137
        assert p.stderr is not None and "passed --max-rss" in p.stderr.read()
    finally:
        p.kill()
        p.wait()
