"""The wrapper's contract, against the real ``pmrun`` executable.

pmrun sits in front of commands in users' scripts, so whatever pmrun's own trouble it
must never hang, print a traceback or take the command down with it: one line on
stderr, a documented exit code, and the command's own behaviour where it could run.
"""

from __future__ import annotations

import contextlib
import os
import pty
import resource
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PMRUN, PYTHON
from coordinator_fixtures import coordinator_pids
from helpers import pid_alive, wait_until


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


@contextlib.contextmanager
def in_pty(argv: list[str]) -> Iterator[tuple[int, int]]:
    """Run ``argv`` on a new terminal: (pid, the terminal's master fd); gone afterwards."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execv(argv[0], argv)
    try:
        yield pid, fd
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_ctrl_c_ends_a_shell_loop_as_it_does_bare(tmp_path: Path) -> None:
    """bash ends a loop on ^C only if the foreground command died *by* SIGINT."""
    marker = tmp_path / "started"
    loop = (
        f"for i in 1 2 3; do {PMRUN} --no-coordinator -- sh -c 'touch {marker}; exec sleep 30';"
        " echo next $i; done; echo loop-done"
    )
    out = bytearray()
    with in_pty(["/bin/bash", "--norc", "--noprofile", "-c", loop]) as (pid, fd):
        wait_until(marker.exists, 20, "first pmrun started its command")
        wait_until(lambda: _sleeping_child_of_pmrun(pid), 20, "sleep running under pmrun")
        os.write(fd, b"\x03")  # ^C: the terminal signals the foreground process group
        _, status = os.waitpid(pid, 0)
        _read_until(fd, b"\0", out, timeout=1)  # drain what the loop printed
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


# -- hostile environments: the command behaves as it does bare ------------------------

# (id, shell set-up before the command, pmrun options, command). Each runs once bare and
# once under pmrun, in bash with pipefail; exit status, stdout and stderr must match,
# except for at most ``PMRUN_LINES[id]`` lines of pmrun's own on stderr.
AS_BARE = [
    ("stdout-closed", "exec >&-", [], "sh -c 'echo out; echo \"st=$?\" >&2; exit 4'"),
    ("stderr-closed", "exec 2>&-", [], "sh -c 'echo out; echo err >&2; exit 3'"),
    ("stdin-closed", "exec <&-", [], "sh -c 'cat; echo \"cat=$?\"'"),
    ("all-closed", "exec <&- >&- 2>&-", [], "sh -c 'exit 6'"),
    ("deleted-cwd", "mkdir gone && cd gone && rmdir ../gone", [], "sh -c 'echo ran; exit 2'"),
    ("reader-gone", "", [], "yes | head -n 2"),  # yes dies by SIGPIPE: 141 with pipefail
    ("no-shebang", "printf 'echo plain $1\\n' > plain; chmod +x plain", [], "./plain arg"),
    ("non-utf8-arg", "", [], "printf '%s|' $'\\xff\\xfe' caf$'\\xe9'"),
    ("non-utf8-env", "export X=$'\\xff'", [], "sh -c 'printf %s \"$X\" | od -An -c'"),
    ("empty-path", "", [], "env PATH= /bin/sh -c 'echo $PATH; exit 9'"),
    ("record-missing-dir", "", ["--record", "no/such/dir/rec"], "sh -c 'echo ran; exit 5'"),
    ("record-fifo-no-reader", "mkfifo f", ["--record", "f"], "sh -c 'echo ran; exit 5'"),
    ("record-is-dir", "mkdir d", ["--record", "d"], "sh -c 'echo ran; exit 5'"),
    ("report-missing-dir", "", ["--report", "no/such/rep"], "sh -c 'echo ran; exit 5'"),
]
PMRUN_LINES = {
    "record-missing-dir": 1,
    "record-fifo-no-reader": 1,
    "record-is-dir": 1,
    "report-missing-dir": 1,
}


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-o", "pipefail", "-c", script],
        capture_output=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize(("case", "setup", "opts", "command"), AS_BARE, ids=[c[0] for c in AS_BARE])
def test_command_behaves_as_bare(
    tmp_path: Path, case: str, setup: str, opts: list[str], command: str
) -> None:
    runs = {}
    for kind in ("bare", "pmrun"):
        d = tmp_path / kind
        d.mkdir()
        flags = [o for o in opts if o != "--coordinator"]
        if "--coordinator" not in opts:
            flags.insert(0, "--no-coordinator")
        prefix = f"{PMRUN} {' '.join(flags)} -- " if kind == "pmrun" else ""
        # The command's own words name bash's pipeline member; pmrun goes in front of each.
        cmd = " | ".join(prefix + part.strip() for part in command.split(" | "))
        runs[kind] = _bash(f"{setup + ';' if setup else ''} {cmd}", d)
    bare, under = runs["bare"], runs["pmrun"]
    assert b"Traceback" not in under.stderr, under.stderr
    assert under.returncode == bare.returncode, (bare, under)
    assert under.stdout == bare.stdout, (bare, under)
    own = [ln for ln in under.stderr.splitlines() if ln.startswith(b"pmrun:")]
    assert len(own) == PMRUN_LINES.get(case, 0), under.stderr
    rest = [ln for ln in under.stderr.splitlines() if not ln.startswith(b"pmrun:")]
    assert rest == bare.stderr.replace(b"/bare/", b"/pmrun/").splitlines(), (bare, under)


# -- pmrun's own I/O trouble never touches the command --------------------------------

# Allocate MB, say so, wait for the marker file, then allocate MORE MB and exit CODE.
PHASES = """
import os, sys, time
mb, marker, more, code = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
held = [b"x" * (1 << 20) for _ in range(mb)]
print("allocated", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(marker) and time.monotonic() < deadline:
    time.sleep(0.01)
held += [b"x" * (1 << 20) for _ in range(more)]
time.sleep(0.5 if more else 0)
sys.exit(code)
"""


def _events(recording: Path) -> list[str]:
    import json

    kinds = []
    try:
        text = recording.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("type") == "event":
            kinds.append(obj["kind"])
    return kinds


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with one page (4 KiB) left free."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "filler").write_bytes(b"f" * (60 << 10))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_filling_mid_run_stops_the_recording_not_the_command(
    tmp_path: Path, full_tmpfs: Path
) -> None:
    import json

    marker, report = tmp_path / "go", tmp_path / "r.json"
    p = subprocess.Popen(
        [PMRUN, "--no-coordinator", "--max-rss", "200M", "--warn-rss", "190M", "--grace", "0"]
        + ["--record", str(full_tmpfs / "rec"), "--report", str(report)]
        + ["--", PYTHON, "-c", PHASES, "150", str(marker), "300", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stderr is not None
        line = p.stderr.readline()  # near the limit: ~100 lines a second fill the page
        assert "cannot record to" in line and "No space left" in line, line
        assert p.poll() is None  # the command goes on, supervised:
        marker.touch()
        assert p.wait(30) == 137
        rest = p.stderr.read()
    finally:
        p.kill()
        p.wait()
    assert "cannot record" not in rest and "Traceback" not in rest, rest
    assert "passed --max-rss" in rest
    data = json.loads(report.read_text())
    assert data["reason"] == "max-rss"
    assert data["extra"]["pmrun_errors"] == [line.removeprefix("pmrun: ").strip()]


def test_warning_to_a_stderr_whose_reader_is_gone_costs_only_the_line(tmp_path: Path) -> None:
    marker, rec = tmp_path / "go", tmp_path / "rec"
    p = subprocess.Popen(
        [PMRUN, "--no-coordinator", "--max-rss", "1G", "--warn-rss", "20M", "--record", str(rec)]
        + ["--", PYTHON, "-c", PHASES, "60", str(marker), "0", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stderr is not None and p.stdout is not None
        p.stderr.close()  # the reader of pmrun's stderr is gone: its next write is EPIPE
        assert p.stdout.readline() == "allocated\n"
        wait_until(lambda: "warn" in _events(rec), 20, "the warning was due")
        marker.touch()
        assert p.wait(30) == 3
    finally:
        p.kill()
        p.wait()


def test_warning_on_a_terminal_waits_for_the_exit(tmp_path: Path) -> None:
    """A full-screen agent owns the terminal: no line in its first row while it runs."""
    marker, rec = tmp_path / "go", tmp_path / "rec"
    argv = [PMRUN, "--no-coordinator", "--max-rss", "1G", "--warn-rss", "20M"]
    argv += ["--record", str(rec), "--", PYTHON, "-c", PHASES, "60", str(marker), "0", "0"]
    out = bytearray()
    with in_pty(argv) as (pid, fd):
        assert _read_until(fd, b"allocated", out)
        wait_until(lambda: "warn" in _events(rec), 20, "the warning was due")
        _read_until(fd, b"passed --warn-rss", out, timeout=0.5)
        assert b"--warn-rss" not in out
        marker.touch()
        _read_until(fd, b"\0", out, timeout=20)  # to EOF
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out.count(b"passed --warn-rss 20.0M") == 1, out


def test_record_writes_through_a_fifo_and_our_symlink(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, there before pmrun
    os.set_blocking(rfd, True)
    got = bytearray()

    def read() -> None:  # EOF comes before the first writer too: read on until the end line
        deadline = time.monotonic() + 20
        while b'"type":"end"' not in got and time.monotonic() < deadline:
            chunk = os.read(rfd, 65536)
            got.extend(chunk)
            if not chunk:
                time.sleep(0.01)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        r = pmrun("--no-coordinator", "--record", str(fifo), "--", "true")
    finally:
        reader.join(20)
        os.close(rfd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert fifo.exists() and not fifo.is_file()  # still the FIFO
    assert b'"type":"start"' in got and b'"type":"end"' in got
    target = tmp_path / "target"
    (tmp_path / "link").symlink_to(target)
    r = pmrun("--no-coordinator", "--record", str(tmp_path / "link"), "--", "true")
    assert r.returncode == 0 and r.stderr == ""
    assert (tmp_path / "link").is_symlink() and b'"type":"end"' in target.read_bytes()


def test_record_refuses_a_symlink_planted_by_another_user(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by all; without the sticky bit the kernel does not protect it
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = shared / "rec"
    planted.symlink_to(victim)
    os.lchown(planted, 65534, 65534)  # nobody's link
    r = pmrun("--no-coordinator", "--record", str(planted), "--", "sh", "-c", "exit 4")
    assert r.returncode == 4
    assert_one_pmrun_line(r.stderr, "symlink of another user")
    assert victim.read_text() == "precious\n"


# -- pmrun's own errors: one line, exit 125 -----------------------------------------

OWN_ERRORS = [
    ([], "no command given"),
    (["run"], "no command given"),
    (["run", "--max-rss", "1G"], "no command given"),
    (["--no-coordinator", "--max-rss", "1.5", "--", "true"], "--max-rss 1 is below 1.0M"),
    (["--no-coordinator", "--max-rss", "100K", "--", "true"], "below 1.0M"),
    (["--no-coordinator", "--max-rss", "0", "--", "true"], "--max-rss"),
]


@pytest.mark.parametrize(("args", "message"), OWN_ERRORS, ids=[" ".join(a) for a, _ in OWN_ERRORS])
def test_own_errors_are_one_line_and_125(args: list[str], message: str) -> None:
    r = pmrun(*args)
    assert r.returncode == 125, r
    assert r.stdout == ""
    assert_one_pmrun_line(r.stderr, message)


# Hostile environments for pmrun itself: its own error, one line, 125; nothing runs.
HOSTILE_ENV = [
    ({"PMRUN_MAX_RSS": "1.5"}, "below 1.0M"),
    ({"PMRUN_MAX_RSS": "lots"}, "PMRUN_MAX_RSS"),
    ({"PMRUN_GRACE": "nan"}, "PMRUN_GRACE"),
    ({"PMRUN_BACKEND": "magic"}, "PMRUN_BACKEND"),
]


@pytest.mark.parametrize(
    ("env", "message"),
    HOSTILE_ENV,
    ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _ in HOSTILE_ENV],
)
def test_hostile_environment_is_one_line_and_125(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    marker = tmp_path / "ran"
    r = pmrun("--no-coordinator", "--", "touch", str(marker), env={**os.environ, **env})
    assert r.returncode == 125, r
    assert r.stdout == ""
    assert_one_pmrun_line(r.stderr, message)
    assert not marker.exists()


def test_default_warning_comes_before_a_small_limit(tmp_path: Path) -> None:
    import json

    for max_rss, warn in (("500M", 250 << 20), ("400M", 200 << 20), ("2G", 500 << 20)):
        report = tmp_path / f"{max_rss}.json"
        r = pmrun("--no-coordinator", "--max-rss", max_rss, "--report", str(report), "--", "true")
        assert r.returncode == 0, r.stderr
        assert json.loads(report.read_text())["limits"]["warn_rss"] == warn, max_rss


def test_name_with_a_space_keeps_the_cgroup_backend_and_its_display(tmp_path: Path) -> None:
    import json

    from pmrun.errors import CgroupError

    try:
        from pmrun.cgroups import detect

        detect()
    except (ImportError, CgroupError):
        pytest.skip("no cgroup this process may create")
    report = tmp_path / "r.json"
    r = pmrun("--no-coordinator", "--name", "my agent/1 é", "--report", str(report), "--", "true")
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["backend"]["name"].startswith("cgroup"), data["backend"]
    assert data["name"] == "my agent/1 é"
    assert data["agent_id"].startswith("my_agent_1__.")


def test_a_signal_sent_to_pmrun_after_a_terminal_one_is_still_forwarded() -> None:
    """^C reaches the command from the terminal (not forwarded); a later SIGINT sent to
    pmrun alone must still be forwarded, whatever the terminal's left behind."""
    out = bytearray()
    with in_pty([PMRUN, "--no-coordinator", "--", PYTHON, "-c", COUNTER, "SIGINT"]) as (pid, fd):
        assert _read_until(fd, b"ready", out)
        os.write(fd, b"\x03")  # the terminal's SIGINT to the foreground group
        time.sleep(0.2)  # let it land; each is delivered regardless
        os.kill(pid, signal.SIGINT)  # to pmrun alone: forwarded
        time.sleep(0.2)
        os.kill(pid, FINISH)
        _read_until(fd, b"\0", out, timeout=20)  # to EOF
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 5
    assert b"SIGINT,SIGINT" in out, out


def test_a_signal_the_kernel_sends_pmrun_alone_is_not_the_command_s() -> None:
    """SIGXCPU for pmrun's own CPU limit (kernel-sent, to pmrun only) is not forwarded: the
    command did not use pmrun's CPU. The kernel raises the soft limit by a second each time
    it sends one, which tells the test it was sent."""
    p = _counter("SIGXCPU", "SIGUSR1")
    try:
        resource.prlimit(p.pid, resource.RLIMIT_CPU, (1, resource.RLIM_INFINITY))

        def earned() -> bool:  # a forwarded signal costs pmrun CPU: flood until 1 s is spent
            for _ in range(200):
                p.send_signal(signal.SIGUSR1)
            return resource.prlimit(p.pid, resource.RLIMIT_CPU)[0] >= 2

        wait_until(earned, 120, "pmrun got SIGXCPU for its own CPU time", interval=0)
        got = _finish(p)
    finally:
        p.kill()
        p.wait()
    assert "SIGUSR1" in got  # forwarding worked all along
    assert "SIGXCPU" not in got
