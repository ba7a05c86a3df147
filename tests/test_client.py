"""pmrun.client: register_cleanup against an in-process coordinator on a real socket."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time

import pytest

from coordinator_fixtures import PYTHON, InProcess, procs, sockdir, wait_until  # noqa: F401
from pmrun import client
from pmrun.client import heap_summary, register_cleanup
from pmrun.coordinator import query
from pmrun.coordinator.server import CoordinatorSettings

MIB = 1 << 20


@pytest.fixture
def coord(sockdir):  # noqa: F811
    c = InProcess(CoordinatorSettings(socket_path=str(sockdir / "c.sock"), settle_s=0.5))
    yield c
    c.close()


@pytest.fixture
def regs():
    made: list[client.Registration] = []
    yield made
    for r in made:
        r.close()


def services(c: InProcess) -> dict[str, dict]:
    return {s["name"]: s for s in c.sync(c.coord.status)["services"]}


def by_service(result) -> dict[str, dict]:
    return {r["service"]: r for r in result.results}


def test_sync_and_async_handlers_report_bytes_and_rss_drop(coord, regs):
    path = coord.settings.socket_path
    held = [bytearray(b"x") * (40 * MIB)]

    def drop(fraction: float) -> int:
        held.clear()
        return 40 * MIB

    async def adrop(fraction: float) -> dict:
        await asyncio.sleep(0)
        return {"bytes": int(1000 * fraction), "rss_drop": 7}

    regs.append(register_cleanup("sync", drop, socket=path))
    regs.append(register_cleanup("async", adrop, socket=path))
    wait_until(lambda: set(services(coord)) == {"sync", "async"}, 5, "registered")
    result = query.cleanup(path, fraction=0.5)
    got = by_service(result)
    assert got["sync"]["bytes"] == 40 * MIB
    assert got["sync"]["rss_drop"] >= 30 * MIB  # measured by the client around the call
    assert got["async"]["bytes"] == 500 and got["async"]["rss_drop"] == 7
    assert all(r["pid"] == os.getpid() and "error" not in r for r in result.results)
    assert result.fraction == 0.5
    # Two registrations, one connection for the process.
    assert coord.sync(lambda: len({s.conn_id for s in coord.coord.pool.services.values()})) == 1


def test_a_failing_or_hanging_handler_never_stops_the_others(coord, regs):
    path = coord.settings.socket_path
    release = threading.Event()
    calls: list[str] = []

    def ok(fraction: float) -> int:
        calls.append("ok")
        return 5

    def fails(fraction: float) -> int:
        raise MemoryError("boom")

    def hangs(fraction: float) -> int:
        release.wait(30)
        return 1

    for name, fn in (("fails", fails), ("hangs", hangs), ("ok", ok)):
        regs.append(register_cleanup(name, fn, socket=path))
    wait_until(lambda: len(services(coord)) == 3, 5, "registered")
    t0 = time.monotonic()
    got = by_service(query.cleanup(path))
    assert time.monotonic() - t0 < 1.5  # bounded by the settle time, not by the hung handler
    assert got["ok"]["bytes"] == 5
    assert got["fails"]["error"] == "MemoryError: boom"
    assert got["hangs"]["error"].startswith("timeout")
    got = by_service(query.cleanup(path))  # again, while the hung handler still runs
    assert got["ok"]["bytes"] == 5 and got["hangs"]["error"].startswith("busy")
    assert calls == ["ok", "ok"]
    release.set()
    wait_until(lambda: "bytes" in by_service(query.cleanup(path))["hangs"], 5, "hangs recovers")


def test_an_async_handler_runs_on_the_loop_it_was_registered_from(coord, regs):
    path = coord.settings.socket_path
    seen: dict[str, object] = {}
    loop_ready = threading.Event()
    stop = threading.Event()

    def service_thread() -> None:
        async def main() -> None:
            async def handler(fraction: float) -> int:
                seen["loop"] = asyncio.get_running_loop()
                return 3

            seen["own"] = asyncio.get_running_loop()
            regs.append(register_cleanup("looped", handler, socket=path))
            loop_ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)

        asyncio.run(main())

    t = threading.Thread(target=service_thread)
    t.start()
    try:
        assert loop_ready.wait(5)
        wait_until(lambda: "looped" in services(coord), 5, "registered")
        assert by_service(query.cleanup(path))["looped"]["bytes"] == 3
        assert seen["loop"] is seen["own"]
    finally:
        stop.set()
        t.join(5)


def test_registration_without_a_coordinator_attaches_when_one_starts(sockdir, regs):  # noqa: F811
    path = str(sockdir / "late.sock")
    reg = register_cleanup("early", lambda f: 0, socket=path)  # nothing listens: no error
    regs.append(reg)
    assert not reg.connected
    c = InProcess(CoordinatorSettings(socket_path=path))
    try:
        wait_until(lambda: "early" in services(c), 10, "attached after the coordinator started")
        assert reg.connected
    finally:
        c.close()


def test_stats_agent_id_and_unique_names(coord, regs, monkeypatch):
    path = coord.settings.socket_path
    monkeypatch.setenv("PMRUN_AGENT_ID", "agent-7")
    monkeypatch.setenv("PMRUN_SOCKET", path)
    regs.append(register_cleanup("cache", lambda f: 0, stats=lambda: {"bytes": 1234, "entries": 2}))
    regs.append(register_cleanup("cache", lambda f: 0, stats=lambda: {"bytes": 1}))
    wait_until(lambda: len(services(coord)) == 2, 5, "registered")
    got = services(coord)
    assert set(got) == {"cache", "cache#2"}
    wait_until(lambda: services(coord)["cache"]["bytes"] == 1234, 5, "stats pushed")
    assert services(coord)["cache"]["stats"] == {"bytes": 1234, "entries": 2}
    assert {s["agent"] for s in services(coord).values()} == {"agent-7"}
    assert by_service(query.cleanup(path, agent="agent-7"))["cache"]["bytes"] == 0
    regs[1].close()
    wait_until(lambda: set(services(coord)) == {"cache"}, 5, "unregistered")


def test_close_stops_the_thread_and_unregisters(coord):
    path = coord.settings.socket_path
    reg = register_cleanup("short", lambda f: 0, socket=path)
    wait_until(lambda: "short" in services(coord), 5, "registered")
    reg.close()
    reg.close()  # idempotent
    wait_until(lambda: services(coord) == {}, 5, "gone")
    wait_until(lambda: not any(t.name == "pmrun-client" for t in threading.enumerate()), 5,
               "client thread ended")  # fmt: skip


def test_register_cleanup_refuses_a_non_callable():
    with pytest.raises(TypeError):
        register_cleanup("x", 42)  # type: ignore[arg-type]


def test_heap_summary_is_bounded_and_json_ready():
    import json

    junk = [{"k": i} for i in range(20000)]
    h = heap_summary(limit=5)
    assert len(h["types"]) == 5 and h["pid"] == os.getpid()
    assert any(t["type"] == "builtins.dict" for t in h["types"])
    json.dumps(h)
    assert heap_summary(limit=3, budget_s=0.0)["objects"] >= 1
    del junk


HEAP_SERVICE = """
import time
from pmrun.client import register_cleanup
register_cleanup("svc", lambda f: 0)  # starts tracemalloc (PMRUN_TRACEMALLOC=1)
blobs = [bytearray(1000) for _ in range(5000)]
print("READY", flush=True)
time.sleep(60)
"""


def test_heap_request_returns_types_and_tracemalloc_sites(coord, procs):  # noqa: F811
    path = coord.settings.socket_path
    env = {
        **os.environ,
        "PMRUN_SOCKET": path,
        "PMRUN_AGENT_ID": "agent-h",
        "PMRUN_TRACEMALLOC": "1",
    }
    svc = procs.popen([PYTHON, "-c", HEAP_SERVICE], env=env, stdout=subprocess.PIPE, text=True)
    assert svc.stdout.readline().strip() == "READY"
    wait_until(lambda: "svc" in services(coord), 10, "registered")
    [answer] = query.heap(path, agent="agent-h", limit=5)
    assert (
        answer["pid"] == svc.pid and answer["services"] == ["svc"] and answer["agent"] == "agent-h"
    )
    assert answer["tracemalloc"] is True and answer["sites"]
    assert any("<string>" in s["where"] for s in answer["sites"])
    assert answer["types"][0]["bytes"] > 0


def test_a_lone_handler_that_hangs_does_not_hold_up_one_registered_later(coord, regs):
    """One handler runs in the reading thread; if it hangs and another is registered, a new
    thread takes the connection over."""
    path = coord.settings.socket_path
    release = threading.Event()

    def hangs(fraction: float) -> int:
        release.wait(30)
        return 1

    regs.append(register_cleanup("lone", hangs, socket=path))
    wait_until(lambda: "lone" in services(coord), 5, "registered")
    got = by_service(query.cleanup(path))
    assert got["lone"]["error"] == "no answer"  # its only thread is inside the handler
    conn = regs[0]._connection

    def stuck() -> bool:  # running its handler long enough to be taken for stuck
        since = conn._inline_since
        return since is not None and time.monotonic() - since > client.INLINE_STUCK_S

    wait_until(stuck, 5, "the lone handler looks stuck")
    regs.append(register_cleanup("later", lambda f: 7, socket=path))
    wait_until(lambda: "later" in services(coord), 5, "registered while the other hangs")
    got = by_service(query.cleanup(path))
    assert got["later"]["bytes"] == 7
    assert got["lone"]["error"].startswith("busy")
    release.set()
    wait_until(lambda: "bytes" in by_service(query.cleanup(path))["lone"], 5, "recovered")
    readers = [t for t in threading.enumerate() if t.name == "pmrun-client"]
    wait_until(lambda: sum(t.is_alive() for t in readers) == 1, 5, "the stuck reader left")
