"""The daemon serves everyone whatever one client does; security; status; cleanup; the lock."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time

import pytest

from coordinator_fixtures import PYTHON, Daemon, InProcess
from helpers import NOBODY, agent_info, become_nobody, wait_until
from pmrun.coordinator import protocol as p
from pmrun.coordinator import query
from pmrun.coordinator.link import AgentLink
from pmrun.coordinator.server import CoordinatorSettings
from pmrun.errors import CoordinatorUnavailable, PmrunError

MIB = 1 << 20


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_frames(s: socket.socket, until_eof: bool = False, timeout: float = 5.0) -> list[dict]:
    """Frames received within ``timeout`` (all of them until EOF if ``until_eof``)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        data += chunk
        if not until_eof and data.endswith(b"\n"):
            break
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def is_eof(s: socket.socket, timeout: float = 5.0) -> bool:
    r, _, _ = select.select([s], [], [], timeout)
    return bool(r) and s.recv(1 << 16) == b""


@pytest.fixture
def daemon(procs, sockdir):
    return Daemon(procs, str(sockdir / "c.sock")).start()


def test_garbage_oversized_and_half_open_clients_do_not_stop_the_coordinator(daemon):
    silent = raw(daemon.socket)  # connects and says nothing
    partial = raw(daemon.socket)
    partial.sendall(b'{"type":"pi')  # half a frame, never finished

    garbage = raw(daemon.socket)
    garbage.sendall(b"garbage\n")
    [err] = read_frames(garbage)
    assert err["type"] == "error" and err["code"] == "bad-frame"
    garbage.sendall(b'{"type":"ping","version":1,"id":7}\n')  # still served after an error
    [pong] = read_frames(garbage)
    assert pong["type"] == "pong" and pong["id"] == 7

    wrong = raw(daemon.socket)
    wrong.sendall(b'{"type":"ping","version":99}\n{"type":"launch","version":1,"cmd":"sh"}\n')
    codes = [f["code"] for f in read_frames(wrong, timeout=1.0)]
    codes += [f["code"] for f in read_frames(wrong, timeout=0.5)] if len(codes) < 2 else []
    assert codes == ["bad-version", "unknown-type"]

    big = raw(daemon.socket)
    big.sendall(b"x" * (p.MAX_FRAME + 10))
    frames = read_frames(big, until_eof=True)
    assert frames[-1]["code"] == "too-large"

    flood = raw(daemon.socket)
    flood.sendall(b"nope\n" * 50)
    frames = read_frames(flood, until_eof=True)
    assert frames[-1]["type"] == "error" and "too many bad frames" in frames[-1]["message"]

    # Everyone else is still served, promptly.
    t0 = time.monotonic()
    status = daemon.status()
    assert time.monotonic() - t0 < 1.0
    assert status["coordinator"]["connections"] >= 3  # silent, partial, garbage, wrong, ...
    link = AgentLink(daemon.socket, agent_info("fine"), lambda r, d: None, respawn_after_s=None)
    link.start()
    try:
        wait_until(lambda: "fine" in daemon.agents(), 5, "an agent registers meanwhile")
    finally:
        link.close({"exit_code": 0})
    assert daemon.proc.poll() is None
    for s in (silent, partial, garbage, wrong, big, flood):
        s.close()


def test_silent_and_unfinished_connections_are_dropped_after_a_timeout(sockdir):
    settings = CoordinatorSettings(
        socket_path=str(sockdir / "c.sock"), handshake_timeout_s=0.2, frame_timeout_s=0.2
    )
    c = InProcess(settings)
    try:
        silent = raw(settings.socket_path)
        partial = raw(settings.socket_path)
        partial.sendall(b'{"type":"ping","version":1}\n{"type":')
        assert read_frames(partial)[0]["type"] == "pong"
        for s in (silent, partial):
            frames = read_frames(s, until_eof=True)
            assert frames[-1]["code"] == "timeout"
            s.close()
        assert c.sync(lambda: len(c.coord.conns)) == 0
    finally:
        c.close()


def test_a_client_that_never_reads_is_dropped(sockdir):
    settings = CoordinatorSettings(socket_path=str(sockdir / "c.sock"), max_write_buffer=64 << 10)
    c = InProcess(settings)
    try:
        s = raw(settings.socket_path)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b'{"type":"status","version":1}\n' * 2000)
        wait_until(
            lambda: c.sync(lambda: len(c.coord.conns)) == 0, 10, "the reader-less client is dropped"
        )
        assert query.ping(settings.socket_path).pid == os.getpid()
        s.close()
    finally:
        c.close()


