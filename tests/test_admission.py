"""Wait before start: the queue's decision as a table, and real launchers queueing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coordinator_fixtures import PMRUN, PYTHON, Daemon, PmrunAgent, Procs
from helpers import wait_until
from pmrun.coordinator.policy import Waiting, admit, learned_peak

MIB = 1 << 20


def w(seq: int, mb: int, prio: int = 0) -> Waiting:
    return Waiting(seq=seq, agent_id=f"a{seq}", priority=prio, expect_bytes=mb * MIB)


def go(queue: list[Waiting], *, used: int = 0, limit: int = 1000, reserved: int = 0,
       idle: bool = False, sys_used: int = 0, sys_limit: int = 0) -> list[int]:  # fmt: skip
    return [
        x.seq
        for x in admit(
            queue,
            pool_used=used * MIB,
            pool_limit=limit * MIB,
            system_used=sys_used * MIB,
            system_threshold=sys_limit * MIB,
            reserved_bytes=reserved * MIB,
            idle=idle,
        )  # fmt: skip
    ]


@pytest.mark.parametrize(
    "queue, kw, expected",
    [
        ([w(1, 300), w(2, 300)], {"used": 300}, [1, 2]),  # both fit
        ([w(1, 300), w(2, 300)], {"used": 500}, [1]),  # the second waits
        ([w(1, 600), w(2, 10)], {"used": 500}, []),  # strict FIFO: no overtaking
        ([w(1, 600), w(2, 10, prio=1)], {"used": 500}, [2]),  # higher priority first
        ([w(1, 300)], {"used": 500, "reserved": 300}, []),  # a fresh start's size is reserved
        ([w(1, 5000), w(2, 10)], {"idle": True}, [1]),  # too big for the machine: alone
        ([w(1, 5000)], {"idle": False}, []),  # ...but only on an idle pool
        ([w(1, 300)], {"limit": 0, "sys_used": 900, "sys_limit": 1000}, []),  # system short
        ([w(1, 50)], {"limit": 0, "sys_used": 900, "sys_limit": 1000}, [1]),
        # unknown size: starts while the pool stays under its warning level (90%)
        ([Waiting(1, "u", 0, None)], {"used": 899}, [1]),
        ([Waiting(1, "u", 0, None)], {"used": 901}, []),
        ([Waiting(1, "u", 0, None)], {"used": 800, "reserved": 101}, []),
    ],
)
def test_admit(queue, kw, expected):
    assert go(queue, **kw) == expected


def test_learned_peak_is_the_largest_recent_one():
    assert learned_peak([100, 300, 200]) == 300
    assert learned_peak([]) is None


# -- real launchers ---------------------------------------------------------------------------

AGENT = r"""
import os, sys, time
ballast = bytearray(b"x") * (int(sys.argv[1]) << 20)
print("STARTED", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
"""

pytestmark = pytest.mark.skipif(not os.path.exists(PMRUN), reason="pmrun is not installed")


class Agent(PmrunAgent):
    """``pmrun -- python AGENT MB HOLD`` on the sampling backend."""

    def __init__(self, procs: Procs, sock: str, name: str, mb: int, hold: Path, *extra: str,
                 tmp: Path) -> None:  # fmt: skip
        command = [PYTHON, "-c", AGENT, str(mb), str(hold)]
        super().__init__(procs, sock, name, command, "--backend", "sampling", *extra, tmp=tmp)

    @property
    def started(self) -> bool:
        return "STARTED" in self.out


def test_third_agent_waits_and_starts_when_the_first_ends(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "300M", "--psi-threshold", "off",
               "--system-threshold", "99%").start()  # fmt: skip
    holds = [sockdir / f"hold{i}" for i in range(3)]
    a = Agent(procs, d.socket, "a", 100, holds[0], "--expect", "120M", tmp=sockdir)
    wait_until(lambda: a.started, 20, "a started")
    b = Agent(procs, d.socket, "b", 100, holds[1], "--expect", "120M", tmp=sockdir)
    wait_until(lambda: b.started, 20, "b started")
    c = Agent(procs, d.socket, "c", 100, holds[2], "--expect", "120M", tmp=sockdir)
    wait_until(lambda: d.status()["waiting"], 10, "c queued")
    [row] = d.status()["waiting"]
    assert row["name"] == "c" and row["expect_bytes"] == 120 * MIB and row["state"] == "waiting"
    wait_until(lambda: any("waiting for memory" in x for x in c.err), 5, "c's stderr line")
    [line] = [x for x in c.err if "waiting for memory" in x]
    assert "0 ahead" in line and "--no-wait" in line
    assert not c.started
    holds[0].touch()  # a ends: c fits
    assert a.proc.wait(20) == 0
    wait_until(lambda: c.started, 20, "c started once a ended")
    [ev] = d.events("admission.start")
    assert ev["name"] == "c" and ev["why"] == "fits" and ev["waited_s"] > 0
    for h in holds[1:]:
        h.touch()
    assert b.proc.wait(20) == 0 and c.proc.wait(20) == 0


def test_no_wait_starts_at_once_and_wait_timeout_exit_gives_75(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "200M", "--psi-threshold", "off",
               "--system-threshold", "99%").start()  # fmt: skip
    hold = sockdir / "hold"
    a = Agent(procs, d.socket, "a", 100, hold, "--expect", "150M", tmp=sockdir)
    wait_until(lambda: a.started, 20, "a started")
    late = Agent(procs, d.socket, "late", 10, hold, "--expect", "100M", "--wait-timeout",
                 "0.5", "--wait-expired", "exit", tmp=sockdir)  # fmt: skip
    assert late.proc.wait(20) == 75 and not late.started
    assert any("gave up waiting" in x for x in late.err)
    eager = Agent(procs, d.socket, "eager", 10, hold, "--expect", "100M", "--no-wait",
                  tmp=sockdir)  # fmt: skip
    wait_until(lambda: eager.started, 20, "--no-wait started at once")
    hold.touch()
    assert a.proc.wait(20) == 0 and eager.proc.wait(20) == 0


def test_an_agent_too_big_for_the_pool_starts_alone(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "100M", "--psi-threshold", "off",
               "--system-threshold", "99%", "--no-pause").start()  # fmt: skip
    hold = sockdir / "hold"
    hold.touch()
    big = Agent(procs, d.socket, "big", 10, hold, "--expect", "1G", tmp=sockdir)
    assert big.proc.wait(20) == 0 and big.started
    [ev] = d.events("admission.start")
    assert ev["why"] == "alone"


def test_the_expected_size_is_learned_from_the_last_run(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "1G", "--psi-threshold", "off",
               "--system-threshold", "99%").start()  # fmt: skip
    hold = sockdir / "hold"
    hold.touch()
    first = Agent(procs, d.socket, "same", 60, hold, tmp=sockdir)
    assert first.proc.wait(20) == 0
    r = json.loads(first.report.read_text())
    peak = max(
        r["peak_rss_bytes"], r["ru_maxrss_bytes"]
    )  # a short run's peak may fall between samples
    wait_until(lambda: d.events("agent.deregister"), 5, "first deregistered")
    hold2 = sockdir / "hold2"
    blocker = Agent(procs, d.socket, "blocker", 10, hold2, "--expect", "990M", tmp=sockdir)
    wait_until(lambda: blocker.started, 20, "blocker started")
    second = Agent(procs, d.socket, "same", 10, hold, tmp=sockdir)
    wait_until(lambda: d.status()["waiting"], 10, f"second queued: {second.err} {d.events()[-6:]}")
    [row] = d.status()["waiting"]
    assert row["expect_source"] == "learned" and row["expect_bytes"] == peak
    hold2.touch()
    assert blocker.proc.wait(20) == 0 and second.proc.wait(20) == 0


def test_status_rows_show_paused_and_waiting_agents():
    from pmrun.diagnostics.status import agent_rows

    status = {
        "ts": 100.0,
        "agents": [
            {"name": "a", "pid": 1, "state": "paused", "paused_s": 12.0, "rss_bytes": 10},
            {"name": "b", "pid": 2, "state": "running", "paused_s": None, "rss_bytes": 10},
        ],
        "waiting": [
            {"name": "c", "pid": 3, "expect_bytes": 900 * MIB, "waiting_s": 3.0, "ahead": 1}
        ],  # fmt: skip
    }
    states = {cells[0]: cells[-1] for _, cells in agent_rows(status)}
    assert states["a"] == "paused 12s" and states["b"] == "running"
    assert states["c"] == "waiting 3s, 1 ahead"
