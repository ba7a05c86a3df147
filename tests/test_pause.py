"""Pause before kill, end to end: real launchers, real agents, a real coordinator.

Two agents cross a small pool: the newest one that grows is frozen (SIGSTOP of its tree
on the sampling backend, the v1 freezer or v2 ``cgroup.freeze`` on the cgroup backend), resumed once the other
ends, and then finishes its work correctly. Around that: a runaway is stopped rather than
paused, ``--no-pause`` is honoured, ``--max-pause`` falls back to a stop, and a
coordinator killed while an agent is paused leaves it running, not frozen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from coordinator_fixtures import (
    PMRUN,
    PYTHON,
    Daemon,
    PmrunAgent,
    Procs,
    stop_every_coordinator,
)
from helpers import TIME_SCALE, wait_until
from pmrun import cgroups
from pmrun.cgroups._parse import parse_proc_cgroup
from pmrun.errors import PmrunError

MIB = 1 << 20

pytestmark = pytest.mark.skipif(not os.path.exists(PMRUN), reason="pmrun is not installed")

# Allocates MB in 10 MiB chunks (chunk i filled with i % 251), STEP_S apart; prints GOT
# after each (with BARRIER_MB and BARRIER, waits at that size for that path to exist);
# then checks every byte, waits for HOLD (a path, or "-") and exits 0 if the
# data is intact. A runaway variant (RUNAWAY=1) ignores SIGTERM for a while, so that it
# is seen over its own limit.
AGENT = r"""
import os, signal, sys, time
mb, step_s, hold = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if os.environ.get("RUNAWAY") == "1":
    signal.signal(signal.SIGTERM, lambda *_: None)
