"""Faults: the coordinator SIGKILLed under load, a launcher SIGKILLed, a service stuck in
its cleanup handler, an event log that cannot be written.

What must hold: agents keep running and keep their own limits while the coordinator is
gone, and the pool is rebuilt from their re-registrations; a dead launcher's tree dies
with it and leaves the pool; a hung handler costs a broadcast its settle time, not more;
a log that cannot be written is reported once and the coordinator goes on serving.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PMRUN, PYTHON
from coordinator_fixtures import Daemon
from helpers import agent_info, pid_alive, wait_until
from pmrun.coordinator import query
from pmrun.coordinator.link import AgentLink
from pmrun.errors import PmrunError
from test_reliability_load import (
    MIB,
    SERVICE_AGENT,
    agents_ready,
    by_agent,
    compare_pool,
    end_agents,
    launcher_argv,
    log_integrity,
    record_figures,
    start_at_once,
)


def start_agents(procs, socket_path: str, n: int, mb: int) -> list[subprocess.Popen]:
    return start_at_once(
        procs,
        [launcher_argv(socket_path, f"f{i}", mb) for i in range(n)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def answers(socket_path: str) -> bool:
    try:
        query.ping(socket_path, timeout_s=0.5)
        return True
    except PmrunError:
        return False


@pytest.mark.slow
def test_coordinator_sigkilled_and_restarted_under_load_loses_no_agent(procs, sockdir):
    n, mb, kills = 40, 5, 4
    args = ("--pool", "64G", "--psi-threshold", "off")
    d = Daemon(procs, str(sockdir / "c.sock"), *args).start()
    launchers = start_agents(procs, d.socket, n, mb)
    status = wait_until(lambda: agents_ready(d, n, mb * MIB), 60, f"{n} agents registered")
    ids = {a["id"] for a in status["agents"]}
    children = {a["id"]: a["child_pid"] for a in status["agents"]}
    rebuilt_s = []
    for k in range(kills):
        d.kill()  # SIGKILL, reaped
        # Coordinator gone: every agent and its launcher go on.
        assert all(p.poll() is None for p in launchers)
        assert all(pid_alive(pid) for pid in children.values())
        t0 = time.monotonic()
        d = Daemon(procs, d.socket, *args).start()
        if k % 2:
            continue  # killed again at once, while the launchers are re-registering
        status = wait_until(lambda: agents_ready(d, n, mb * MIB), 60, "the pool rebuilt")  # noqa: B023
        rebuilt_s.append(round(time.monotonic() - t0, 2))
        assert {a["id"] for a in status["agents"]} == ids  # each once, none new
        assert {a["id"]: a["child_pid"] for a in status["agents"]} == children
    status = wait_until(lambda: agents_ready(d, n, mb * MIB), 60, "the pool rebuilt")
    assert {a["id"] for a in status["agents"]} == ids
    figures = wait_until(lambda: compare_pool(d, 0.02), 30, "the pool matches /proc")

    statuses = end_agents(launchers)
    assert statuses == [-signal.SIGTERM] * n  # died by our signal as bare; none stopped (137)
    wait_until(lambda: len(d.events("agent.deregister")) >= n, 20, "every deregister logged")
    registers = d.events("agent.register")
    deregisters = d.events("agent.deregister")
    # Each agent registered with the first coordinator and again after each kill it saw
    # (at most once per coordinator), and deregistered exactly once, from the last one.
    per_agent = by_agent(registers)
    assert set(per_agent) == ids and max(per_agent.values()) <= kills + 1
    assert by_agent(deregisters) == collections.Counter(ids)
    assert not d.events("stop.decision", "stop.sent")
    assert all(e["orphans_killed"] == [] for e in d.events("agent.lost"))
    starts = len(d.events("coordinator.start"))
    assert starts == kills + 1
    lines, bad = log_integrity(d.events_path)
    assert bad == 0  # one write(2) per event: a SIGKILL never tears a line
    record_figures(
        "coordinator-sigkill", agents=n, sigkills=kills, rebuilt_s=rebuilt_s, **figures,
        registers=len(registers), deregisters=len(deregisters), events=lines,
        torn_lines=bad, survivors=0, agents_lost=0,
    )  # fmt: skip


def test_a_sigkilled_launcher_takes_its_tree_along_and_leaves_the_pool(procs, sockdir):
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    doomed, steady = start_agents(procs, d.socket, 2, 5)
    status = wait_until(lambda: agents_ready(d, 2, 5 * MIB), 30, "two agents registered")
    tree = {a["name"]: a for a in status["agents"]}
    child = tree["f0"]["child_pid"]
    keeper = int(Path(f"/proc/{doomed.pid}/task/{doomed.pid}/children").read_text().split()[0])
    doomed.kill()
    assert doomed.wait(10) == -signal.SIGKILL
    wait_until(lambda: not pid_alive(child) and not pid_alive(keeper), 10, "the tree dies")
    wait_until(lambda: [a["name"] for a in d.status()["agents"]] == ["f1"], 10, "f0 dropped")
    [lost] = wait_until(lambda: d.events("agent.lost"), 10, "agent.lost logged")
    assert lost["agent"] == tree["f0"]["id"] and lost["launcher_alive"] is False
    assert [e["agent"] for e in d.events("service.lost")] == [tree["f0"]["id"]]
    assert steady.poll() is None and pid_alive(tree["f1"]["child_pid"])
    assert end_agents([steady]) == [-signal.SIGTERM]
    record_figures("launcher-sigkill", sigkills=1, survivors=0)


@pytest.mark.slow
def test_a_service_hung_in_its_handler_costs_a_broadcast_its_settle_time_only(
    procs,
    sockdir,
    run_pmrun,
):
    settle = 0.5
    # A pool the two agents together cross (30 + 40 MB held, ~90 MB of RSS with their
    # interpreters; still well over once shared pages are counted once, as PSS near the
    # limit), while "ok" alone stays under its warning level: the pressure broadcast goes
    # to both services. --dry-run: the stop decision is logged, nobody is stopped.
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "70M", "--psi-threshold", "off",
               "--settle", str(settle), "--cooldown", "1", "--dry-run").start()  # fmt: skip
    env = {**os.environ}
    ok = procs.popen(launcher_argv(d.socket, "ok", 30), stdout=subprocess.PIPE, text=True, env=env)
    assert ok.stdout.readline().startswith("READY")
    wait_until(lambda: agents_ready(d, 1, 30 * MIB), 10, "ok registered")
    hung = procs.popen(
        [PMRUN, "--socket", d.socket, "--name", "hung", "--backend", "sampling", "--grace", "1",
         "--", PYTHON, SERVICE_AGENT, "40", "--hang", "--service", "stuck"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert hung.stdout.readline().startswith("READY")

    def pressure_result() -> dict[str, Any] | None:
        for e in d.events("evict.result"):
            if e["pressure"] not in ("warning", "critical"):
                continue
            names = {a["service"]: a for a in e["answered"]} | {
                a["service"]: a for a in e["no_answer"]
            }
            if set(names) == {"cache", "stuck"}:
                return e
        return None

    result = wait_until(pressure_result, 20, "a pressure broadcast reached both services")
    answered = {a["service"]: a for a in result["answered"] + result["no_answer"]}
    assert "error" not in answered["cache"] and answered["cache"]["bytes"] is not None
    # "stuck" sleeps 1000 s in its handler: the broadcast is over while it still sleeps, cut
    # off by the settle time (the service's own deadline from the request's timeout_s, or
    # the coordinator's). Were it waited for, no result would be logged (the wait above).
    assert answered["stuck"]["error"] in ("timeout: still running", "no answer")
    assert hung.poll() is None
    # ... and meanwhile the coordinator serves others (a query that waited would time out).
    assert d.status()["pressure"]["level"] in ("warning", "critical")

    t0 = time.monotonic()
    r = run_pmrun("cleanup", "--socket", d.socket, "--json", timeout=30)
    wall_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    results = {x["service"]: x for x in out["results"]}
    assert "error" not in results["cache"]
    assert results["stuck"]["error"].startswith(("timeout", "busy", "no answer"))
    assert hung.poll() is None  # answered while "stuck" still sleeps in its handler
    manual = [e for e in d.events("evict.result") if e["pressure"] == "manual"]
    assert manual and {a["service"] for a in manual[-1]["answered"]} >= {"cache"}
    assert d.proc.poll() is None and answers(d.socket)
    assert end_agents([ok, hung]) == [-signal.SIGTERM] * 2
    record_figures(
        "hung-cleanup", broadcast_elapsed_s=result["elapsed_s"],
        cleanup_elapsed_s=out["elapsed_s"], cleanup_wall_s=round(wall_s, 2),
        hung_services=1, other_answers_logged=True,
    )  # fmt: skip


# -- the event log cannot be written ----------------------------------------------------


def exercise(d: Daemon, rounds: int, tag: str = "") -> None:
    """Register, report, clean up, deregister: events the log should get; all served."""
    for i in range(rounds):
        name = f"x{tag}{i}"
        link = AgentLink(d.socket, agent_info(name), lambda r, dt: None, respawn_after_s=None)
        link.start()
        try:
            link.report(5 * MIB, 5 * MIB, [])
            wait_until(lambda: name in d.agents(), 10, f"{name} registered")  # noqa: B023
            link.event("warn", rss=5 * MIB)
            query.cleanup(d.socket)
        finally:
            link.close({"exit_code": 0})
        wait_until(lambda: name not in d.agents(), 10, f"{name} deregistered")  # noqa: B023


@pytest.fixture
def tiny_tmpfs(sockdir):
    """A 64 KiB tmpfs (root only); unmounted at teardown."""
    mnt = sockdir / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                n = f.write(chunk)
            except OSError:
                break
            if not n:
                break
            written += n
    return written


def fill_up(procs, sockdir, mnt: Path) -> Daemon:
    """A coordinator whose event log fills its disk, then gets space again."""
    events = mnt / "events.jsonl"
    d = Daemon(procs, str(sockdir / "c.sock"), "--events", str(events)).start()
    d.events_path = str(events)
    exercise(d, 1, "before")
    filler = mnt / "filler"
    fill(filler)
    exercise(d, 5, "full")  # ~40 events, most of which cannot be written
    assert answers(d.socket) and d.proc.poll() is None
    assert d.stderr().count("cannot write the event log") == 1
    filler.unlink()  # space again
    exercise(d, 1, "after")
    wait_until(lambda: "is writable again" in d.stderr(), 10, "the recovery reported")
    return d


def test_an_event_log_on_a_full_disk_is_reported_once_and_the_coordinator_serves(
    procs,
    sockdir,
    tiny_tmpfs,
):
    d = fill_up(procs, sockdir, tiny_tmpfs)
    assert answers(d.socket) and d.status()["agents"] == []
    lines, bad = log_integrity(d.events_path)
    assert bad <= 1  # at most the one line the full disk cut short
    assert any(e["name"] == "xbefore0" for e in d.events("agent.register"))
    record_figures("events-disk-full", events_readable=lines - bad, torn_lines=bad,
                   reported_once=True, served=True)  # fmt: skip


def test_no_event_is_lost_once_the_full_disk_has_room_again(procs, sockdir, tiny_tmpfs):
    d = fill_up(procs, sockdir, tiny_tmpfs)
    after = [e["kind"] for e in d.events() if e.get("name") == "xafter0"]
    assert after[:1] == ["agent.register"] and "agent.deregister" in after


@pytest.mark.parametrize(
    "where",
    ["proc", "file-as-directory", "directory"],
)
def test_an_unwritable_event_log_is_reported_once_and_the_coordinator_serves(
    procs,
    sockdir,
    where,
):
    if where == "proc":  # EACCES/ENOENT even for root
        path = "/proc/pmrun-events.jsonl"
    elif where == "file-as-directory":  # ENOTDIR: a directory replaced by a file
        (sockdir / "logs").write_text("not a directory")
        path = str(sockdir / "logs" / "events.jsonl")
    else:  # EISDIR: the log's path is a directory
        (sockdir / "events.jsonl").mkdir()
        path = str(sockdir / "events.jsonl")
    d = Daemon(procs, str(sockdir / "c.sock"), "--events", path).start()
    exercise(d, 3)
    status = d.status()
    assert status["coordinator"]["events"] == path and status["agents"] == []
    assert d.stderr().count("cannot write the event log") == 1
    assert d.proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        assert d.terminate() == 0  # and it still stops cleanly
    record_figures(f"events-unwritable-{where}", reported_once=True, served=True)