def _as_nobody(path: str, frame: bytes) -> str:
    """Connect to ``path`` as uid nobody (a forked child drops privileges); what it saw."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            become_nobody()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
            except OSError as e:
                os.write(w, f"CONNECT {e.errno}".encode())
                os._exit(0)
            try:
                s.sendall(frame)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                os.write(w, b"GOT " + data)
            except OSError as e:
                os.write(w, f"IO {e.errno}".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


def test_another_uid_is_refused(daemon, sockdir):
    register = p.encode(p.Register(agent_id="x", name="evil", launcher_pid=1, child_pid=1,
                                   argv=[], started=0.0))  # fmt: skip
    # The directory (0700) keeps other users out in the first place.
    assert _as_nobody(daemon.socket, register) == "CONNECT 13"
    # With the directory and socket opened up (test only), SO_PEERCRED still refuses it.
    os.chmod(sockdir, 0o711)
    os.chmod(daemon.socket, 0o666)
    out = _as_nobody(daemon.socket, register)
    assert out.startswith("GOT ")
    [answer] = [json.loads(x) for x in out[4:].splitlines()]
    assert answer["type"] == "error" and answer["code"] == "forbidden"
    assert f"uid {NOBODY}" in answer["message"]
    assert daemon.agents() == {}
    refused = daemon.events("security.refused")
    assert refused and refused[0]["uid"] == NOBODY


def test_the_coordinator_protects_itself_from_the_oom_killer(daemon):
    with open("/proc/self/status") as f:
        caps = int(next(x for x in f if x.startswith("CapEff:")).split()[1], 16)
    if os.geteuid() != 0 or not caps & (1 << 24):  # CAP_SYS_RESOURCE
        wait_until(lambda: "oom_score_adj" in daemon.stderr(), 5, "the daemon says why not")
        pytest.skip("lowering oom_score_adj needs root with CAP_SYS_RESOURCE")
    with open(f"/proc/{daemon.proc.pid}/oom_score_adj") as f:
        assert int(f.read()) == -500


def test_a_second_coordinator_on_the_same_socket_exits_quietly(daemon):
    second = subprocess.run(
        [PYTHON, "-m", "pmrun", "coordinator", "--socket", daemon.socket],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert second.returncode == 0
    assert daemon.proc.poll() is None
    assert query.ping(daemon.socket).pid == daemon.proc.pid


def test_sigterm_stops_cleanly_and_removes_the_socket(daemon):
    assert daemon.terminate() == 0
    assert not os.path.exists(daemon.socket)
    assert daemon.events("coordinator.stop")
    with pytest.raises(CoordinatorUnavailable, match="no coordinator answers"):
        query.status(daemon.socket)


def test_an_unsafe_socket_directory_is_refused_with_a_clear_error(sockdir, run_pmrun):
    (sockdir / "real").mkdir(mode=0o700)
    (sockdir / "link").symlink_to(sockdir / "real")
    r = run_pmrun("coordinator", "--socket", str(sockdir / "link" / "c.sock"), timeout=20)
    assert r.returncode == 1
    assert "symlink" in r.stderr and "Traceback" not in r.stderr


def test_an_unwritable_event_log_does_not_stop_the_coordinator(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--events", "/dev/full").start()
    query.cleanup(d.socket)
    query.cleanup(d.socket)
    assert d.status()["coordinator"]["events"] == "/dev/full"
    assert d.stderr().count("cannot write the event log") == 1


def test_status_is_complete_and_json_serializable(daemon, procs):
    link = AgentLink(
        daemon.socket, agent_info("alpha", priority=3), lambda r, d: None, respawn_after_s=None
    )
    link.start()
    link.report(123 * MIB, 150 * MIB, [(os.getpid(), 1)])
    service = procs.popen(
        [PYTHON, "-c", "import time; from pmrun.client import register_cleanup;"
         "register_cleanup('svc', lambda f: 0, stats=lambda: {'bytes': 4096}); time.sleep(60)"],
        env={**os.environ, "PMRUN_SOCKET": daemon.socket, "PMRUN_AGENT_ID": "id-alpha"},
    )  # fmt: skip
    try:

        def ready():
            a = daemon.agents().get("alpha")
            return a and a["rss_bytes"] == 123 * MIB and a["services"] and a["services"][0]["bytes"]

        wait_until(ready, 10, "agent and service in status")
        status = daemon.status()
        assert json.loads(json.dumps(status)) == status
        assert set(status) >= {"version", "ts", "coordinator", "system", "pool", "pressure",
                               "agents", "services"}  # fmt: skip
        sysm = status["system"]
        assert sysm["total_bytes"] > 0 and 0 < sysm["used_bytes"] < sysm["total_bytes"]
        assert sysm["threshold"] == 0.8 and sysm["psi_threshold"] == 0.1
        if os.path.exists("/proc/pressure/memory"):
            assert set(sysm["psi"]) == {"some_avg10", "full_avg10"}
        assert status["pool"]["limit_bytes"] == 2 << 30
        assert status["pool"]["used_bytes"] == 123 * MIB
        assert status["pressure"]["level"] == "normal"
        a = status["agents"][0]
        assert (a["id"], a["pid"], a["child_pid"], a["priority"]) == (
            "id-alpha",
            os.getpid(),
            os.getpid(),
            3,
        )
        assert (a["peak_bytes"], a["max_bytes"], a["warn_bytes"]) == (150 * MIB, 1 << 30, 1 << 29)
        assert a["state"] == "running" and a["age_s"] >= 0 and a["backend"]["name"] == "sampling"
        svc = a["services"][0]
        assert (svc["name"], svc["pid"], svc["bytes"]) == ("svc", service.pid, 4096)
        assert status["services"] == []
    finally:
        link.close({"exit_code": 0})
    wait_until(lambda: "alpha" not in daemon.agents(), 5, "deregistered")
    dereg = daemon.events("agent.deregister")
    assert dereg[-1]["report"] == {"exit_code": 0}


SERVICE = """
import sys, time
from pmrun.client import register_cleanup
cache = [bytearray(b"c") * (1 << 20) for _ in range(40)]
def evict(fraction):
    n = int(len(cache) * fraction)
    del cache[:n]
    return n << 20
