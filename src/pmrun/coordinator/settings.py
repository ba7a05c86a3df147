"""The coordinator's settings: one frozen record, built from the resolved configuration.

A field that a config setting sets says so with :func:`_setting`, which also takes its
default from :data:`pmrun.config.SETTINGS`: the table is the one place of each default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .. import _procfs, config
from . import lifecycle, paths, policy


def _setting(key: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A field set from ``coordinator.KEY`` (through ``convert``), with the table's default."""
    value = _default(key)
    return field(
        default=convert(value) if convert else value,
        metadata={"setting": f"coordinator.{key}", "convert": convert},
    )


def _off_if_zero(port: int) -> int | None:
    return port or None


def _pause_default() -> policy.PauseSettings:
    return policy.PauseSettings(
        enabled=_default("pause"),
        max_pause_s=_default("max-pause"),
    )


def _default(key: str) -> Any:
    return config.BY_NAME[f"coordinator.{key}"].default_value


@dataclass(frozen=True)
class CoordinatorSettings:
    """Everything the daemon needs. Sizes in bytes, times in seconds, fractions in [0, 1]."""

    socket_path: str  # coordinator.socket, resolved (from_config)
    pool_bytes: int = _setting("pool")  # 0 = no pool limit
    system_threshold: float = _setting("system-threshold")  # of (container) memory used
    psi_threshold: float | None = _setting("psi-threshold")  # None = ignore PSI
    evict_fraction: float = _setting("evict-fraction")
    victim_policy: str = _setting("victim-policy")
    events_path: str = _setting("events")  # "" = events.jsonl next to the socket
    dry_run: bool = _setting("dry-run")
    settle_s: float = _setting("settle")
    cooldown_s: float = _setting("cooldown")  # unless hard_ratio is crossed
    hard_ratio: float = policy.HARD_RATIO
    tick_s: float = 0.5  # longest monitor sleep, with headroom (policy.next_tick_s)
    tick_min_s: float = 0.1  # shortest, near the thresholds
    pss_interval_s: float = 1.0  # PSS is read at most this often (and right before acting)
    stop_pending_s: float = 15.0  # a stopped agent's memory counts as "being freed" this long
    socket_check_s: float = 1.0  # how often the daemon checks its socket path still leads here
    handshake_timeout_s: float = 10.0  # a new connection must send a frame by then
    frame_timeout_s: float = 10.0  # an incomplete frame must be completed by then
    max_connections: int = 1024
    max_write_buffer: int = 4 << 20  # bytes queued to a peer that does not read, then dropped
    max_bad_frames: int = 10  # answered with errors, then the connection is dropped
    max_services_per_connection: int = 64  # a process registers one handler per cache
    max_requests_per_connection: int = 4  # cleanup/heap requests in flight, then "busy"
    heap_timeout_s: float = 10.0  # services walk their heaps for up to 4 s (client.HEAP_BUDGET_S)
    orphan_sweep_s: float = 5.0  # pmrun.cgroups.cleanup_orphans() at most this often
    oom_score_adj: int = -500  # written when root: the kernel's OOM killer spares us
    metrics_port: int | None = _setting("metrics-port", _off_if_zero)  # None = off
    metrics_host: str = "127.0.0.1"  # this host only by default: the labels name agents
    hysteresis: policy.Hysteresis = field(default_factory=policy.Hysteresis)
    # Pause before kill: coordinator.pause and coordinator.max-pause (from_config).
    pause: policy.PauseSettings = field(default_factory=_pause_default)
    # coordinator.idle-exit, or 600 s when started on demand (from_config).
    idle_exit_s: float | None = _setting("idle-exit")
    proc: str = _procfs.PROC
    cgroup_root: str = ""  # a prefix before every cgroup mount point (tests: a fake tree)

    @property
    def events_file(self) -> str:
        return self.events_path or paths.default_events_path(self.socket_path)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> CoordinatorSettings:
        """Settings from a resolved :class:`pmrun.config.Config`, then ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata.get("setting")
            if name is not None:
                convert = f.metadata["convert"]
                values[f.name] = convert(config[name]) if convert else config[name]
        values["socket_path"] = paths.resolve_socket_path(config["coordinator.socket"])
        values["idle_exit_s"] = lifecycle.idle_exit_s(config)
        values["pause"] = policy.PauseSettings(
            enabled=config["coordinator.pause"], max_pause_s=config["coordinator.max-pause"]
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["events_path"] = self.events_file
        return d
