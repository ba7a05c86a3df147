"""Prometheus metrics of the coordinator: ``pmrun coordinator --metrics-port PORT``.

A custom collector reads the coordinator's status (the dict ``pmrun status --json`` shows)
at scrape time, so nothing is kept twice and a scrape always sees the current pool.
The official ``prometheus_client`` serves it, on 127.0.0.1 unless told otherwise: the
figures name the agents' commands, which other hosts need not see.

Metrics (sizes in bytes, times in seconds, ratios in [0, 1] as Prometheus prefers):

- ``pmrun_up``: 1 if the status could be read at this scrape, else 0 (and nothing else);
- ``pmrun_coordinator_uptime_seconds``;
- ``pmrun_system_memory_total_bytes``, ``_used_bytes``, ``_threshold_bytes``;
- ``pmrun_memory_pressure_stall_ratio{kind="some"|"full"}``: PSI avg10 / 100;
- ``pmrun_pool_used_bytes``, ``pmrun_pool_limit_bytes`` (0 = no limit);
- ``pmrun_pressure_level``: 0 normal, 1 warning, 2 critical;
  ``pmrun_pressure_signal_ratio{signal}``: each signal over its threshold (1 = at it);
- ``pmrun_agents``; per agent ``{agent, name}``: ``pmrun_agent_rss_bytes``,
  ``_peak_bytes``, ``_warn_bytes``, ``_max_bytes``, ``_pss_bytes`` (when measured),
  ``pmrun_agent_start_time_seconds``, ``pmrun_agent_stopping`` (1 while being stopped);
- per service ``{service, agent, pid}``: ``pmrun_service_held_bytes``,
  ``pmrun_service_process_rss_bytes``, ``pmrun_service_last_eviction_freed_bytes``,
  ``pmrun_service_last_eviction_timestamp_seconds``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..errors import PmrunError

log = logging.getLogger("pmrun.metrics")

LEVELS = {"normal": 0, "warning": 1, "critical": 2}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _gauge(name: str, doc: str, value: Any) -> Iterator[Metric]:
    """A single-sample gauge, left out when the value is unknown."""
    v = _num(value)
    if v is not None:
        yield GaugeMetricFamily(name, doc, value=v)


def _labelled(
    name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Any]]
) -> Iterator[Metric]:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        v = _num(value)
        if v is not None:
            family.add_metric(values, v)
    yield family


def metrics_of(status: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one status dict (pure: no I/O, no clock)."""
    yield GaugeMetricFamily("pmrun_up", "1 if the coordinator's status could be read", value=1)
    coord = status.get("coordinator") or {}
    yield from _gauge(
        "pmrun_coordinator_uptime_seconds",
        "Seconds since the coordinator started",
        coord.get("uptime_s"),
    )

    sysm = status.get("system") or {}
    yield from _gauge(
        "pmrun_system_memory_total_bytes", "System (or container) memory", sysm.get("total_bytes")
    )
    yield from _gauge(
        "pmrun_system_memory_used_bytes",
        "System (or container) memory in use",
        sysm.get("used_bytes"),
    )
    yield from _gauge(
        "pmrun_system_memory_threshold_bytes",
        "Memory in use at which the coordinator acts (--system-threshold)",
        sysm.get("threshold_bytes"),
    )
    psi = sysm.get("psi") or {}
    yield from _labelled(
        "pmrun_memory_pressure_stall_ratio",
        "PSI memory avg10: share of the last 10 s some/all tasks stalled on memory",
        ["kind"],
        (
            ([kind], v / 100 if (v := _num(psi.get(f"{kind}_avg10"))) is not None else None)
            for kind in ("some", "full")
        ),
    )

    pool = status.get("pool") or {}
    yield from _gauge(
        "pmrun_pool_used_bytes", "Memory the pool counts for all agents", pool.get("used_bytes")
    )
    yield from _gauge(
        "pmrun_pool_limit_bytes", "The pool's limit (--pool; 0 = none)", pool.get("limit_bytes")
    )

    pressure = status.get("pressure") or {}
    yield from _gauge(
        "pmrun_pressure_level",
        "Pressure level: 0 normal, 1 warning, 2 critical",
        LEVELS.get(str(pressure.get("level"))),
    )
    ratios = pressure.get("ratios") or {}
    yield from _labelled(
        "pmrun_pressure_signal_ratio",
        "Each watched signal over its threshold (1 = at the threshold)",
        ["signal"],
        (([k], v) for k, v in ratios.items()),
    )

    agents = status.get("agents") or []
    yield from _gauge("pmrun_agents", "Registered agents", len(agents))
    per_agent = (
        (
            "rss_bytes",
            "pmrun_agent_rss_bytes",
            "The agent's tree memory as its launcher reports it",
        ),
        ("peak_bytes", "pmrun_agent_peak_bytes", "The agent's highest tree memory so far"),
        ("warn_bytes", "pmrun_agent_warn_bytes", "The agent's --warn-rss"),
        ("max_bytes", "pmrun_agent_max_bytes", "The agent's --max-rss"),
        (
            "pss_bytes",
            "pmrun_agent_pss_bytes",
            "PSS of the agent's processes (measured near the limits)",
        ),
        ("started", "pmrun_agent_start_time_seconds", "Unix time the agent started"),
    )
    for key, name, doc in per_agent:
        yield from _labelled(
            name,
            doc,
            ["agent", "name"],
            (([str(a.get("id")), str(a.get("name"))], a.get(key)) for a in agents),
        )
    yield from _labelled(
        "pmrun_agent_stopping",
        "1 while the coordinator is stopping the agent",
        ["agent", "name"],
        (
            ([str(a.get("id")), str(a.get("name"))], int(a.get("state") == "stopping"))
            for a in agents
        ),
    )

    yield from _labelled(
        "pmrun_agent_paused_seconds",
        "Seconds the agent has been paused (0 while running)",
        ["agent", "name"],
        (([str(a.get("id")), str(a.get("name"))], a.get("paused_s") or 0) for a in agents),
    )
    yield from _gauge("pmrun_agents_waiting", "Launchers waiting for memory before start",
                      len(status.get("waiting") or []))  # fmt: skip
    services = [s for a in agents for s in a.get("services") or []] + list(
        status.get("services") or []
    )
    labels = ["service", "agent", "pid"]

    def svc_labels(s: dict[str, Any]) -> list[str]:
        return [str(s.get("name")), str(s.get("agent") or ""), str(s.get("pid"))]

    yield from _labelled(
        "pmrun_service_held_bytes", "Bytes a service reports holding", labels,
        ((svc_labels(s), s.get("bytes")) for s in services),
    )  # fmt: skip
    yield from _labelled(
        "pmrun_service_process_rss_bytes", "RSS of the service's process", labels,
        ((svc_labels(s), s.get("process_rss_bytes")) for s in services),
    )  # fmt: skip
    yield from _labelled(
        "pmrun_service_last_eviction_freed_bytes", "Bytes the service freed at its last eviction", labels,
        ((svc_labels(s), (s.get("last_eviction") or {}).get("bytes")) for s in services),
    )  # fmt: skip
    yield from _labelled(
        "pmrun_service_last_eviction_timestamp_seconds", "Unix time of the service's last eviction", labels,
        ((svc_labels(s), (s.get("last_eviction") or {}).get("ts")) for s in services),
    )  # fmt: skip


