"""The diagnostics against a real coordinator, real agents and a real service.

Each test starts ``pmrun coordinator`` on a private socket and agents with
``pmrun --socket S --name NAME -- ...`` holding known memory; every process is stopped
and waited for at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import PMRUN, PYTHON
from helpers import pid_alive, wait_until
from pmrun import _procfs
from pmrun.coordinator import query
from pmrun.diagnostics.heap import agent_pids
from pmrun.errors import CoordinatorUnavailable

MIB = 1 << 20

# An agent holding MB megabytes (written, so resident) until killed.
HOLD = "import sys, time; blob = b'a' * (int(sys.argv[1]) << 20); time.sleep(120)"

# An agent whose Python service holds MB megabytes of cache and N small objects, allocated
# after registering (tracemalloc, under --trace-heap, starts at registration).
SERVICE = """
import sys, time
from pmrun.client import register_cleanup

class Payload:
    def __init__(self, i):
        self.i = i

cache = {}
reg = register_cleanup("prompt-cache", lambda fraction: 0, stats=lambda: {"bytes": len(cache.get("blob", b""))})
cache["blob"] = b"c" * (int(sys.argv[1]) << 20)
cache["objects"] = [Payload(i) for i in range(int(sys.argv[2]))]
time.sleep(120)
"""

# A non-Python agent: sort holds its whole input (60 MiB, one line) while its reader sleeps.
SORT = "head -c 62914560 /dev/zero | sort | sleep 120"


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (pmrun forwards it and stops the tree), then SIGKILL; always waited for."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not pid_alive(proc.pid)


@pytest.fixture
def coordinator(isolated_env: Path) -> Iterator[str]:
    """A real coordinator on a private socket; yields the socket path."""
    sock = str(isolated_env / "pmrun" / "c.sock")
    with open(isolated_env / "coordinator.log", "wb") as log:
        proc = subprocess.Popen(
            [PMRUN, "coordinator", "--socket", sock, "--log-level", "warning"], stderr=log
        )
    try:
        wait_until(lambda: _pings(sock) or proc.poll() is not None, timeout=15)
        assert proc.poll() is None, (isolated_env / "coordinator.log").read_text()
        yield sock
    finally:
        stop(proc)


def _pings(sock: str) -> bool:
    try:
        query.ping(sock, timeout_s=0.5)
        return True
    except (CoordinatorUnavailable, OSError):
        return False


@pytest.fixture
def agents(coordinator: str) -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """``start(name, *command, trace_heap=False)``: an agent registered with the coordinator."""
    started: list[subprocess.Popen[Any]] = []

    def start(name: str, *command: str, trace_heap: bool = False) -> subprocess.Popen[Any]:
        flags = ["--trace-heap"] if trace_heap else []
        proc = subprocess.Popen(
            [PMRUN, "--socket", coordinator, "--name", name, "--backend", "sampling", *flags,
             "--", *command],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


def status_of(sock: str) -> dict[str, Any]:
    return query.status(sock)


def agent_named(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((a for a in status["agents"] if a["name"] == name), None)


def wait_agent(sock: str, name: str, *, rss_at_least: int = 0, services: int = 0) -> dict[str, Any]:
    """The agent's status entry once it reports ``rss_at_least`` and its services hold bytes."""

    def ready() -> dict[str, Any] | None:
        a = agent_named(status_of(sock), name)
        if a is None or a["rss_bytes"] < rss_at_least or len(a["services"]) < services:
            return None
        if any(s["bytes"] is None for s in a["services"]):
            return None
        return a

    return wait_until(ready, timeout=20, interval=0.1)  # type: ignore[return-value]


def measured_rss(launcher_pid: int, *, anon_only: bool = False) -> int:
    """What the agent's processes hold now, read from /proc.

    ``anon_only``: anonymous + shared memory (RssAnon + RssShmem), what every backend
    counts; otherwise the whole RSS (file-backed pages included).
    """
    total = 0
    for pid in agent_pids(launcher_pid):
        try:
            if anon_only:
                with open(f"/proc/{pid}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                total += sum(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem"))
            else:
                total += _procfs.statm(pid)[1]
        except (_procfs.ProcessGone, OSError, KeyError):
            continue
    return total


def pmrun(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PMRUN, *args], capture_output=True, text=True, timeout=timeout)


# -- status, events, metrics --------------------------------------------------------------


