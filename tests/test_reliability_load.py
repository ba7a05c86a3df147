"""Load: many real ``pmrun -- cmd`` agents at once against one coordinator.

Each agent is ``tests/agents/service_agent.py``: a Python process that registers a cleanup
service and holds a few MiB. The coordinator's pool must match what the processes hold
(read from /proc here), every agent must be registered once and deregistered once, and
the event log must hold every event (none lost, none torn).

The figures each test measured (agents, faults, frames, survivors, lost events) are
appended as one JSON line to :data:`FIGURES` and printed (``pytest -s``): they fill the
table in docs/reliability.md.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PMRUN, PYTHON
from coordinator_fixtures import Daemon, Procs, coordinator_pids
from helpers import pid_alive, wait_until
from pmrun import _procfs
from pmrun.coordinator import query
from pmrun.errors import PmrunError

SERVICE_AGENT = str(Path(__file__).parent / "agents" / "service_agent.py")
MIB = 1 << 20
FIGURES = os.path.join(tempfile.gettempdir(), f"pmrun-reliability-{os.getuid()}.jsonl")


def record_figures(test: str, **figures: Any) -> None:
    """Print and append one line of measured figures (for docs/reliability.md)."""
    line = json.dumps({"test": test, "ts": round(time.time(), 3), **figures}, sort_keys=True)
    print(f"\nRELIABILITY {line}")
    with open(FIGURES, "a") as f:
        f.write(line + "\n")


def start_at_once(procs: Procs, argvs: list[list[str]], **kw: Any) -> list[subprocess.Popen]:
    """Start every ``argv`` at the same instant: each waits on one pipe, then execs.

    Each process is first a tiny trampoline that says it is ready and blocks reading a
    pipe; closing the pipe's write end wakes them all at once (EOF) and they exec.
    """
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    trampoline = (
        "import os, sys\n"
        "go, ready = int(sys.argv[1]), int(sys.argv[2])\n"
        "os.write(ready, b'r'); os.close(ready)\n"
        "os.read(go, 1); os.close(go)\n"
        "os.execv(sys.argv[3], sys.argv[3:])\n"
    )
    started = []
    try:
        for argv in argvs:
            started.append(
                procs.popen(
                    [PYTHON, "-S", "-c", trampoline, str(go_r), str(ready_w), *argv],
                    pass_fds=(go_r, ready_w),
                    **kw,
                )
            )
        os.close(ready_w)
        ready_w = -1
        got = 0
        deadline = time.monotonic() + 60
        while got < len(argvs):
            assert time.monotonic() < deadline, f"only {got} of {len(argvs)} ready"
            chunk = os.read(ready_r, 4096)
            assert chunk, "a trampoline died before it was ready"
            got += len(chunk)
    finally:
        os.close(go_w)  # go: every trampoline reads EOF now
        os.close(go_r)
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    return started


def launcher_argv(socket_path: str, name: str, mb: int, *extra: str) -> list[str]:
    return [
        PMRUN, "--socket", socket_path, "--name", name, "--max-rss", "1G", "--backend",
        "sampling", "--grace", "1", *extra, "--", PYTHON, SERVICE_AGENT, str(mb),
    ]  # fmt: skip


def tree_rss(root: int) -> int:
    """Memory (anon+shmem+swap) of ``root`` and its descendants, read here from /proc."""
    total = 0
    with contextlib.suppress(_procfs.ProcessGone):
        for pid in _procfs.descendants([root]):
            with contextlib.suppress(_procfs.ProcessGone):
                total += _procfs.memory(pid)[1]
    return total


def agents_ready(d: Daemon, n: int, min_rss: int) -> dict[str, Any] | None:
    """The status once ``n`` agents are registered, each with its service and memory."""
    try:
        status = d.status()
    except PmrunError:
        return None
    agents = status["agents"]
    if len(agents) != n:
        return None
    if any(len(a["services"]) != 1 or a["rss_bytes"] < min_rss for a in agents):
        return None
    return status


def compare_pool(d: Daemon, tolerance: float) -> dict[str, Any] | None:
    """Pool figures against /proc, or None while the pool, or any agent's figure, differs
    from what /proc says by more than ``tolerance`` (an agent: or 1 MiB).

    The launcher samples its tree at most every 0.5 s far from its limit and sends a
    change of less than max(8 MiB, 5%) only with its heartbeat (every 1 s), so a figure
    may be up to ~1.5 s old; a settled agent's RSS only drifts by its client thread's
    allocations (KiB).
    """
    status = d.status()
    agents = status["agents"]
    pool = status["pool"]["used_bytes"]
    measured = {a["id"]: tree_rss(a["child_pid"]) for a in agents}
    errors = [abs(a["rss_bytes"] - measured[a["id"]]) for a in agents]
    total = sum(measured.values())
    if pool != sum(a["rss_bytes"] for a in agents):
        return None  # the pool is the sum of the agents' figures, always
    if abs(pool - total) > tolerance * total:
        return None
    if any(e > max(MIB, tolerance * m) for e, m in zip(errors, measured.values(), strict=True)):
        return None
    worst = max(e / max(1, m) for e, m in zip(errors, measured.values(), strict=True))
    return {
        "pool_bytes": pool,
        "measured_bytes": total,
        "total_error": round((pool - total) / total, 5),
        "worst_agent_error": round(worst, 4),
    }


def by_agent(events: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(str(e.get("agent")) for e in events)


def log_integrity(path: str) -> tuple[int, int]:
    """(lines in the log, lines that are not a JSON object): torn or glued lines show here."""
    lines = Path(path).read_bytes().split(b"\n")
    assert lines[-1] == b"", "the log ends in a partial line"
    bad = 0
    for line in lines[:-1]:
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        bad += not ok
    return len(lines) - 1, bad


def end_agents(launchers: list[subprocess.Popen], timeout: float = 60) -> list[int]:
    """SIGTERM every launcher (pmrun forwards it to its agent); their exit statuses."""
    for proc in launchers:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    return [proc.wait(max(0.1, deadline - time.monotonic())) for proc in launchers]


def check_log(d: Daemon, ids: set[str]) -> dict[str, int]:
    """Each agent registered and deregistered exactly once, its service likewise; no torn
    line, no agent lost, nothing stopped. Returns the event counts."""
    registers = d.events("agent.register")
    deregisters = d.events("agent.deregister")
    services = d.events("service.register")
    services_gone = d.events("service.lost", "service.close")
    assert by_agent(registers) == collections.Counter(ids)
    assert by_agent(deregisters) == collections.Counter(ids)
    assert by_agent(services) == collections.Counter(ids)
    assert by_agent(services_gone) == collections.Counter(ids)
    assert not any(e["again"] for e in registers)
    assert all(e["report"]["reason"] == "signal" for e in deregisters)
    assert not d.events("agent.lost", "stop.decision", "stop.sent")
    lines, bad = log_integrity(d.events_path)
    assert bad == 0
    return {"events": lines, "torn_lines": bad, "registers": len(registers),
            "deregisters": len(deregisters)}  # fmt: skip


@pytest.mark.slow
def test_100_agents_at_once_are_counted_registered_and_deregistered_exactly_once(
    procs,
    sockdir,
):
    n, mb = 100, 8
    d = Daemon(procs, str(sockdir / "c.sock"), "--pool", "64G", "--psi-threshold", "off")
    d.start()
    t0 = time.monotonic()
    launchers = start_at_once(
        procs,
        [launcher_argv(d.socket, f"a{i}", mb) for i in range(n)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = wait_until(lambda: agents_ready(d, n, mb * MIB), 90, f"{n} agents with a service")
    startup_s = time.monotonic() - t0
    ids = {f"a{i}.{proc.pid}" for i, proc in enumerate(launchers)}
    assert {a["id"] for a in status["agents"]} == ids  # each once, under its launcher's pid
    assert all(a["services"][0]["pid"] == a["child_pid"] for a in status["agents"])
    figures = wait_until(lambda: compare_pool(d, 0.02), 30, "the pool matches /proc within 2%")

    statuses = end_agents(launchers)
    assert statuses == [-signal.SIGTERM] * n  # ended by our signal; none stopped (137)
    wait_until(lambda: len(d.events("agent.deregister")) >= n, 20, "every deregister logged")
    wait_until(lambda: len(d.events("service.lost", "service.close")) >= n, 20, "services gone")
    counts = check_log(d, ids)
    status = d.status()
    assert status["agents"] == [] and status["services"] == []
    assert status["pool"]["used_bytes"] == 0
    assert d.proc.poll() is None
    record_figures(
        "load-100", agents=n, mb_each=mb, startup_s=round(startup_s, 2), **figures, **counts,
        survivors=0, lost_events=0,
    )  # fmt: skip


@pytest.mark.slow
def test_20_launchers_at_the_same_instant_start_exactly_one_coordinator(procs, sockdir):
    n = 20
    sock = str(sockdir / "run" / "c.sock")  # the directory does not exist yet either
    launchers = start_at_once(
        procs,
        [launcher_argv(sock, f"r{i}", 1) for i in range(n)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        d = Daemon(procs, sock)
        wait_until(lambda: agents_ready(d, n, MIB), 60, f"{n} agents on one coordinator")
        pong = query.ping(sock)
        # The coordinators that lost the race for the lock exit at once.
        wait_until(lambda: coordinator_pids(sock) == [pong.pid], 20, "exactly one coordinator")
        log = Path(sock).with_name("coordinator.log").read_text()
        losers = log.count("a coordinator already serves")
        statuses = end_agents(launchers)
        assert statuses == [-signal.SIGTERM] * n
        events = read_all(Path(sock).with_name("events.jsonl"))
        assert sum(e["kind"] == "coordinator.start" for e in events) == 1
    finally:
        left = coordinator_pids(sock)  # detached (children of init): ours to stop
        for pid in left:
            procs.adopt(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(pid_alive(x) for x in left), 10, "the coordinator stops")
    record_figures("on-demand-race", launchers=n, coordinators_spawned=1 + losers,
                   coordinators_left=1)  # fmt: skip


def read_all(path: Path) -> list[dict[str, Any]]:
    from pmrun.events import read_events

    return read_events(str(path))
