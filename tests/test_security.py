"""Security: other uids, socket path races, signals, and shells.

- Another uid can neither connect nor act: the socket directory (0700), the socket (0600)
  and the coordinator's SO_PEERCRED check each keep it out on their own; and pmrun's
  clients refuse a "coordinator" run by another uid.
- A symlink planted at the socket, its directory, the lock or the event log is refused
  (exit status 1, one line on stderr), and nothing is written through it.
- The coordinator signals only pids of a dead launcher's last report that are provably
  still that launcher's tree (same start time, not older than the launcher, same uid):
  a client cannot make it signal anything else.
- Nothing runs through a shell.

Processes of another uid run as ``nobody`` with the system Python (it cannot read
/root); the helper scripts below import nothing from pmrun.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PYTHON
from coordinator_fixtures import Daemon
from helpers import NOBODY, become_nobody, pid_alive, wait_until
from pmrun import _procfs
from pmrun.coordinator import protocol as p
from pmrun.coordinator import query
from pmrun.errors import SocketSecurityError
from test_reliability_load import record_figures

SYSTEM_PYTHON = "/usr/bin/python3"
SRC = Path(__file__).resolve().parent.parent / "src" / "pmrun"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root (to run a client as another uid) and /usr/bin/python3",
)

# Run as nobody: connect, send one frame, print what came back (or the connect errno).
CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT", e.errno); sys.exit(0)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print("GOT", data.decode())
except OSError as e:
    print("IO", e.errno)
"""

# Run as nobody: a rogue "coordinator" that counts connections and bytes until stdin closes.
ROGUE = r"""
import os, select, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777); s.listen(64)
print("LISTENING", flush=True)
conns, nbytes, open_ = 0, 0, []
while True:
    r, _, _ = select.select([s, sys.stdin, *open_], [], [])
    if sys.stdin in r:
        break
    for x in r:
        if x is s:
            c, _ = s.accept(); open_.append(c); conns += 1
        elif x in open_:
            try:
                d = x.recv(65536)
            except OSError:
                d = b""
            nbytes += len(d)
            if not d:
                open_.remove(x); x.close()
print("CONNS", conns, "BYTES", nbytes, flush=True)
"""


def as_nobody(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", *argv], preexec_fn=become_nobody, cwd="/",
        capture_output=True, text=True, timeout=30, **kw,
    )  # fmt: skip


def nobody_sends(path: str, msg: p.Message | bytes) -> tuple[str, list[dict]]:
    frame = msg if isinstance(msg, bytes) else p.encode(msg)
    out = as_nobody("-c", CLIENT, path, frame.hex()).stdout.strip()
    if out.startswith("GOT"):
        return "GOT", [json.loads(x) for x in out[4:].splitlines() if x.strip()]
    return out, []


REGISTER = p.Register(agent_id="evil.1", name="evil", launcher_pid=1, child_pid=1,
                      argv=["evil"], started=0.0)  # fmt: skip
REQUESTS: dict[str, p.Message] = {
    "ping": p.Ping(id=1),
    "status": p.Status(id=2),
    "register": REGISTER,
    "report": p.Report(rss=1, peak=1),
    "deregister": p.Deregister(id=3),
    "service": p.Service(id=4, name="evil", pid=1),
    "cleanup": p.Cleanup(id=5, fraction=1.0),
    "heap": p.Heap(id=6),
}


@pytest.fixture
def daemon(procs, sockdir):
    return Daemon(procs, str(sockdir / "c.sock")).start()


# -- another uid ------------------------------------------------------------------------


def test_the_socket_directory_alone_keeps_another_uid_out(daemon, sockdir):
    os.chmod(daemon.socket, 0o666)  # the socket opened up (test only): the 0700 dir still bars
    assert (os.stat(sockdir).st_mode & 0o777) == 0o700
    assert nobody_sends(daemon.socket, REQUESTS["ping"]) == (f"CONNECT {errno.EACCES}", [])