def broken(fraction):
    raise RuntimeError("out of luck")
register_cleanup("cache", evict)
register_cleanup("broken", broken)
print("READY", flush=True)
time.sleep(60)
"""


def test_cleanup_command_prints_what_each_service_freed(daemon, procs, run_pmrun):
    svc = procs.popen([PYTHON, "-c", SERVICE], stdout=subprocess.PIPE, text=True,
                      env={**os.environ, "PMRUN_SOCKET": daemon.socket})  # fmt: skip
    assert svc.stdout.readline().strip() == "READY"
    wait_until(lambda: len(daemon.status()["services"]) == 2, 10, "services registered")
    r = run_pmrun("cleanup", "--socket", daemon.socket, "--fraction", "50%", timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "PID", "AGENT", "FREED", "RSS", "DROP", "TIME"]
    cache_line = next(x for x in lines if x.startswith("cache"))
    assert "20.0M" in cache_line
    assert "RuntimeError: out of luck" in next(x for x in lines if x.startswith("broken"))
    assert "asked 2 services for 50%" in lines[-1] and "1 failed" in lines[-1]
    result = [e for e in daemon.events("evict.result") if e["pressure"] == "manual"][-1]
    assert {a["service"] for a in result["answered"]} == {"cache", "broken"}
    assert result["freed_bytes"] == 20 * MIB

    r = run_pmrun("cleanup", "--socket", daemon.socket, "--json", timeout=30)
    out = json.loads(r.stdout)
    assert out["fraction"] == 0.75 and len(out["results"]) == 2

    r = run_pmrun("cleanup", "--socket", daemon.socket, "--agent", "nope", timeout=30)
    assert r.returncode == 1 and "no agent 'nope'" in r.stderr


def test_cleanup_without_a_coordinator_fails_with_exit_1(sockdir, run_pmrun):
    r = run_pmrun("cleanup", "--socket", str(sockdir / "none.sock"), timeout=30)
    assert r.returncode == 1 and "no coordinator answers" in r.stderr


def test_query_errors_are_pmrun_errors(daemon):
    with pytest.raises(PmrunError, match="no agent"):
        query.heap(daemon.socket, agent="nobody-here")


def test_launcher_events_are_logged_without_clobbering_the_agent(daemon):
    link = AgentLink(daemon.socket, agent_info("evented"), lambda r, d: None, respawn_after_s=None)
    link.start()
    try:
        wait_until(lambda: "evented" in daemon.agents(), 5, "registered")
        link.event("warn", rss=5, name="not the agent's name", level="nope", agent="x")
        ev = wait_until(lambda: daemon.events("launcher.warn"), 5, "event logged")[0]
        assert (ev["agent"], ev["name"], ev["level"], ev["rss"]) == (
            "id-evented",
            "evented",
            "warning",
            5,
        )
    finally:
        link.close({})
