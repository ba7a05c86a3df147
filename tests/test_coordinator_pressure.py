"""Pressure handling with real daemons and real agent processes, and the controller's timing
(cooldown, hysteresis, priorities) on an in-process coordinator with a fake clock and /proc."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from coordinator_fixtures import Daemon, FakeLauncher, InProcess, fake_proc
from helpers import FakeClock, agent_info, pid_alive, wait_until
from pmrun.coordinator import protocol as p
from pmrun.coordinator.link import AgentLink
from pmrun.coordinator.server import CoordinatorSettings
from pmrun.events import read_events

MIB = 1 << 20


def stopped(launchers) -> list[str]:
    return [f.name for f in launchers if f.value("STOP") is not None]


# -- real daemons, real agents -------------------------------------------------------------


def test_three_agents_over_a_small_pool_evict_first_then_stop_exactly_the_largest(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "300M").start()
    big = FakeLauncher(procs, d.socket, "big", 150)
    big.wait_line("READY")
    wait_until(
        lambda: d.agents().get("big", {}).get("rss_bytes", 0) >= 150 * MIB, 10, "big reported"
    )
    mid = FakeLauncher(procs, d.socket, "mid", 40, cache_mb=20)
    mid.wait_line("READY")
    wait_until(lambda: d.agents().get("mid", {}).get("services"), 10, "mid's service registered")
    # 150 + 40 + 20 (cache) + 140 MB: over the 300M pool by a margin that counting
    # shared pages once (PSS, near the limit) cannot take away.
    small = FakeLauncher(procs, d.socket, "small", 140)

    assert big.wait_line("STOP") == "pool"
    assert big.proc.wait(10) == 137
    wait_until(lambda: "big" not in d.agents(), 5, "big deregistered")
    assert stopped([big, mid, small]) == ["big"]
    for f in (mid, small):
        assert f.proc.poll() is None and pid_alive(f.child_pid)

    events = d.events()
    kinds = [e["kind"] for e in events]
    answers = [e for e in events if e["kind"] == "evict.result" and e["answered"]]
    assert answers, "the eviction broadcast reached the cooperating service"
    first_answer = answers[0]
    assert first_answer["answered"][0]["service"] == "cache"
    assert first_answer["answered"][0]["agent"] == d.events("agent.register")[1]["agent"]
    assert first_answer["answered"][0]["bytes"] > 0
    [decision] = [e for e in events if e["kind"] == "stop.decision"]
    assert kinds.index("evict.result") < kinds.index("stop.decision")
    assert [v["name"] for v in decision["victims"]] == ["big"]
    assert decision["reason"] == "pool" and decision["counted"] == "pss"
    assert {c["name"] for c in decision["candidates"]} == {"big", "mid", "small"}
    assert decision["figures"]["pool_used_bytes"] >= decision["figures"]["pool_limit_bytes"]
    [sent] = d.events("stop.sent")
    assert sent["name"] == "big" and sent["reason"] == "pool" and sent["delivered"]
    dereg = [e for e in d.events("agent.deregister") if e["name"] == "big"]
    assert dereg[0]["report"]["reason"] == "pool" and dereg[0]["report"]["exit_status"] == 137
    launcher_events = d.events("launcher.stop")
    assert launcher_events[0]["name"] == "big"
    wait_until(lambda: d.status()["pressure"]["level"] == "normal", 10, "pressure relieved")


def test_a_service_that_frees_enough_saves_every_agent(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "300M", "--evict-fraction", "1.0").start()
    big = FakeLauncher(procs, d.socket, "big", 100)
    big.wait_line("READY")
    holder = FakeLauncher(procs, d.socket, "holder", 10, cache_mb=100)
    holder.wait_line("READY")
    wait_until(lambda: d.agents().get("holder", {}).get("services"), 10, "service registered")
    assert d.status()["pressure"]["level"] == "normal"
    small = FakeLauncher(procs, d.socket, "small", 80)  # the sum crosses the pool
    small.wait_line("READY")

    def freed():
        return [e for e in d.events("evict.result") if e["freed_bytes"] > 0]

    wait_until(freed, 10, "the service answered an eviction")

    def relieved():
        s = d.status()
        return s["pool"]["used_bytes"] < 300 * MIB and s["pressure"]["level"] != "critical"

    wait_until(relieved, 10, "the pool is back under its limit")
    assert not [e for e in d.events("stop.decision") if e["victims"]]
    assert not d.events("stop.sent")
    assert stopped([big, holder, small]) == []
    assert all(f.proc.poll() is None for f in (big, holder, small))
    holder_status = d.agents()["holder"]
    assert holder_status["services"][0]["last_eviction"]["bytes"] > 0


def test_dry_run_logs_the_decision_and_stops_nothing(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "100M", "--dry-run").start()
    agent = FakeLauncher(procs, d.socket, "hog", 150)
    decision = wait_until(lambda: d.events("stop.decision"), 10, "a decision is logged")[0]
    assert decision["dry_run"] is True and [v["name"] for v in decision["victims"]] == ["hog"]
    assert not d.events("stop.sent")
    assert agent.value("STOP") is None and agent.proc.poll() is None
    assert d.status()["pressure"]["last_decision"]["dry_run"] is True


def test_coordinator_sigkill_and_restart_agents_keep_running_and_register_again(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    agents = [FakeLauncher(procs, d.socket, name, 5) for name in ("one", "two")]
    wait_until(lambda: set(d.agents()) == {"one", "two"}, 10, "both registered")
    d.kill()
    children = [a.child_pid for a in agents]
    # Launchers and agents carry on while no coordinator runs.
    wait_until(lambda: all(a.proc.poll() is None for a in agents), 1, "launchers alive")
    assert all(pid_alive(c) for c in children)
    again = Daemon(procs, d.socket).start()
    wait_until(lambda: set(again.agents()) == {"one", "two"}, 10, "both registered again")
    assert all(pid_alive(c) for c in children) and all(a.proc.poll() is None for a in agents)
    assert [a.value("STOP") for a in agents] == [None, None]


def test_a_launcher_killed_with_sigkill_leaves_no_orphans(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    f = FakeLauncher(procs, d.socket, "doomed", 5, escape=True)
    grandchild = int(f.wait_line("GRANDCHILD"))
    child = f.child_pid
    wait_until(lambda: d.agents().get("doomed", {}).get("processes", 0) >= 2, 10, "tree reported")
    os.kill(f.proc.pid, signal.SIGKILL)
    f.proc.wait(5)
    wait_until(lambda: not pid_alive(child), 5, "the child died with its launcher (pdeathsig)")
    wait_until(
        lambda: not pid_alive(grandchild), 5, "the coordinator killed the escaped grandchild"
    )
    wait_until(lambda: d.events("agent.lost"), 5, "agent.lost logged")
    [lost] = d.events("agent.lost")
    assert lost["name"] == "doomed" and lost["launcher_alive"] is False
    assert grandchild in lost["orphans_killed"]
    assert "doomed" not in d.agents()


def test_a_pool_crossing_is_handled_within_a_second(sockdir):
    settings = CoordinatorSettings(socket_path=str(sockdir / "c.sock"), pool_bytes=100 * MIB,
                                   dry_run=True, settle_s=0.05)  # fmt: skip
    c = InProcess(settings)
    link = AgentLink(settings.socket_path, info("hog"), lambda r, d: None, respawn_after_s=None)
    try:
        link.start()
        wait_until(lambda: link.connected, 5, "registered")
        crossed = time.time()
        link.report(150 * MIB, 150 * MIB, [])
        decision = wait_until(lambda: read_events(settings.events_file, kinds=["stop.decision"]), 2)
        assert decision[0]["ts"] - crossed < 1.0
        request = read_events(settings.events_file, kinds=["evict.request"])[0]
        assert request["ts"] - crossed < 1.0
    finally:
        link.close({})
        c.close()


# -- the controller, step by step, with a fake clock and a fake /proc ------------------------


def info(name: str, priority: int = 0) -> dict:
    """An agent without limits of its own."""
    return agent_info(name, priority=priority, max_rss=None, warn_rss=None, backend={})


class Fleet:
    """Fake agents (AgentLinks in this process) that record stop orders."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.links: dict[str, AgentLink] = {}
        self.orders: list[tuple[str, str]] = []

    def add(self, name: str, mib: int, priority: int = 0) -> None:
        link = AgentLink(self.socket_path, info(name, priority),
                         lambda reason, detail: self.orders.append((name, reason)), respawn_after_s=None)  # fmt: skip
        link.report(mib * MIB, mib * MIB, [])
        link.start()
        self.links[name] = link

    def close(self, name: str) -> None:
        self.links.pop(name).close({"exit_code": 137})

    def close_all(self) -> None:
        for name in list(self.links):
            self.close(name)