def test_the_socket_mode_alone_keeps_another_uid_out(daemon, sockdir):
    assert (os.stat(daemon.socket).st_mode & 0o777) == 0o600
    os.chmod(sockdir, 0o755)  # the directory opened up (test only): the 0600 socket still bars
    assert nobody_sends(daemon.socket, REQUESTS["ping"]) == (f"CONNECT {errno.EACCES}", [])


def test_so_peercred_alone_refuses_every_request_of_another_uid(daemon, sockdir):
    os.chmod(sockdir, 0o755)
    os.chmod(daemon.socket, 0o666)  # both opened up (test only): only SO_PEERCRED is left
    for kind, msg in REQUESTS.items():
        how, answers = nobody_sends(daemon.socket, msg)
        assert how == "GOT", (kind, how)
        # One error, then the coordinator closes the connection: nothing else is read.
        assert [(a["type"], a["code"]) for a in answers] == [("error", "forbidden")], kind
        assert f"uid {NOBODY} may not use the coordinator of uid 0" in answers[0]["message"]
    status = daemon.status()
    assert status["agents"] == [] and status["services"] == []
    assert not daemon.events("cleanup.request", "agent.register", "service.register")
    refused = daemon.events("security.refused")
    assert refused and {e["uid"] for e in refused} == {NOBODY}
    record_figures("security-other-uid", requests_refused=len(REQUESTS), layers=3)


@pytest.fixture
def rogue(sockdir) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A listener run by nobody, in a directory nobody owns."""
    d = sockdir / "rogue"
    d.mkdir(mode=0o755)
    os.chown(d, NOBODY, NOBODY)
    os.chmod(sockdir, 0o755)
    path = str(d / "c.sock")
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-I", "-c", ROGUE, path], preexec_fn=become_nobody,
        cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "LISTENING"
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def rogue_counts(proc: subprocess.Popen[str]) -> tuple[int, int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    words = proc.stdout.readline().split()
    proc.wait(10)
    return int(words[1]), int(words[3])


def test_pmrun_refuses_to_talk_to_a_coordinator_of_another_uid(rogue, run_pmrun):
    path, proc = rogue
    r = run_pmrun("--socket", path, "--", "true")
    assert r.returncode == 0  # the agent runs, under its own limits only
    assert "not yours" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(SocketSecurityError, match="not yours"):
        query.status(path)
    r = run_pmrun("status", "--socket", path, "--json")
    assert r.returncode == 1 and "not yours" in r.stderr
    conns, nbytes = rogue_counts(proc)
    assert conns >= 3 and nbytes == 0  # it was reached, and told nothing


# -- socket path races ------------------------------------------------------------------


def start_coordinator(run_pmrun, sock: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_pmrun("coordinator", "--socket", sock, *extra, timeout=30)


def refused(r: subprocess.CompletedProcess[str], word: str) -> None:
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_symlink_at_the_socket_path_is_refused(sockdir, run_pmrun):
    victim = sockdir / "victim"
    victim.write_text("precious")
    (sockdir / "c.sock").symlink_to(victim)
    refused(start_coordinator(run_pmrun, str(sockdir / "c.sock")), "not a socket")
    assert victim.read_text() == "precious" and (sockdir / "c.sock").is_symlink()


def test_a_symlink_to_another_coordinators_socket_is_refused(procs, sockdir, run_pmrun):
    other = Daemon(procs, str(sockdir / "other.sock")).start()
    (sockdir / "c.sock").symlink_to(other.socket)
    refused(start_coordinator(run_pmrun, str(sockdir / "c.sock")), "not a socket")
    assert query.ping(other.socket).pid == other.proc.pid  # its socket was not taken over


def test_a_symlink_as_the_socket_directory_is_refused(sockdir, run_pmrun):
    target = sockdir / "target"
    target.mkdir(mode=0o700)
    (sockdir / "link").symlink_to(target)
    refused(start_coordinator(run_pmrun, str(sockdir / "link" / "c.sock")), "symlink")
    assert list(target.iterdir()) == []


def test_a_symlink_at_the_lock_is_refused(sockdir, run_pmrun):
    victim = sockdir / "victim"
    victim.write_text("precious")
    (sockdir / "c.sock.lock").symlink_to(victim)
    refused(start_coordinator(run_pmrun, str(sockdir / "c.sock")), "symlink")
    assert victim.read_text() == "precious"


def test_a_symlink_at_the_event_log_is_not_followed(procs, sockdir):
    victim = sockdir / "victim"
    victim.write_text("precious")
    (sockdir / "events.jsonl").symlink_to(victim)
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    query.cleanup(d.socket)
    assert d.status()["agents"] == []
    assert victim.read_text() == "precious"
    assert d.stderr().count("cannot write the event log") == 1


@pytest.mark.parametrize("how", ["another owner", "writable by others"])
def test_an_unsafe_socket_directory_is_refused(sockdir, run_pmrun, how):
    d = sockdir / "run"
    d.mkdir(mode=0o700)
    if how == "another owner":
        os.chown(d, NOBODY, NOBODY)
    else:
        os.chmod(d, 0o777)
    refused(start_coordinator(run_pmrun, str(d / "c.sock")), "uid" if "owner" in how else "chmod")
    assert list(d.iterdir()) == []


def test_a_launcher_given_a_symlinked_directory_runs_alone(sockdir, run_pmrun):
    target = sockdir / "target"
    target.mkdir(mode=0o700)
    (sockdir / "link").symlink_to(target)
    r = run_pmrun("--socket", str(sockdir / "link" / "c.sock"), "--", "true")
    assert r.returncode == 0 and "symlink" in r.stderr
    assert list(target.iterdir()) == []  # no coordinator started, no log, no lock


# -- what a client can make the coordinator signal --------------------------------------

# A client that registers an agent whose tree it makes up, then dies (or just hangs up)
# when told. The coordinator's orphan cleanup is the only code that signals anything.
ATTACKER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print("CONNECTED", flush=True)
frame = sys.stdin.readline()  # the register frame, once the test has made the victims
s.sendall(frame.encode())
print("ANSWER", s.recv(65536).decode().strip(), flush=True)
if sys.stdin.readline().strip() == "hangup":
    s.close()
    sys.stdin.readline()  # stay alive until told
"""