chunk_mb = int(os.environ.get("CHUNK_MB", "10"))
barrier_mb, barrier = int(os.environ.get("BARRIER_MB", "0")), os.environ.get("BARRIER")
chunks = []
for i in range(mb // chunk_mb):
    while barrier and i * chunk_mb >= barrier_mb and not os.path.exists(barrier):
        time.sleep(0.02)
    chunks.append(bytearray([i % 251]) * (chunk_mb << 20))
    print("GOT", (i + 1) * chunk_mb, flush=True)
    time.sleep(step_s)
print("READY", flush=True)
while hold != "-" and not os.path.exists(hold):
    time.sleep(0.02)
ok = all(c.count(i % 251) == len(c) for i, c in enumerate(chunks))
print("DONE", "ok" if ok else "corrupt", flush=True)
sys.exit(0 if ok else 3)
"""


class Agent(PmrunAgent):
    """A ``pmrun -- python AGENT MB STEP_S HOLD`` launcher (``--grace 2``)."""

    def __init__(self, procs: Procs, sock: str, name: str, mb: int, step_s: float, *extra: str,
                 hold: str = "-", backend: str = "sampling", env: dict[str, str] | None = None,
                 tmp: Path) -> None:  # fmt: skip
        command = [PYTHON, "-c", AGENT, str(mb), str(step_s), hold]
        super().__init__(procs, sock, name, command, "--backend", backend, "--grace", "2",
                         *extra, tmp=tmp, env=env)  # fmt: skip

    def got(self) -> int:
        return max((int(x.split()[1]) for x in self.out if x.startswith("GOT")), default=0)


def daemon(procs: Any, sockdir: Path, *args: str) -> Daemon:
    return Daemon(
        procs, str(sockdir / "c.sock"), "--pool", "300M", "--psi-threshold", "off",
        "--system-threshold", "99%", "--cooldown", "0.5", *args,
    ).start()  # fmt: skip


def events(d: Daemon, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [e for e in d.events(kind) if name is None or e.get("name") == name]


def tree_states(d: Daemon, name: str) -> set[str]:
    """The /proc state letters of the agent's command processes."""
    a = d.agents().get(name)
    states = set()
    for pid in [a["child_pid"]] if a else []:
        try:
            with open(f"/proc/{pid}/stat") as f:
                states.add(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            pass
    return states


def _freezer() -> str | None:
    """How the cgroup backend freezes here (v1 freezer, v2 cgroup.freeze), or why it cannot."""
    try:
        layout = cgroups.detect()
    except PmrunError as e:
        return f"no cgroup backend here: {e}"
    if os.geteuid() != 0 or not os.access(layout.memory_dir, os.W_OK):
        return "needs a writable cgroup hierarchy"
    if layout.version == 1 and not layout.freezer_dir:
        return "needs the v1 freezer mounted"
    return None


def frozen(d: Daemon, name: str, backend: str) -> bool:
    """Whether the kernel says the agent's tree is frozen: every process stopped (sampling),
    ``freezer.state`` FROZEN (v1) or ``frozen 1`` in ``cgroup.events`` (v2)."""
    if backend == "sampling":
        return tree_states(d, name) == {"T"}
    a = d.agents().get(name)
    if not a:
        return False
    with open(f"/proc/{a['child_pid']}/cgroup") as f:
        v1, v2 = parse_proc_cgroup(f.read())
    if "freezer" in v1:
        with open(f"/sys/fs/cgroup/freezer{v1['freezer']}/freezer.state") as f:
            return f.read().strip() == "FROZEN"
    assert v2 is not None, "the agent is in no cgroup v2 group"
    with open(f"/sys/fs/cgroup{v2}/cgroup.events") as f:
        return "frozen 1" in f.read().splitlines()


NO_FREEZER = _freezer()
BACKENDS = ["sampling", pytest.param(
    "cgroup", marks=pytest.mark.skipif(NO_FREEZER is not None, reason=NO_FREEZER or ""))]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_newest_grower_is_paused_then_resumed_and_finishes_intact(procs, sockdir, backend):
    d = daemon(procs, sockdir)
    hold = sockdir / "release-a"
    a = Agent(procs, d.socket, "a", 150, 0.0, hold=str(hold), backend=backend, tmp=sockdir)
    wait_until(lambda: "READY" in a.out, 20, "a allocated")
    wait_until(lambda: d.agents().get("a", {}).get("rss_bytes", 0) >= 140 * MIB, 10, "a reported")
    hb = sockdir / "release-b"  # b holds its peak until the test has seen it paused
    b = Agent(procs, d.socket, "b", 200, 0.05, hold=str(hb), backend=backend, tmp=sockdir)

    wait_until(lambda: d.agents().get("b", {}).get("state") == "paused", 20, "b paused")
    wait_until(lambda: frozen(d, "b", backend), 10, "b's tree frozen")
    got = b.got()
    assert got < 200 and "READY" not in b.out
    row = d.agents()["b"]
    assert row["paused_s"] is not None and row["paused_s"] >= 0
    assert d.agents()["a"]["state"] != "paused"  # one agent always keeps running
    [pause] = events(d, "agent.pause", "b")
    assert pause["reason"] == "pool" and pause["growth_bytes"] > 0 and pause["delivered"]
    assert pause["figures"]["pool_used_bytes"] >= pause["figures"]["pool_limit_bytes"]
    wait_until(lambda: events(d, "launcher.pause", "b"), 5, "the launcher confirmed the pause")
    assert not events(d, "stop.sent"), "nobody is stopped while pausing does"
    wait_until(lambda: any("paused b" in x for x in b.err), 5, "b's launcher said so on stderr")

    hb.touch()  # b, frozen, sees it only once resumed
    hold.touch()  # a finishes and frees its memory: b resumes
    assert a.finish()["exit_status"] == 0
    wait_until(lambda: events(d, "agent.resume", "b"), 20, "b resumed")
    rb = b.finish()
    assert rb["exit_status"] == 0 and rb["reason"] == "exit", b.err
    assert "DONE ok" in b.out
    assert rb["extra"]["pauses"] == 1 and rb["extra"]["paused_s"] > 0
    [resume] = events(d, "agent.resume", "b")
    assert resume["paused_s"] > 0 and resume["why"] == "headroom"
    assert len([x for x in b.err if "paused b" in x]) == 1
    assert not events(d, "stop.sent")


def test_a_runaway_over_its_own_limit_is_stopped_not_paused(procs, sockdir):
    d = daemon(procs, sockdir)
    hold = sockdir / "release"
    a = Agent(procs, d.socket, "a", 150, 0.0, hold=str(hold), tmp=sockdir)
    wait_until(lambda: d.agents().get("a", {}).get("rss_bytes", 0) >= 140 * MIB, 20, "a reported")
    # r jumps past its own --max-rss (100 MiB in one step plus the interpreter's few MiB of
    # anonymous memory, under the 110% that would end the grace at once) and ignores SIGTERM
    # for its grace: the coordinator must see it over its own limit, then b takes the pool
    # over while r is still there.
    r = Agent(procs, d.socket, "r", 100, 0.0, "--max-rss", "100M", "--warn-rss", "30M",
              "--grace", str(10 * TIME_SCALE), hold=str(sockdir / "never"),
              env={"RUNAWAY": "1", "CHUNK_MB": "100"}, tmp=sockdir)  # fmt: skip
    wait_until(lambda: d.agents().get("r", {}).get("rss_bytes", 0) >= 100 * MIB, 30, "r over")
    b = Agent(procs, d.socket, "b", 200, 0.25, hold=str(hold), tmp=sockdir)
    rr = r.finish(30 + 10 * TIME_SCALE)
    assert rr["reason"] == "max-rss" and rr["exit_status"] == 137
    assert any(e["kind"] == "pressure" and e["pressure"] == "critical" for e in d.events())
    assert not events(d, "agent.pause", "r"), "a runaway is its launcher's to stop"
    assert not events(d, "stop.sent"), "nobody is stopped by the coordinator"
    hold.touch()
    assert a.finish()["exit_status"] == 0
    assert b.finish()["exit_status"] == 0 and "DONE ok" in b.out


def test_no_pause_agent_is_never_paused_the_other_one_is(procs, sockdir):
    d = daemon(procs, sockdir)
    hold = sockdir / "release-a"
    # Both wait under the pool (80 + 100 MiB), then grow at once, so that both are growing
    # when the pool is crossed however slow the machine: b, the newest grower, would be
    # paused but for --no-pause.
    go = sockdir / "go"
    a = Agent(procs, d.socket, "a", 150, 0.05, hold=str(hold), tmp=sockdir,
              env={"BARRIER_MB": "80", "BARRIER": str(go)})  # fmt: skip
    wait_until(lambda: "a" in d.agents(), 20, "a registered")
    hb = sockdir / "release-b"
    b = Agent(procs, d.socket, "b", 200, 0.05, "--no-pause", hold=str(hb), tmp=sockdir,
              env={"BARRIER_MB": "100", "BARRIER": str(go)})  # fmt: skip
    wait_until(lambda: a.got() >= 80 and b.got() >= 100, 20, "both at their barrier")
    go.touch()
    wait_until(lambda: events(d, "agent.pause"), 20, "someone paused")
    assert [e["name"] for e in events(d, "agent.pause")] == ["a"]
    assert d.agents()["b"]["pausable"] is False
    hb.touch()
    rb = b.finish()
    assert rb["exit_status"] == 0 and rb["extra"]["pauses"] == 0
    wait_until(lambda: events(d, "agent.resume", "a"), 20, "a resumed once b ended")
    hold.touch()
    assert a.finish()["exit_status"] == 0
    assert not events(d, "stop.sent")


def test_coordinator_without_pausing_stops_as_before(procs, sockdir):
    d = daemon(procs, sockdir, "--no-pause")
    hold = sockdir / "release-a"
    a = Agent(procs, d.socket, "a", 150, 0.0, hold=str(hold), tmp=sockdir)
    wait_until(lambda: d.agents().get("a", {}).get("rss_bytes", 0) >= 140 * MIB, 20, "a reported")
    b = Agent(procs, d.socket, "b", 200, 0.05, hold=str(hold), tmp=sockdir)
    wait_until(lambda: events(d, "stop.sent"), 20, "a stop")
    assert not events(d, "agent.pause")
    hold.touch()
    reasons = [a.finish()["reason"], b.finish()["reason"]]
    assert "pool" in reasons  # today's behaviour: someone is stopped


def test_max_pause_falls_back_to_stopping_the_one_that_frees_the_most(procs, sockdir):
    d = daemon(procs, sockdir, "--max-pause", "1")
    a = Agent(procs, d.socket, "a", 190, 0.0, hold=str(sockdir / "never"), tmp=sockdir)
    wait_until(lambda: d.agents().get("a", {}).get("rss_bytes", 0) >= 180 * MIB, 20, "a reported")
    hb = sockdir / "release-b"
    b = Agent(procs, d.socket, "b", 200, 0.05, hold=str(hb), tmp=sockdir)
    wait_until(lambda: events(d, "agent.pause", "b"), 20, "b paused")
    hb.touch()
    ra = a.finish()  # a never ends by itself: after --max-pause the largest is stopped
    assert ra["reason"] == "pool" and ra["exit_status"] == 137
    [decision] = d.events("stop.decision")
    assert [v["name"] for v in decision["victims"]] == ["a"]
    assert decision["ts"] >= events(d, "agent.pause", "b")[0]["ts"] + 1.0
    rb = b.finish()
    assert rb["exit_status"] == 0 and "DONE ok" in b.out


@pytest.mark.parametrize("backend", BACKENDS)
def test_coordinator_killed_while_paused_leaves_the_agent_running(procs, sockdir, backend):
    d = daemon(procs, sockdir)
    hold = sockdir / "release-a"
    a = Agent(procs, d.socket, "a", 150, 0.0, hold=str(hold), backend=backend, tmp=sockdir)
    wait_until(lambda: d.agents().get("a", {}).get("rss_bytes", 0) >= 140 * MIB, 20, "a reported")
    hb = sockdir / "release-b"
    b = Agent(procs, d.socket, "b", 200, 0.05, hold=str(hb), backend=backend, tmp=sockdir)
    wait_until(lambda: d.agents().get("b", {}).get("state") == "paused", 20, "b paused")
    wait_until(lambda: frozen(d, "b", backend), 10, "b's tree frozen")
    assert not any(x.startswith("DONE") for x in b.out)  # frozen: it cannot finish
    hb.touch()
    d.kill()  # SIGKILL: no chance to resume anyone itself
    rb = b.finish()  # b's launcher resumed it when the link dropped: it completes
    assert rb["exit_status"] == 0 and "DONE ok" in b.out
    assert any("coordinator connection lost" in x for x in b.err), b.err
    hold.touch()
    assert a.finish()["exit_status"] == 0
    stop_every_coordinator(d.socket)  # one the launchers started again after the SIGKILL


def test_a_paused_agent_asked_to_end_is_resumed_so_that_it_can(procs, sockdir):
    d = daemon(procs, sockdir)
    hold = sockdir / "release-a"
    a = Agent(procs, d.socket, "a", 150, 0.0, hold=str(hold), tmp=sockdir)
    wait_until(lambda: d.agents().get("a", {}).get("rss_bytes", 0) >= 140 * MIB, 20, "a reported")
    b = Agent(procs, d.socket, "b", 200, 0.05, hold=str(sockdir / "never"), tmp=sockdir)
    wait_until(lambda: frozen(d, "b", "sampling"), 20, "b's tree frozen")
    b.proc.terminate()  # forwarded to the command, which a stopped tree could not act on
    rb = b.finish()
    assert rb["reason"] == "signal" and rb["signal"] == 15
    assert any("resumed b" in x and "(signal)" in x for x in b.err), b.err
    hold.touch()
    assert a.finish()["exit_status"] == 0
