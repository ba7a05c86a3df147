"""The launcher's side: AgentLink (throttling, heartbeat, reconnects, stop orders, close)
against a scripted fake coordinator, and ensure_coordinator starting a real one on demand."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from coordinator_fixtures import PYTHON, coordinator_pids
from helpers import agent_info, wait_until
from pmrun.coordinator import protocol as p
from pmrun.coordinator import query
from pmrun.coordinator.link import AgentLink, ensure_coordinator
from pmrun.errors import SocketSecurityError

MIB = 1 << 20


class FakeCoordinator:
    """Accepts connections and records every decoded frame; can answer and hang up."""

    def __init__(self, path: str, *, ack: bool = True) -> None:
        self.path = path
        self.ack = ack
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.frames: list[tuple[int, p.Message, float]] = []
        self.conns: list[socket.socket] = []
        self._closed = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(len(self.conns) - 1, conn), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, index: int, conn: socket.socket) -> None:
        buf = p.FrameBuffer()
        try:
            while data := conn.recv(1 << 16):
                for frame in buf.feed(data):
                    msg = p.decode(frame)
                    self.frames.append((index, msg, time.monotonic()))
                    if self.ack and isinstance(msg, p.Deregister):
                        conn.sendall(p.encode(p.Ok(id=msg.id, of="deregister")))
        except OSError:
            pass

    def of(self, kind: type) -> list[p.Message]:
        return [m for _, m, _ in self.frames if isinstance(m, kind)]

    def send(self, msg: p.Message) -> None:
        self.conns[-1].sendall(p.encode(msg))

    def hang_up(self) -> None:
        self.conns[-1].shutdown(socket.SHUT_RDWR)  # closed in close(), after its reader ended

    def close(self) -> None:
        # Shut down before closing: a thread blocked in recv() on a closed descriptor would
        # go on reading from whatever socket reuses its number next.
        self._closed = True
        for s in (self.sock, *self.conns):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)
        self.sock.close()
        for c in self.conns:
            c.close()


def info(name: str = "agent") -> dict:
    return agent_info(name, argv=["x"], warn_rss=None, priority=1, backend={"name": "sampling"},
                      started=1.0)  # fmt: skip


@pytest.fixture
def fake(sockdir):
    f = FakeCoordinator(str(sockdir / "c.sock"))
    yield f
    f.close()


def test_report_is_cheap_and_only_meaningful_changes_are_sent_at_once(fake):
    # A heartbeat no loaded machine reaches within the test: only changes are sent.
    link = AgentLink(fake.path, info(), lambda r, d: None, heartbeat_s=3600.0, respawn_after_s=None)
    link.report(100 * MIB, 100 * MIB, [(1, 2)])
    link.start()
    wait_until(lambda: fake.of(p.Register), 5, "registered")
    [reg] = fake.of(p.Register)
    assert (reg.agent_id, reg.rss, reg.pids, reg.priority) == ("id-agent", 100 * MIB, [[1, 2]], 1)
    for i in range(20000):  # ~1000 samples/s near a limit, for 20 s
        link.report(100 * MIB + (i % 8) * MIB, 110 * MIB, [(1, 2)])
    link.report(100 * MIB + 7 * MIB, 110 * MIB, [(1, 2)])  # the last one before: under 8 MiB
    link.report(108 * MIB, 150 * MIB, [(1, 2)])  # exactly 8 MiB: meaningful
    wait_until(lambda: fake.of(p.Report), 2, "the meaningful change is sent before the heartbeat")
    # Only the change crossed the threshold: none of the 20,000 smaller moves was sent.
    assert [r.rss for r in fake.of(p.Report)] == [108 * MIB]
    link.close({"exit_code": 0})


def test_heartbeat_resends_unchanged_figures(fake):
    link = AgentLink(fake.path, info(), lambda r, d: None, heartbeat_s=0.05, respawn_after_s=None)
    link.report(10 * MIB, 10 * MIB, [])
    link.start()
    wait_until(lambda: len(fake.of(p.Report)) >= 4, 5, "heartbeats")
    assert {r.rss for r in fake.of(p.Report)} == {10 * MIB}
    link.close({})


def test_state_changes_and_events_are_sent_at_once(fake):
    link = AgentLink(fake.path, info(), lambda r, d: None, heartbeat_s=10.0, respawn_after_s=None)
    link.start()
    wait_until(lambda: fake.of(p.Register), 5, "registered")
    link.event("warn", rss_bytes=5, limit_bytes=4)
    link.report(0, 0, [], state="stopping")
    wait_until(lambda: fake.of(p.Event) and fake.of(p.Report), 2, "event and state sent")
    assert fake.of(p.Event)[0] == p.Event(kind="warn", fields={"rss_bytes": 5, "limit_bytes": 4})
    assert fake.of(p.Report)[0].state == "stopping"
    link.close({})


def test_a_stop_order_reaches_on_stop_in_the_link_thread(fake):
    calls: list[tuple[str, dict, str]] = []
    link = AgentLink(fake.path, info(),
                     lambda r, d: calls.append((r, d, threading.current_thread().name)), respawn_after_s=None)  # fmt: skip
    link.start()
    wait_until(lambda: fake.of(p.Register), 5, "registered")
    fake.send(p.Stop(reason="pool", detail={"needed_bytes": 5}))
    wait_until(lambda: calls, 5, "on_stop called")
    assert calls == [("pool", {"needed_bytes": 5}, "pmrun-link")]
    assert link.stop_reason == "pool"
    link.close({"exit_code": 137, "reason": "pool"})
    [dereg] = fake.of(p.Deregister)
    assert dereg.report == {"exit_code": 137, "reason": "pool"}


def test_close_from_on_stop_itself_deregisters(fake):
    holder: list[AgentLink] = []
    link = AgentLink(
        fake.path, info(), lambda r, d: holder[0].close({"reason": r}), respawn_after_s=None
    )
    holder.append(link)
    link.start()
    wait_until(lambda: fake.of(p.Register), 5, "registered")
    fake.send(p.Stop(reason="system-pressure"))
    wait_until(lambda: fake.of(p.Deregister), 5, "deregistered from the link thread")
    assert fake.of(p.Deregister)[0].report == {"reason": "system-pressure"}


def test_connection_lost_reconnects_with_backoff_and_registers_again(fake):
    link = AgentLink(
        fake.path, info(), lambda r, d: None, backoff_s=(0.05, 0.2), respawn_after_s=None
    )
    link.report(42 * MIB, 42 * MIB, [])
    link.start()
    wait_until(lambda: fake.of(p.Register), 5, "registered")
    assert link.registrations == 1
    fake.hang_up()
    wait_until(lambda: len(fake.of(p.Register)) == 2, 5, "registered again")
    regs = fake.of(p.Register)
    assert len(regs) == 2 and regs[1].rss == 42 * MIB and regs[1].agent_id == "id-agent"
    link.close({})


def test_no_coordinator_never_raises_and_close_is_quick(sockdir):
    link = AgentLink(str(sockdir / "nobody.sock"), info(), lambda r, d: None, respawn_after_s=None)
    link.start()
    for _ in range(1000):
        link.report(1, 1, [])
    link.event("warn")
    t0 = time.monotonic()
    link.close({})
    assert time.monotonic() - t0 < 0.3
    assert not link.connected


def test_close_is_bounded_when_the_coordinator_does_not_answer(sockdir):
    fake = FakeCoordinator(str(sockdir / "c.sock"), ack=False)
    try:
        link = AgentLink(fake.path, info(), lambda r, d: None, respawn_after_s=None)
        link.start()
        wait_until(lambda: fake.of(p.Register), 5, "registered")
        t0 = time.monotonic()
        link.close({"exit_code": 0})
        assert time.monotonic() - t0 < 0.7
        wait_until(lambda: fake.of(p.Deregister), 2, "the deregister was still sent")
    finally:
        fake.close()


def test_link_import_stays_light():
    code = ("import sys, pmrun.coordinator.link as l; "
            "print(sorted(m for m in ('asyncio', 'psutil', 'click', 'logging', 'dataclasses', 'pmrun.coordinator.server',"
            " 'pmrun.coordinator.spawn', 'subprocess') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _stop_daemons(path: str) -> None:
    for pid in coordinator_pids(path):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not coordinator_pids(path), 5, "daemons gone")


def test_ensure_coordinator_starts_one_detached_daemon_on_demand(sockdir):
    path = str(sockdir / "d" / "c.sock")
    try:
        assert ensure_coordinator(path) is False
        pong = wait_until(lambda: _ping(path), 10, "the spawned coordinator answers")
        assert pong.pid in coordinator_pids(path)
        with open(f"/proc/{pong.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert fields[1] == "1" or int(fields[1]) != os.getpid()  # not our child: reparented
        # A session of its own (setsid), yet not its leader (forked again after setsid).
        assert int(fields[3]) not in (os.getsid(0), pong.pid)
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        assert os.path.exists(os.path.join(os.path.dirname(path), "coordinator.log"))
        for _ in range(20):  # one answers: nothing more is started (its cost: benchmarks/)
            assert ensure_coordinator(path) is True
        assert coordinator_pids(path) == [pong.pid]
    finally:
        _stop_daemons(path)


def test_launchers_racing_start_exactly_one_coordinator(sockdir):
    path = str(sockdir / "c.sock")
    code = ("import sys; from pmrun.coordinator.link import ensure_coordinator; "
            "print(ensure_coordinator(sys.argv[1]))")  # fmt: skip
    try:
        racers = [subprocess.Popen([PYTHON, "-c", code, path], stdout=subprocess.PIPE, text=True)
                  for _ in range(4)]  # fmt: skip
        outs = [r.communicate(timeout=20)[0].strip() for r in racers]
        assert "False" in outs
        wait_until(lambda: _ping(path), 10, "a coordinator answers")
        wait_until(lambda: len(coordinator_pids(path)) == 1, 10, "the extra daemons exited")
        assert _ping(path).pid == coordinator_pids(path)[0]
    finally:
        _stop_daemons(path)


def test_ensure_coordinator_refuses_an_unsafe_directory(sockdir):
    (sockdir / "real").mkdir(mode=0o700)
    (sockdir / "link").symlink_to(sockdir / "real")
    with pytest.raises(SocketSecurityError, match="symlink"):
        ensure_coordinator(str(sockdir / "link" / "c.sock"))


def _ping(path: str):
    from pmrun.errors import CoordinatorUnavailable

    try:
        return query.ping(path, timeout_s=0.5)
    except CoordinatorUnavailable:
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_close_without_start_releases_everything(sockdir):
    before = len(os.listdir("/proc/self/fd"))
    link = AgentLink(str(sockdir / "c.sock"), info(), lambda r, d: None, respawn_after_s=None)
    link.report(1, 1, [])
    link.close({})
    link.report(2, 2, [])  # after close: still harmless
    assert len(os.listdir("/proc/self/fd")) == before


def test_ensure_coordinator_takes_a_full_backlog_for_a_busy_coordinator(tmp_path) -> None:
    """A full listen backlog (EAGAIN) means a coordinator is there: start no second one."""
    import socket as socketlib

    from pmrun.coordinator.link import ensure_coordinator

    path = str(tmp_path / "busy.sock")
    server = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    server.bind(path)
    server.listen(0)  # never accepts
    queued = []
    try:
        for _ in range(8):  # fill the backlog until a connect would block
            c = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(path)
            except BlockingIOError:
                c.close()
                break
            queued.append(c)
        assert ensure_coordinator(path) is True  # and nothing was started (the leak check)
    finally:
        for c in queued:
            c.close()
        server.close()


def test_an_agent_that_cannot_be_registered_is_said_once_and_the_link_ends(fake):
    said: list[str] = []
    bad = dict(info(), agent_id="i" * (p.MAX_AGENT_ID + 1))  # what no register may carry
    link = AgentLink(
        fake.path,
        bad,
        lambda r, d: None,
        say=said.append,
        backoff_s=(0.01, 0.02),
        respawn_after_s=None,
    )
    link.start()
    wait_until(lambda: link._finished.is_set(), 10, "the link gives up")
    assert len(said) == 1 and "not in the pool" in said[0] and link.refused
    assert not fake.of(p.Register)
    link.close()


def test_a_link_that_never_registers_says_so_once_and_keeps_trying(sockdir):
    said: list[str] = []
    link = AgentLink(str(sockdir / "nobody.sock"), info(), lambda r, d: None, say=said.append,
                     backoff_s=(0.01, 0.02), respawn_after_s=None, warn_after_s=0.1)  # fmt: skip
    link.start()
    try:
        wait_until(lambda: said, 10, "the link says it is not in the pool")
        count = link._thread.is_alive() and len(said)
        wait_until(lambda: link._thread.is_alive(), 1, "still trying")
    finally:
        link.close()
    assert count == 1 and "not in the pool yet" in said[0] and "coordinator.log" in said[0]
    assert len(said) == 1


def test_a_coordinator_that_never_answers_the_register_is_said_once(fake):
    said: list[str] = []  # the fake coordinator accepts and reads, and never acknowledges
    link = AgentLink(fake.path, info(), lambda r, d: None, say=said.append, heartbeat_s=0.05,
                     respawn_after_s=None, warn_after_s=0.2)  # fmt: skip
    link.start()
    try:
        wait_until(lambda: said, 10, "the link says the coordinator does not answer")
        wait_until(lambda: len(fake.of(p.Report)) > 10, 10, "reports go on meanwhile")
    finally:
        link.close()
    assert len(said) == 1 and "has not answered" in said[0]


def test_an_acknowledged_register_is_not_warned_about(sockdir):
    from coordinator_fixtures import InProcess
    from pmrun.coordinator.server import CoordinatorSettings

    c = InProcess(
        CoordinatorSettings(
            socket_path=str(sockdir / "c.sock"), events_path=str(sockdir / "e.jsonl")
        )
    )
    said: list[str] = []
    link = AgentLink(c.settings.socket_path, info(), lambda r, d: None, say=said.append,
                     heartbeat_s=0.05, respawn_after_s=None, warn_after_s=0.2)  # fmt: skip
    link.start()
    try:
        wait_until(lambda: link._acked, 10, "acknowledged")
        until = time.monotonic() + 0.5  # well past warn_after_s, heartbeats going on
        wait_until(lambda: time.monotonic() > until, 10, "half a second of heartbeats")
    finally:
        link.close()
        c.close()
    assert said == []


@pytest.mark.parametrize("hold", [True, False])
def test_a_coordinator_that_says_it_exits_decides_whether_the_link_starts_another(fake, hold):
    """After a clean stop (``hold``) the link never starts a coordinator, however long none
    answers; after an idle exit that raced its registration it starts one at once, not
    ``respawn_after_s`` later."""
    link = AgentLink(fake.path, info(), lambda r, d: None, backoff_s=(0.02, 0.05),
                     respawn_after_s=0.2 if hold else 3600.0)  # fmt: skip
    link.start()
    try:
        reg = wait_until(lambda: fake.of(p.Register), 5, "registered")[0]
        fake.send(p.Ok(id=reg.id, of="register"))
        fake.send(p.Shutdown(hold=hold))
        fake.close()
        if hold:  # ten times the respawn delay, and nothing starts
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert not coordinator_pids(fake.path), "a stop that should hold was undone"
                time.sleep(0.05)
        else:
            wait_until(lambda: coordinator_pids(fake.path), 20, "a coordinator started at once")
    finally:
        link.close()
        _stop_daemons(fake.path)