@pytest.fixture
def controller(tmp_path, sockdir):
    clock = FakeClock()
    proc = fake_proc(tmp_path / "proc", total_mib=1000, available_mib=1000)
    settings = CoordinatorSettings(
        socket_path=str(sockdir / "c.sock"), pool_bytes=0, system_threshold=0.8,
        psi_threshold=0.10, tick_s=3600, tick_min_s=3600, settle_s=0.2, proc=proc,
    )  # fmt: skip
    c = InProcess(settings, clock=clock)
    fleet = Fleet(settings.socket_path)

    def used(mib: int, psi: float = 0.0) -> None:
        fake_proc(tmp_path / "proc", total_mib=1000, available_mib=1000 - mib, psi=psi)

    def step() -> None:
        c.call(c.coord.step())

    def decisions() -> list[dict]:
        return [e for e in read_events(settings.events_file, kinds=["stop.decision"])]

    yield c, clock, fleet, used, step, decisions
    fleet.close_all()
    c.close()


def test_cooldown_priority_and_hard_crossings(controller):
    c, clock, fleet, used, step, decisions = controller
    fleet.add("a", 300)
    fleet.add("b", 200)
    fleet.add("vip", 400, priority=5)
    wait_until(lambda: c.sync(lambda: len(c.coord.pool.agents)) == 3, 5, "registered")

    used(850)  # threshold 800 MiB: 50 over, plus a 16 MiB buffer
    step()
    wait_until(lambda: fleet.orders, 5, "a stop order")
    assert fleet.orders == [("a", "system-pressure")]  # the largest of the lowest priority
    assert decisions()[-1]["needed_bytes"] == 66 * MIB

    step()  # a's memory is on its way out: nobody else is stopped for the same excess
    assert len(decisions()) == 1
    fleet.close("a")
    wait_until(lambda: c.sync(lambda: len(c.coord.pool.agents)) == 2, 5, "a gone")

    clock.tick(1)
    step()  # still 850 but within the cooldown, and not a hard crossing (< 110%)
    assert len(decisions()) == 1

    clock.tick(1)
    used(900)  # 112.5% of the threshold: a hard crossing skips the cooldown
    step()
    wait_until(lambda: len(fleet.orders) == 2, 5, "a second stop order")
    assert fleet.orders[1] == ("b", "system-pressure")
    fleet.close("b")
    wait_until(lambda: c.sync(lambda: len(c.coord.pool.agents)) == 1, 5, "b gone")

    clock.tick(10)  # after the cooldown even the high-priority agent goes if it must
    used(850)
    step()
    wait_until(lambda: len(fleet.orders) == 3, 5, "a third stop order")
    assert fleet.orders[2] == ("vip", "system-pressure")
    stops = decisions()
    assert [[v["name"] for v in d["victims"]] for d in stops] == [["a"], ["b"], ["vip"]]
    assert all(d["signal"] == "system" for d in stops)


