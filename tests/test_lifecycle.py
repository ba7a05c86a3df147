"""The coordinator's lifecycle: `pmrun coordinator stop` and `status`, and the idle exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TIME_SCALE
from coordinator_fixtures import PYTHON, Daemon, pid_alive, procs, sockdir, wait_until  # noqa: F401
from pmrun import config
from pmrun.coordinator.endpoint import lock_held
from pmrun.coordinator.lifecycle import ON_DEMAND_ENV, idle_exit_s, idle_expired

PMRUN = str(Path(sys.executable).parent / "pmrun")

pytestmark = pytest.mark.skipif(not os.path.exists(PMRUN), reason="pmrun is not installed")

HOLD = r"""
import os, sys, time
ballast = bytearray(b"x") * (20 << 20)
print("STARTED", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
"""


def pmrun(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PMRUN, *args], capture_output=True, text=True, timeout=timeout)


def agent(procs, sock: str, hold: Path) -> subprocess.Popen[str]:  # noqa: F811
    return procs.popen(
        [PMRUN, "--socket", sock, "--name", "held", "--", PYTHON, "-c", HOLD, str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "idle_since, now, limit, expected",
    [(None, 100.0, 5.0, False), (90.0, 94.9, 5.0, False), (90.0, 95.0, 5.0, True),
     (0.0, 1e9, None, False)],
)  # fmt: skip
def test_idle_expired(idle_since, now, limit, expected):
    assert idle_expired(idle_since, now, limit) is expected


def test_idle_exit_defaults_to_600s_only_on_demand(tmp_path):
    cfg = config.load({}, env={}, cwd=tmp_path, user_path=tmp_path / "none.toml")
    assert idle_exit_s(cfg, {}) is None
    assert idle_exit_s(cfg, {ON_DEMAND_ENV: "1"}) == 600.0
    given = config.load(
        {"coordinator.idle-exit": "30"}, env={}, cwd=tmp_path, user_path=tmp_path / "n.toml"
    )
    assert idle_exit_s(given, {ON_DEMAND_ENV: "1"}) == 30.0
    off = config.load(
        {"coordinator.idle-exit": "off"}, env={}, cwd=tmp_path, user_path=tmp_path / "n.toml"
    )
    assert idle_exit_s(off, {ON_DEMAND_ENV: "1"}) is None


def test_status_exit_codes_and_json(procs, sockdir):  # noqa: F811
    sock = str(sockdir / "c.sock")
    down = pmrun("coordinator", "status", "--socket", sock)
    assert down.returncode == 3 and "not running" in down.stdout
    assert json.loads(pmrun("coordinator", "status", "--socket", sock, "--json").stdout) == {
        "running": False, "socket": sock,
    }  # fmt: skip
    d = Daemon(procs, sock).start()
    up = pmrun("coordinator", "status", "--socket", sock)
    assert up.returncode == 0 and up.stdout.startswith("running: pid"), up
    facts = json.loads(pmrun("coordinator", "status", "--socket", sock, "--json").stdout)
    assert facts["running"] and facts["pid"] == d.proc.pid and facts["agents"] == 0


def test_stop_is_clean_and_the_agent_keeps_running(procs, sockdir):  # noqa: F811
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    hold = sockdir / "hold"
    a = agent(procs, d.socket, hold)
    assert a.stdout.readline().strip() == "STARTED"
    wait_until(lambda: "held" in d.agents(), 10, "the agent registered")
    r = pmrun("coordinator", "stop", "--socket", d.socket)
    assert r.returncode == 0 and "stopped the coordinator" in r.stdout, r
    assert d.proc.wait(10) == 0
    assert [e["kind"] for e in d.events("coordinator.shutdown", "coordinator.stop")] == [
        "coordinator.shutdown", "coordinator.stop",
    ]  # fmt: skip
    assert a.poll() is None, "the agent is not stopped with the coordinator"
    assert pmrun("coordinator", "status", "--socket", d.socket).returncode == 3
    hold.touch()
    assert a.wait(20) == 0
    again = pmrun("coordinator", "stop", "--socket", d.socket)
    assert again.returncode == 0 and "no coordinator was running" in again.stdout


def test_idle_exit_waits_for_the_last_agent_then_exits(procs, sockdir):  # noqa: F811
    # Long enough for the agent's launcher to reach it first even on a loaded machine (a
    # launcher that found none would start another coordinator on demand).
    d = Daemon(procs, str(sockdir / "c.sock"), "--idle-exit", "4").start()
    hold = sockdir / "hold"
    a = agent(procs, d.socket, hold)
    assert a.stdout.readline().strip() == "STARTED"
    wait_until(lambda: "held" in d.agents(), 10, "the agent registered")
    # Busy while the agent runs, however long: the idle time only starts without agents.
    wait_until(lambda: d.status()["coordinator"]["uptime_s"] > 5, 15, "5 s of uptime")
    assert d.proc.poll() is None
    hold.touch()
    assert a.wait(20) == 0
    assert d.proc.wait(20) == 0
    [ev] = d.events("coordinator.idle-exit")
    assert ev["idle_s"] >= 4


@pytest.mark.parametrize("how", ["pmrun coordinator stop", "SIGTERM"])
def test_a_clean_stop_is_not_undone_by_the_running_launchers(procs, sockdir, how):  # noqa: F811
    """A launcher that finds no coordinator for 3 s starts one (after a crash, say); after
    a clean stop it must not: the stop holds until someone starts one, and then the agent
    registers with it again."""
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    hold = sockdir / "hold"
    a = agent(procs, d.socket, hold)
    assert a.stdout.readline().strip() == "STARTED"
    wait_until(lambda: "held" in d.agents(), 10, "the agent registered")
    if how == "SIGTERM":
        d.proc.terminate()
    else:
        assert pmrun("coordinator", "stop", "--socket", d.socket).returncode == 0
    assert d.proc.wait(10) == 0
    # The launcher's own respawn comes 3 s after it lost its coordinator: give it twice that.
    deadline = time.monotonic() + 6 * TIME_SCALE
    while time.monotonic() < deadline:
        assert not lock_held(d.socket), "a launcher started a coordinator again after a stop"
        time.sleep(0.1)
    assert pmrun("coordinator", "status", "--socket", d.socket).returncode == 3
    assert a.poll() is None
    again = Daemon(procs, d.socket).start()  # started by hand: the agent comes back to it
    wait_until(lambda: "held" in again.agents(), 20, "the agent registered again")
    hold.touch()
    assert a.wait(20) == 0