class StatusCollector(Collector):
    """Reads ``get_status()`` at every scrape; a failing read gives ``pmrun_up 0``."""

    def __init__(self, get_status: Callable[[], dict[str, Any]]) -> None:
        self._get_status = get_status

    def describe(self) -> list[Metric]:
        return []  # the families depend on the status: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._get_status()
        except Exception as e:  # a scrape must get an answer, whatever went wrong
            log.warning("metrics: cannot read the status: %s", e)
            yield GaugeMetricFamily(
                "pmrun_up", "1 if the coordinator's status could be read", value=0
            )
            return
        yield from metrics_of(status)


def on_loop(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], dict[str, Any]], timeout_s: float = 2.0
) -> Callable[[], dict[str, Any]]:
    """``fn`` made callable from the exporter's threads: it runs on ``loop``'s thread.

    The coordinator's state belongs to its event loop; reading it from another thread
    could see a dict change size mid-iteration.
    """

    def call() -> dict[str, Any]:
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout_s)

    return call


@dataclass
class MetricsServer:
    """A running exporter; :meth:`close` stops it."""

    host: str
    port: int  # the bound port (useful when 0 was asked for)
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int, get_status: Callable[[], dict[str, Any]], host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve the metrics of ``get_status()`` on ``host:port`` from a daemon thread.

    ``get_status`` is called from the exporter's threads: wrap an event loop's function
    with :func:`on_loop`. Port 0 picks a free port (see ``MetricsServer.port``).
    """
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(get_status))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise PmrunError(
            f"cannot serve metrics on {host}:{port}: {e.strerror or e}; choose another --metrics-port"
        ) from None
    return MetricsServer(host, server.server_address[1], server, thread)