def test_status_events_and_metrics_match_what_the_agents_hold(coordinator: str, agents) -> None:  # type: ignore[no-untyped-def]
    sock = coordinator
    agents("a1", PYTHON, "-c", HOLD, "60")
    agents("a2", PYTHON, "-c", SERVICE, "120", "1000")
    a1 = wait_agent(sock, "a1", rss_at_least=60 * MIB)
    a2 = wait_agent(sock, "a2", rss_at_least=120 * MIB, services=1)

    def within_tolerance(a: dict) -> tuple[bool, int]:  # type: ignore[type-arg]
        held = measured_rss(a["pid"], anon_only=True)
        return abs(a["rss_bytes"] - held) <= max(0.10 * held, 8 * MIB), held

    # The launcher's figure is a sample sent on a meaningful change or at the 1 s
    # heartbeat: it may trail what /proc says at one instant while an agent is still
    # settling. Read status until the two agree, within a few heartbeats.
    deadline = time.monotonic() + 5
    while True:
        r = pmrun("status", "--socket", sock, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        if all(within_tolerance(a)[0] for a in doc["agents"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert doc["socket"] == sock
    assert doc["coordinator"]["pid"] > 0
    assert {a["name"] for a in doc["agents"]} == {"a1", "a2"}
    for a in doc["agents"]:
        ok, held = within_tolerance(a)
        assert ok, (
            a["name"],
            a["rss_bytes"],
            held,
        )
        assert a["max_bytes"] == 1 << 30 and a["warn_bytes"] == 500 * MIB
        assert a["state"] == "running"
        assert 0 <= a["age_s"] < 60
    j1, j2 = agent_named(doc, "a1"), agent_named(doc, "a2")
    assert j1 is not None and j2 is not None
    assert j1["id"] == a1["id"] and j1["services"] == []
    assert 60 * MIB <= j1["rss_bytes"] < 60 * MIB + 40 * MIB
    assert 120 * MIB <= j2["rss_bytes"] < 120 * MIB + 60 * MIB
    [svc] = j2["services"]
    assert svc["name"] == "prompt-cache"
    assert svc["bytes"] == 120 * MIB  # what the service itself says it holds
    assert svc["agent"] == a2["id"] and svc["pid"] in agent_pids(j2["pid"])
    assert svc["last_eviction"] is None
    assert doc["pool"]["used_bytes"] == pytest.approx(j1["rss_bytes"] + j2["rss_bytes"], rel=0.2)
    assert doc["pressure"]["level"] == "normal"
    meminfo = _procfs.meminfo()
    assert 0 < doc["system"]["total_bytes"] <= meminfo["MemTotal"]

    r = pmrun("status", "--socket", sock)
    assert r.returncode == 0, r.stderr
    assert f"coordinator pid {doc['coordinator']['pid']} on {sock}" in r.stdout
    lines = r.stdout.splitlines()
    row_a1 = next(line for line in lines if line.split()[:1] == ["a1"])
    assert (
        str(j1["pid"]) in row_a1 and "500.0M" in row_a1 and "1.0G" in row_a1 and "running" in row_a1
    )
    svc_row = next(line for line in lines if "prompt-cache" in line)
    assert "120.0M held" in svc_row and "never evicted" in svc_row
    assert (
        lines.index(svc_row)
        == next(i for i, line in enumerate(lines) if line.split()[:1] == ["a2"]) + 1
    )
    assert all(line == line.rstrip() for line in lines)

    # The event log: both agents and the service, as raw JSON lines, filterable by agent.
    r = pmrun("events", "--socket", sock, "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    registered = {e["name"]: e for e in events if e["kind"] == "agent.register"}
    assert registered["a1"]["pid"] == j1["pid"] and registered["a2"]["pid"] == j2["pid"]
    assert any(e["kind"] == "service.register" and e["agent"] == a2["id"] for e in events)
    r = pmrun("events", "--socket", sock, "--json", "--agent", "a1")
    only = [json.loads(line) for line in r.stdout.splitlines()]
    assert only and all(
        a1["id"] in (e.get("agent"), e.get("name")) or e.get("name") == "a1" for e in only
    )
    r = pmrun("events", "--socket", sock, "--kind", "agent", "--since", "5m")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    assert all("agent.register" in line for line in r.stdout.splitlines())

    # The Prometheus exposition of the same status.
    from pmrun.diagnostics.metrics import start_metrics_server

    server = start_metrics_server(0, lambda: query.status(sock))
    try:
        text = urllib.request.urlopen(server.url, timeout=5).read().decode()
    finally:
        server.close()
    samples = {
        (m.name, tuple(sorted(m.labels.items()))): m.value
        for family in text_string_to_metric_families(text)
        for m in family.samples
    }
    assert samples[("pmrun_up", ())] == 1
    assert samples[("pmrun_agent_rss_bytes", (("agent", a2["id"]), ("name", "a2")))] >= 120 * MIB
    held = (
        "pmrun_service_held_bytes",
        (("agent", a2["id"]), ("pid", str(svc["pid"])), ("service", "prompt-cache")),
    )
    assert samples[held] == 120 * MIB
    assert samples[("pmrun_pool_limit_bytes", ())] == 2 << 30
    assert samples[("pmrun_agents", ())] == 2


def test_status_without_a_coordinator_says_so_and_exits_0(isolated_env: Path) -> None:
    sock = str(isolated_env / "pmrun" / "none.sock")
    r = pmrun("status", "--socket", sock)
    assert r.returncode == 0, r.stderr
    assert (
        f"no coordinator running on {sock} (agents register with it; start one with `pmrun coordinator` or run any agent)"
        in r.stdout
    )
    assert "memory" in r.stdout and "used of" in r.stdout
    r = pmrun("status", "--socket", sock, "--json")
    doc = json.loads(r.stdout)
    assert doc["coordinator"] is None and doc["agents"] == [] and doc["pool"] is None
    assert doc["system"]["total_bytes"] > 0 and doc["system"]["used_bytes"] > 0
    # The default socket comes from the environment, as the launcher's does.
    r = subprocess.run([PMRUN, "status", "--json"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PMRUN_SOCKET": sock})  # fmt: skip
    assert json.loads(r.stdout)["socket"] == sock


# -- heap ---------------------------------------------------------------------------------


def test_heap_of_a_python_agent_shows_its_object_types(coordinator: str, agents) -> None:  # type: ignore[no-untyped-def]
    sock = coordinator
    agents("py", PYTHON, "-c", SERVICE, "40", "200000")
    agent = wait_agent(sock, "py", rss_at_least=40 * MIB, services=1)

    r = pmrun("heap", "py", "--socket", sock, "--json", "--limit", "10")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [answer] = doc["services"]
    assert answer["services"] == ["prompt-cache"] and answer["agent"] == agent["id"]
    types = {t["type"]: t for t in answer["types"]}
    assert types["__main__.Payload"]["count"] == 200_000
    assert types["__main__.Payload"]["bytes"] >= 200_000 * 40
    assert list(types).index("__main__.Payload") < 3  # among the biggest
    assert answer["tracemalloc"] is False and answer["sites"] == []
    [mine] = doc["agents"]
    assert mine["name"] == "py"
    [proc] = mine["breakdown"]["processes"]
    assert proc["pid"] == answer["pid"] and proc["rss_bytes"] >= 40 * MIB

    r = pmrun("heap", "py", "--socket", sock, "--limit", "5")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "__main__.Payload" in line)
    assert row.split()[-1] == "200,000"
    assert "tracemalloc is off (run the agent with `pmrun --trace-heap`)" in r.stdout
    assert f"agent py ({agent['id']}, launcher pid {agent['pid']})" in r.stdout


def test_heap_under_trace_heap_shows_allocation_sites(coordinator: str, agents) -> None:  # type: ignore[no-untyped-def]
    # Few objects: answering costs time per traced block (see the report on the client).
    agents("traced", PYTHON, "-c", SERVICE, "100", "1000", trace_heap=True)
    wait_agent(coordinator, "traced", rss_at_least=100 * MIB, services=1)
    r = pmrun("heap", "traced", "--socket", coordinator, "--json", "--limit", "5")
    assert r.returncode == 0, r.stderr
    [answer] = json.loads(r.stdout)["services"]
    assert answer["tracemalloc"] is True
    biggest = answer["sites"][0]
    assert biggest["bytes"] >= 100 * MIB and biggest["where"].startswith("<string>:")
    r = pmrun("heap", "traced", "--socket", coordinator, "--limit", "5")
    assert "biggest allocation sites (tracemalloc)" in r.stdout
    assert "100.0M  <string>:" in r.stdout


def test_heap_of_a_non_python_agent_breaks_down_its_processes(coordinator: str, agents) -> None:  # type: ignore[no-untyped-def]
    sock = coordinator
    agents("sorter", "sh", "-c", SORT)
    agent = wait_agent(sock, "sorter", rss_at_least=60 * MIB)

    r = pmrun("heap", "sorter", "--socket", sock, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["services"] == []
    [mine] = doc["agents"]
    procs = {p["name"]: p for p in mine["breakdown"]["processes"]}
    assert {"sh", "sort", "sleep"} <= set(procs)
    assert "python" not in " ".join(procs)  # pmrun's own launcher and keeper are left out
    sort = procs["sort"]
    assert sort["rss_bytes"] >= 60 * MIB
    assert sort["uss_bytes"] >= 59 * MIB  # its buffer is its own
    assert sort["rss_bytes"] >= sort["pss_bytes"] >= sort["uss_bytes"]
    assert mine["breakdown"]["processes"][0]["name"] == "sort"  # biggest first
    total = mine["breakdown"]["total"]
    assert total["rss_bytes"] == sum(p["rss_bytes"] for p in procs.values())

    r = pmrun("heap", "sorter", "--socket", sock)
    assert r.returncode == 0, r.stderr
    assert "sorter: no Python services registered" in r.stdout
    assert any(line.split()[:2] == [str(sort["pid"]), "sort"] for line in r.stdout.splitlines())

    # The same tree by pid, no coordinator needed.
    r = pmrun("heap", "--pid", str(sort["pid"]), "--json")
    assert r.returncode == 0, r.stderr
    [only] = json.loads(r.stdout)["breakdown"]["processes"]
    assert only["name"] == "sort" and only["rss_bytes"] >= 60 * MIB
    assert agent["rss_bytes"] >= sort["rss_bytes"] * 0.9


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["heap"], 2, "name an AGENT"),
        (["heap", "x", "--pid", "1"], 2, "not both"),
        (["heap", "nobody"], 1, "no coordinator running on"),
        (["heap", "--pid", "4194304"], 1, "no process 4194304"),
        (["events", "--since", "yesterday-ish"], 2, "invalid time 'yesterday-ish'"),
        (["events"], 1, "no event log at"),
    ],
)
def test_diagnostics_errors_are_one_line(
    isolated_env: Path, args: list[str], code: int, message: str
) -> None:
    r = pmrun(*args, "--socket", str(isolated_env / "pmrun" / "none.sock"))
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.startswith("pmrun: error: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_heap_of_an_unknown_agent_names_the_registered_ones(coordinator: str, agents) -> None:  # type: ignore[no-untyped-def]
    agents("a1", PYTHON, "-c", HOLD, "1")
    wait_agent(coordinator, "a1")
    r = pmrun("heap", "nobody", "--socket", coordinator)
    assert r.returncode == 1
    assert r.stderr == "pmrun: error: no agent 'nobody' is registered (agents: a1)\n"


# -- top with agents ----------------------------------------------------------------------


def test_top_shows_the_agents_sorted_by_rss(coordinator: str, agents) -> None:  # type: ignore[no-untyped-def]
    from test_diag_top import PtyProcess, refreshes

    agents("small", PYTHON, "-c", HOLD, "20")
    agents("large", PYTHON, "-c", HOLD, "80")
    wait_agent(coordinator, "small", rss_at_least=20 * MIB)
    wait_agent(coordinator, "large", rss_at_least=80 * MIB)
    top = PtyProcess([PMRUN, "top", "--socket", coordinator, "--interval", "0.2"])
    try:
        out = top.read_until(lambda o: refreshes(o) >= 2)
        last = out[out.rfind(b"coordinator pid") :]
        assert b"large" in last and b"small" in last
        assert last.index(b"large") < last.index(b"small")
        top.send(b"q")
        assert top.wait() == 0
    finally:
        top.close()


def test_events_reads_the_log_the_running_coordinator_was_given(isolated_env: Path) -> None:
    sock = str(isolated_env / "pmrun" / "c.sock")
    log = isolated_env / "elsewhere.jsonl"
    proc = subprocess.Popen(
        [PMRUN, "coordinator", "--socket", sock, "--events", str(log), "--log-level", "warning"]
    )
    try:
        wait_until(lambda: _pings(sock), timeout=15)
        r = pmrun("events", "--socket", sock, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[0])["kind"] == "coordinator.start"
    finally:
        stop(proc)
