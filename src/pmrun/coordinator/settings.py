"""The coordinator's settings: one frozen record, built from the resolved configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import _procfs
from . import lifecycle, paths, policy


@dataclass(frozen=True)
class CoordinatorSettings:
    """Everything the daemon needs. Sizes in bytes, times in seconds, fractions in [0, 1]."""

    socket_path: str
    pool_bytes: int = 2 << 30  # --pool; 0 = no pool limit
    system_threshold: float = 0.80  # --system-threshold, fraction of (container) memory used
    psi_threshold: float | None = 0.10  # --psi-threshold on "some avg10"; None = ignore PSI
    evict_fraction: float = 0.75  # --evict-fraction, asked at the critical level
    victim_policy: str = "largest"  # --victim-policy
    events_path: str = ""  # --events; "" = events.jsonl next to the socket
    dry_run: bool = False  # log what would be stopped, stop nothing
    settle_s: float = 0.5  # how long a broadcast waits for the services' answers
    cooldown_s: float = 5.0  # after a stop, before stopping more (unless hard_ratio is crossed)
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
    metrics_port: int | None = None  # --metrics-port: serve Prometheus metrics; None = off
    metrics_host: str = "127.0.0.1"  # this host only by default: the labels name agents
    hysteresis: policy.Hysteresis = field(default_factory=policy.Hysteresis)
    pause: policy.PauseSettings = field(default_factory=policy.PauseSettings)  # pause before kill
    idle_exit_s: float | None = None  # --idle-exit: exit after this long with no agent
    proc: str = _procfs.PROC
    cgroup_root: str = ""  # a prefix before every cgroup mount point (tests: a fake tree)

    @property
    def events_file(self) -> str:
        return self.events_path or paths.default_events_path(self.socket_path)

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> CoordinatorSettings:
        """Settings from a resolved :class:`pmrun.config.Config`, then ``overrides``."""
        values: dict[str, Any] = {
            "socket_path": paths.resolve_socket_path(config["coordinator.socket"]),
            "pool_bytes": config["coordinator.pool"],
            "system_threshold": config["coordinator.system-threshold"],
            "psi_threshold": config["coordinator.psi-threshold"],
            "evict_fraction": config["coordinator.evict-fraction"],
            "victim_policy": config["coordinator.victim-policy"],
            "events_path": config["coordinator.events"],
            "dry_run": config["coordinator.dry-run"],
            "cooldown_s": config["coordinator.cooldown"],
            "settle_s": config["coordinator.settle"],
            "metrics_port": config["coordinator.metrics-port"] or None,
            "idle_exit_s": lifecycle.idle_exit_s(config),
            "pause": policy.PauseSettings(
                enabled=config["coordinator.pause"], max_pause_s=config["coordinator.max-pause"]
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["events_path"] = self.events_file
        return d