def ticks_now() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def sleeper(procs, **kw) -> subprocess.Popen:
    return procs.popen(["sleep", "300"], stdin=subprocess.DEVNULL, **kw)


def test_a_client_cannot_make_the_coordinator_signal_what_is_not_its_agents_tree(
    procs,
    daemon,
):
    older = sleeper(procs)  # started before the attacker: never its tree
    start_older = _procfs.start_time(older.pid)
    wait_until(lambda: ticks_now() > start_older + 1, 5, "a clock tick later")
    attacker = procs.popen([PYTHON, "-c", ATTACKER, daemon.socket], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert attacker.stdout.readline().strip() == "CONNECTED"
    assert _procfs.start_time(attacker.pid) > start_older
    wrong_start = sleeper(procs)
    other_uid = sleeper(procs, preexec_fn=become_nobody)
    younger = sleeper(procs)  # same uid, younger than the attacker, exact start time
    wait_until(lambda: all(pid_alive(x.pid) for x in (wrong_start, other_uid, younger)), 5)
    pids = [
        [older.pid, start_older],
        [wrong_start.pid, _procfs.start_time(wrong_start.pid) + 1],  # a recycled pid
        [other_uid.pid, _procfs.start_time(other_uid.pid)],
        [younger.pid, _procfs.start_time(younger.pid)],
        [1, _procfs.start_time(1)],
        [daemon.proc.pid, _procfs.start_time(daemon.proc.pid)],
        [os.getpid(), _procfs.start_time(os.getpid())],
    ]
    # It claims to be nobody, with the test's own process as launcher and child.
    frame = p.encode(p.Register(agent_id="evil.1", name="evil", launcher_pid=os.getpid(),
                                child_pid=older.pid, argv=["evil"], started=0.0,
                                pids=pids))  # fmt: skip
    attacker.stdin.write(frame.decode())
    attacker.stdin.flush()
    assert '"of":"register"' in attacker.stdout.readline()
    assert daemon.agents()["evil"]["uid"] == 0  # SO_PEERCRED's uid, not the claimed one

    # 1. It hangs up but lives: a launcher that lost its connection. Nothing is signalled.
    attacker.stdin.write("hangup\n")
    attacker.stdin.flush()
    [lost] = wait_until(lambda: daemon.events("agent.lost"), 10, "the agent dropped")
    assert lost["launcher_alive"] is True and lost["orphans_killed"] == []
    # 2. Now it dies. Its reported tree is looked at; only `younger` qualifies.
    attacker.kill()
    attacker.wait(10)
    assert all(pid_alive(x.pid) for x in (older, wrong_start, other_uid, younger))
    record_figures("security-signals", pids_offered=len(pids), wrongly_signalled=0)


def test_a_dead_launcher_s_reported_tree_is_killed_only_where_it_provably_is_its_tree(
    procs,
    daemon,
):
    older = sleeper(procs)  # started before the attacker
    start_older = _procfs.start_time(older.pid)
    wait_until(lambda: ticks_now() > start_older + 1, 5, "a clock tick later")
    attacker = procs.popen([PYTHON, "-c", ATTACKER, daemon.socket], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert attacker.stdout.readline().strip() == "CONNECTED"
    assert _procfs.start_time(attacker.pid) > start_older
    wrong_start = sleeper(procs)
    other_uid = sleeper(procs, preexec_fn=become_nobody)
    younger = sleeper(procs)
    wait_until(lambda: all(pid_alive(x.pid) for x in (wrong_start, other_uid, younger)), 5)
    pids = [
        [older.pid, start_older],
        [wrong_start.pid, _procfs.start_time(wrong_start.pid) + 1],
        [other_uid.pid, _procfs.start_time(other_uid.pid)],
        [younger.pid, _procfs.start_time(younger.pid)],
        [1, _procfs.start_time(1)],
        [daemon.proc.pid, _procfs.start_time(daemon.proc.pid)],
        [os.getpid(), _procfs.start_time(os.getpid())],
    ]
    frame = p.encode(p.Register(agent_id="evil.2", name="evil", launcher_pid=1, child_pid=1,
                                argv=["evil"], started=0.0, pids=pids))  # fmt: skip
    attacker.stdin.write(frame.decode())
    attacker.stdin.flush()
    assert '"of":"register"' in attacker.stdout.readline()
    attacker.kill()  # dies without a deregister: its "tree" is cleaned up
    attacker.wait(10)
    [lost] = wait_until(lambda: daemon.events("agent.lost"), 10, "the agent dropped")
    assert lost["launcher_alive"] is False
    # The only pid signalled is one the attacker's uid could have killed itself, started
    # after it, with the exact start time: what a real launcher's orphan looks like.
    assert lost["orphans_killed"] == [younger.pid]
    assert younger.wait(10) == -signal.SIGKILL
    assert all(pid_alive(x.pid) for x in (older, wrong_start, other_uid))
    assert daemon.proc.poll() is None and pid_alive(1)
    record_figures("security-orphan-kill", pids_offered=len(pids), killed=1,
                   wrongly_signalled=0)  # fmt: skip


def test_orders_a_client_sends_are_not_obeyed(daemon, procs):
    victim = sleeper(procs)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(daemon.socket)
    try:
        s.sendall(
            p.encode(p.Stop(reason="pool", detail={"pid": victim.pid}))
            + json.dumps({"type": "kill", "version": 1, "pid": victim.pid}).encode() + b"\n"
            + json.dumps({"type": "signal", "version": 1, "pid": victim.pid, "signal": 9}).encode()
            + b"\n" + p.encode(p.Ping(id=1))
        )  # fmt: skip
        data = b""
        while b'"pong"' not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    finally:
        s.close()
    codes = [json.loads(x).get("code") for x in data.splitlines()][:3]
    assert codes == ["unexpected", "unknown-type", "unknown-type"]
    assert pid_alive(victim.pid)


# -- nothing runs through a shell -------------------------------------------------------


def shell_uses(path: Path) -> list[str]:
    """Calls in ``path`` that would run a shell: shell=True, os.system, os.popen, ..."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append(f"{path.name}:{node.lineno} shell=")
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("system", "popen", "getoutput", "getstatusoutput", "spawnlp",
                        "spawnvp", "execlp", "execvp", "execvpe"):  # fmt: skip
                found.append(f"{path.name}:{node.lineno} {name}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.search(r"(^|/)(ba|da|z)?sh$|\bsh -c\b", node.value):
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    return found


# pmrun starts a shell only where its user asks for one, as the tools it stands in for do:
# a file without #! (ENOEXEC) runs as `/bin/sh FILE ARGS`, as execvp(3) and env(1) do; and
# pmrun.launch/run(..., shell=True) runs `/bin/sh -c CMD`, as subprocess.Popen does. The
# other literals name the shells whose scripts `pmrun completion` and `pmrun shim env` print.
ALLOWED_SHELL_USES = {
    "_spawn.py '/bin/sh'",
    "api.py '/bin/sh'",
    "api.py ':func:`asyncio.create_subprocess_shell` under pmrun (``/bin/sh -c cmd``).'",
    *(f"{f} '{sh}'" for f in ("completion.py", "shim.py") for sh in ("bash", "zsh", "sh", "dash")),
}


def test_no_source_file_runs_a_shell() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = [use for f in files for use in shell_uses(f)]
    assert [u for u in found if re.sub(r":\d+", "", u) not in ALLOWED_SHELL_USES] == []
    text = "\n".join(f.read_text() for f in files)
    for needle in ("shell=True", "os.system(", "os.popen(", "getoutput("):
        assert needle not in text


def test_the_scanner_finds_shell_uses(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, subprocess\nsubprocess.run('x', shell=True)\nos.system('x')\n"
        "os.popen('x')\nsubprocess.getoutput('x')\nargv = ['/bin/sh', '-c', 'x']\n"
    )
    assert len(shell_uses(bad)) == 5


def test_a_command_with_shell_syntax_is_not_interpreted(sockdir, run_pmrun):
    marker = sockdir / "x"
    r = run_pmrun("--no-coordinator", "--", "echo $HOME;touch x", cwd=str(sockdir))
    assert r.returncode == 127 and "command not found" in r.stderr  # one word, not a script
    r = run_pmrun("--no-coordinator", "--", "true", "&& touch x", cwd=str(sockdir))
    assert r.returncode == 0
    assert not marker.exists()


def test_a_socket_path_with_shell_syntax_starts_the_coordinator_without_a_shell(
    procs,
    sockdir,
    run_pmrun,
):
    d = sockdir / "$(touch pwned);`touch pwned2`"
    sock = str(d / "c.sock")
    r = run_pmrun("--socket", sock, "--", "true", cwd=str(sockdir))
    assert r.returncode == 0, r.stderr
    pong = wait_until(lambda: _ping(sock), 10, "the coordinator started on demand")
    procs.adopt(pong.pid)
    with open(f"/proc/{pong.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert sock.encode() in argv  # one argument, as given
    os.kill(pong.pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pong.pid), 10, "the coordinator stops")
    assert not (sockdir / "pwned").exists() and not (sockdir / "pwned2").exists()
    assert not Path("/pwned").exists() and not Path(os.getcwd(), "pwned").exists()


def _ping(sock: str):
    try:
        return query.ping(sock, timeout_s=0.5)
    except Exception:
        return None