def test_psi_over_its_threshold_stops_one_agent(controller):
    c, clock, fleet, used, step, decisions = controller
    fleet.add("a", 100)
    fleet.add("b", 50)
    wait_until(lambda: c.sync(lambda: len(c.coord.pool.agents)) == 2, 5, "registered")
    used(100, psi=25.0)
    step()
    wait_until(lambda: fleet.orders, 5, "a stop order")
    assert fleet.orders == [("a", "system-pressure")]
    assert decisions()[-1]["signal"] == "psi"


class RawService:
    """A service speaking the protocol by hand; records each eviction request."""

    def __init__(self, socket_path: str, name: str = "svc", answer: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)
        self.sock.sendall(p.encode(p.Service(name=name, pid=os.getpid())))
        self.name, self.answer = name, answer
        self.requests: list[p.Evict] = []
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        buf = p.FrameBuffer(p.MAX_REPLY_FRAME)
        while data := self.sock.recv(1 << 16):
            for frame in buf.feed(data):
                msg = p.decode(frame, p.MAX_REPLY_FRAME)
                if isinstance(msg, p.Evict):
                    self.requests.append(msg)
                    if self.answer:
                        result = {"name": self.name, "bytes": 1000, "rss_drop": 0}
                        self.sock.sendall(p.encode(p.Evicted(id=msg.id, results=[result])))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader before the fd is released
        self._t.join(5)
        self.sock.close()


