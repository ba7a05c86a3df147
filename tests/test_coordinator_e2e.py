"""End to end with the real launcher: ``pmrun -- cmd`` agents under a real coordinator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator_fixtures import (  # noqa: F401
    PYTHON,
    Daemon,
    pid_alive,
    procs,
    sockdir,
    stop_every_coordinator,
    wait_until,
)
from pmrun.coordinator import query

PMRUN = str(Path(sys.executable).parent / "pmrun")
MIB = 1 << 20

AGENT = """
import sys, time
ballast = bytearray(b"x") * (int(sys.argv[1]) << 20)
print("READY", flush=True)
time.sleep(120)
"""

SERVICE_AGENT = """
import sys, time
from pmrun.client import register_cleanup
cache = [bytearray(b"c") * (1 << 20) for _ in range(int(sys.argv[1]))]
def evict(fraction):
    n = int(len(cache) * fraction + 0.5)
    del cache[:n]
    return n << 20
register_cleanup("cache", evict, stats=lambda: {"bytes": len(cache) << 20})
print("READY", flush=True)
time.sleep(120)
"""

pytestmark = pytest.mark.skipif(
    not os.path.exists(PMRUN), reason="the pmrun command is not installed"
)


def launch(procs, socket_path: str, name: str, code: str, mb: int, report: Path, *extra: str):  # noqa: F811
    return procs.popen(
        [PMRUN, "--socket", socket_path, "--max-rss", "1G", "--grace", "1", "--name", name,
         "--report", str(report), *extra, "--", PYTHON, "-c", code, str(mb)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def test_real_launchers_over_a_small_pool_stop_exactly_the_largest(procs, sockdir):  # noqa: F811
    # --no-pause: this is the stop path (tests/test_pause.py has pausing first).
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "300M", "--no-pause").start()
    reports = {n: sockdir / f"{n}.json" for n in ("big", "mid", "small")}
    # big + mid stay under the warning level (90%); small takes the sum over the pool by more
    # than mid's cache can free.
    big = launch(procs, d.socket, "big", AGENT, 200, reports["big"])
    assert big.stdout.readline().strip() == "READY"
    wait_until(
        lambda: d.agents().get("big", {}).get("rss_bytes", 0) >= 200 * MIB, 10, "big reported"
    )
    mid = launch(procs, d.socket, "mid", SERVICE_AGENT, 20, reports["mid"])
    assert mid.stdout.readline().strip() == "READY"
    wait_until(lambda: d.agents().get("mid", {}).get("services"), 10, "mid's service registered")
    small = launch(procs, d.socket, "small", AGENT, 100, reports["small"])
    assert small.stdout.readline().strip() == "READY"

    assert big.wait(20) == 137
    stderr = big.stderr.read()
    assert "pool" in stderr
    report = json.loads(reports["big"].read_text())
    assert report["reason"] == "pool" and report["exit_status"] == 137
    for p in (mid, small):
        assert p.poll() is None
    [decision] = d.events("stop.decision")
    assert [v["name"] for v in decision["victims"]] == ["big"] and decision["reason"] == "pool"
    answered = [e for e in d.events("evict.result") if e["answered"]]
    assert answered and answered[0]["answered"][0]["service"] == "cache"
    kinds = [e["kind"] for e in d.events()]
    assert kinds.index("evict.result") < kinds.index("stop.decision")
    dereg = [e for e in d.events("agent.deregister") if e["name"] == "big"][0]
    assert dereg["report"]["reason"] == "pool"
    wait_until(lambda: set(d.agents()) == {"mid", "small"}, 10, "big left the pool")
    mid_status = d.agents()["mid"]
    assert mid_status["services"][0]["agent"] == mid_status["id"]  # counted under its agent


def test_a_real_launcher_survives_a_coordinator_sigkill_and_registers_again(procs, sockdir):  # noqa: F811
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    agent = launch(procs, d.socket, "steady", AGENT, 5, sockdir / "r.json")
    assert agent.stdout.readline().strip() == "READY"
    wait_until(lambda: "steady" in d.agents(), 10, "registered")
    child = d.agents()["steady"]["child_pid"]
    d.kill()
    assert agent.poll() is None and pid_alive(child)
    # A supervisor restarts it; the launcher may also have started one on demand after 3 s
    # without an answer (slow machines): whichever holds the lock serves, the other gives way.
    again = Daemon(procs, d.socket).start(wait=False)
    wait_until(lambda: _serves_with(again, "steady"), 60, "registered again")
    assert agent.poll() is None and pid_alive(child)
    agent.terminate()
    assert agent.wait(20) != 137
    stop_every_coordinator(d.socket)


def _serves_with(d: Daemon, name: str) -> bool:
    try:
        return name in d.agents()
    except Exception:  # nobody answers yet
        return False


def test_cleanup_reaches_a_service_inside_a_real_agent(procs, sockdir, run_pmrun):  # noqa: F811
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    agent = launch(procs, d.socket, "holder", SERVICE_AGENT, 30, sockdir / "r.json")
    assert agent.stdout.readline().strip() == "READY"
    wait_until(lambda: d.agents().get("holder", {}).get("services"), 10, "service registered")
    result = query.cleanup(d.socket, agent="holder", fraction=0.5)
    [r] = result.results
    assert r["service"] == "cache" and r["bytes"] == 15 * MIB and r["rss_drop"] > 10 * MIB
    r = run_pmrun("cleanup", "--socket", d.socket, "--agent", "holder", timeout=30)
    assert r.returncode == 0 and "cache" in r.stdout
    agent.terminate()
    agent.wait(20)
