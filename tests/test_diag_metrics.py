"""The Prometheus exposition: families from a status dict, the collector, the server."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pmrun.diagnostics.metrics import metrics_of, on_loop, start_metrics_server
from pmrun.errors import PmrunError

MIB = 1 << 20

STATUS: dict[str, Any] = {
    "coordinator": {"pid": 5, "uptime_s": 12.5},
    "system": {"total_bytes": 8 << 30, "used_bytes": 2 << 30, "threshold_bytes": 6 << 30,
               "psi": {"some_avg10": 2.5, "full_avg10": None}},
    "pool": {"used_bytes": 300 * MIB, "limit_bytes": 2 << 30},
    "pressure": {"level": "warning", "ratios": {"pool": 0.92, "system": 0.4}},
    "agents": [
        {"id": "a1.10", "name": "a1", "rss_bytes": 100 * MIB, "peak_bytes": 120 * MIB,
         "warn_bytes": 500 * MIB, "max_bytes": 1 << 30, "pss_bytes": None, "started": 1e9,
         "state": "stopping",
         "services": [{"name": "cache", "pid": 11, "agent": "a1.10", "bytes": 7 * MIB,
                       "process_rss_bytes": 90 * MIB, "last_eviction": {"bytes": MIB, "ts": 2e9}}]},
    ],
    "services": [{"name": "loose", "pid": 12, "agent": None, "bytes": None, "process_rss_bytes": 0,
                  "last_eviction": None}],
}  # fmt: skip


def samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_every_figure_of_the_status_becomes_a_sample() -> None:
    got = samples(metrics_of(STATUS))
    a1 = (("agent", "a1.10"), ("name", "a1"))
    cache = (("agent", "a1.10"), ("pid", "11"), ("service", "cache"))
    assert got == {
        ("pmrun_up", ()): 1,
        ("pmrun_coordinator_uptime_seconds", ()): 12.5,
        ("pmrun_system_memory_total_bytes", ()): 8 << 30,
        ("pmrun_system_memory_used_bytes", ()): 2 << 30,
        ("pmrun_system_memory_threshold_bytes", ()): 6 << 30,
        ("pmrun_memory_pressure_stall_ratio", (("kind", "some"),)): 0.025,
        ("pmrun_pool_used_bytes", ()): 300 * MIB,
        ("pmrun_pool_limit_bytes", ()): 2 << 30,
        ("pmrun_pressure_level", ()): 1,
        ("pmrun_pressure_signal_ratio", (("signal", "pool"),)): 0.92,
        ("pmrun_pressure_signal_ratio", (("signal", "system"),)): 0.4,
        ("pmrun_agents", ()): 1,
        ("pmrun_agent_rss_bytes", a1): 100 * MIB,
        ("pmrun_agent_peak_bytes", a1): 120 * MIB,
        ("pmrun_agent_warn_bytes", a1): 500 * MIB,
        ("pmrun_agent_max_bytes", a1): 1 << 30,
        ("pmrun_agent_start_time_seconds", a1): 1e9,
        ("pmrun_agent_stopping", a1): 1,
        ("pmrun_agent_paused_seconds", a1): 0,
        ("pmrun_agents_waiting", ()): 0,
        ("pmrun_service_held_bytes", cache): 7 * MIB,
        ("pmrun_service_process_rss_bytes", cache): 90 * MIB,
        (
            "pmrun_service_process_rss_bytes",
            (("agent", ""), ("pid", "12"), ("service", "loose")),
        ): 0,
        ("pmrun_service_last_eviction_freed_bytes", cache): MIB,
        ("pmrun_service_last_eviction_timestamp_seconds", cache): 2e9,
    }


def test_an_empty_status_gives_up_and_no_agents() -> None:
    got = samples(metrics_of({"agents": [], "services": []}))
    assert got == {("pmrun_up", ()): 1, ("pmrun_agents", ()): 0, ("pmrun_agents_waiting", ()): 0}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return samples(text_string_to_metric_families(text))


def test_server_reads_the_status_at_each_scrape_on_localhost() -> None:
    calls = []

    def get_status() -> dict[str, Any]:
        calls.append(1)
        return {**STATUS, "pool": {"used_bytes": len(calls), "limit_bytes": 0}}

    server = start_metrics_server(0, get_status)
    try:
        assert (
            server.host == "127.0.0.1" and server.url == f"http://127.0.0.1:{server.port}/metrics"
        )
        assert scrape(server.url)[("pmrun_pool_used_bytes", ())] == 1
        assert scrape(server.url)[("pmrun_pool_used_bytes", ())] == 2
    finally:
        server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_a_failing_status_is_pmrun_up_0_not_an_error() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("the coordinator is gone")

    server = start_metrics_server(0, broken)
    try:
        assert scrape(server.url) == {("pmrun_up", ()): 0}
    finally:
        server.close()


def test_a_busy_port_is_one_error_that_says_what_to_do() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(
            PmrunError,
            match=r"cannot serve metrics on 127\.0\.0\.1:\d+: .*choose another --metrics-port",
        ):
            start_metrics_server(taken.getsockname()[1], lambda: STATUS)
    finally:
        taken.close()


def test_on_loop_runs_the_status_on_the_event_loop_thread() -> None:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: (asyncio.set_event_loop(loop), ready.set(), loop.run_forever())
    )
    thread.start()
    ready.wait()
    seen: list[int] = []

    def status() -> dict[str, Any]:
        seen.append(threading.get_ident())
        return STATUS

    server = start_metrics_server(0, on_loop(loop, status))
    try:
        assert scrape(server.url)[("pmrun_agents", ())] == 1
        assert seen == [thread.ident]
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_coordinator_serves_metrics_on_metrics_port(tmp_path) -> None:
    """`pmrun coordinator --metrics-port PORT` serves the exporter on 127.0.0.1."""
    import socket as socketlib
    import subprocess
    import urllib.request

    from conftest import PMRUN
    from helpers import wait_until

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = tmp_path / "c.sock"
    p = subprocess.Popen(
        [
            PMRUN,
            "coordinator",
            "--socket",
            str(sock),
            "--metrics-port",
            str(port),
            "--log-level",
            "warning",
        ]
    )
    try:

        def scrape() -> str | None:
            try:
                return (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
                    .read()
                    .decode()
                )
            except OSError:
                return None

        text = wait_until(scrape, timeout=15)
        assert "pmrun_up 1.0" in str(text)
        assert "pmrun_pool_limit_bytes 2.147483648e+09" in str(text)
    finally:
        p.terminate()
        p.wait(10)