def test_levels_broadcast_once_each_with_their_fraction(controller):
    c, clock, fleet, used, step, decisions = controller
    svc = RawService(c.settings.socket_path)
    silent = RawService(c.settings.socket_path, name="silent", answer=False)
    try:
        wait_until(
            lambda: c.sync(lambda: len(c.coord.pool.services)) == 2, 5, "services registered"
        )
        used(730)  # 91% of the threshold: warning
        step()
        assert [(r.level, r.fraction) for r in svc.requests] == [("warning", 0.25)]
        used(690)  # 86%: inside the release band, still warning: no new broadcast
        step()
        used(800)  # critical
        step()
        used(765)  # 95.6%: still critical
        step()
        assert [(r.level, r.fraction) for r in svc.requests] == [
            ("warning", 0.25),
            ("critical", 0.75),
        ]
        used(500)
        step()
        levels = [(e["previous"], e["pressure"])
                  for e in read_events(c.settings.events_file, kinds=["pressure"])]  # fmt: skip
        assert levels == [("normal", "warning"), ("warning", "critical"), ("critical", "normal")]
        results = read_events(c.settings.events_file, kinds=["evict.result"])
        assert [a["service"] for a in results[0]["answered"]] == ["svc"]
        assert [a["service"] for a in results[0]["no_answer"]] == ["silent"]
        assert results[0]["freed_bytes"] == 1000
        # The silent service was waited for (its settle time), then given up: the step ended.
        assert results[0]["elapsed_s"] >= c.settings.settle_s
    finally:
        svc.close()
        silent.close()


def test_status_reflects_pressure_and_is_json(controller):
    c, clock, fleet, used, step, decisions = controller
    used(820)
    step()
    status = c.sync(c.coord.status)
    assert json.loads(json.dumps(status)) == status
    assert status["pressure"]["level"] == "critical"
    assert status["pressure"]["signals"]["system"] == "critical"
    assert status["system"]["used_bytes"] == 820 * MIB
    assert status["system"]["threshold_bytes"] == 800 * MIB
    assert status["pressure"]["last_decision"]["victims"] == []  # no agent to stop


# -- the only pids the coordinator signals ---------------------------------------------------


def test_kill_orphans_checks_start_time_age_and_uid(procs):
    from pmrun import _procfs
    from pmrun.coordinator.orphans import kill_orphans

    victim = procs.popen(["sleep", "60"])
    start = wait_until(lambda: _procfs.start_time(victim.pid), 5, "started")
    uid = os.geteuid()
    assert kill_orphans([[victim.pid, start + 1]], uid, None) == []  # pid reused
    assert kill_orphans([[victim.pid, start]], uid + 1, None) == []  # someone else's
    assert kill_orphans([[victim.pid, start]], uid, start + 1) == []  # older than its launcher
    assert pid_alive(victim.pid)
    assert kill_orphans([[victim.pid, start]], uid, start) == [victim.pid]
    victim.wait(5)
    assert victim.returncode == -signal.SIGKILL


def test_a_dropped_connection_of_a_live_launcher_kills_nothing(procs, sockdir):
    from pmrun import _procfs

    d = Daemon(procs, str(sockdir / "c.sock")).start()
    child = procs.popen(["sleep", "60"])
    start = wait_until(lambda: _procfs.start_time(child.pid), 5, "started")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.socket)
    s.sendall(
        p.encode(
            p.Register(
                agent_id="live",
                name="live",
                launcher_pid=os.getpid(),
                child_pid=child.pid,
                argv=[],
                started=time.time(),
                pids=[[child.pid, start]],
            )  # fmt: skip
        )
    )
    wait_until(lambda: "live" in d.agents(), 5, "registered")
    s.close()  # the "launcher" (this process) lives on
    lost = wait_until(lambda: d.events("agent.lost"), 10, "agent.lost")[0]
    assert lost["launcher_alive"] is True and lost["orphans_killed"] == []
    assert pid_alive(child.pid) and "live" not in d.agents()
