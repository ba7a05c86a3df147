"""The exit report: what happened to one agent, as JSON (``--report FILE``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

# Why an agent ended. "exit" and "signal" are the command's own doing; the others are pmrun's
# or the kernel's.
REASONS = ("exit", "signal", "max-rss", "max-as", "pool", "system-pressure", "kernel-oom")


@dataclass(frozen=True)
class Limits:
    """An agent's limits in bytes (``max_as`` None = no RLIMIT_AS) and the stop grace in seconds."""

    max_rss: int
    warn_rss: int
    max_as: int | None
    grace_s: float


@dataclass(frozen=True)
class TopProcess:
    pid: int
    name: str
    rss_bytes: int


@dataclass(frozen=True)
class ExitReport:
    """Everything ``--report`` writes. Sizes in bytes, times in seconds (Unix time)."""

    command: list[str]
    name: str
    agent_id: str
    pid: int  # the command's pid
    launcher_pid: int
    start_time: float
    end_time: float
    exit_status: int  # what pmrun exits with: the command's code, 128+N, or 137 for a limit
    reason: str  # one of REASONS
    message: str  # one line for people
    signal: int | None  # the signal that ended the command, if one did
    peak_rss_bytes: int  # sampled peak of the whole tree
    limits: Limits
    samples: int
    biggest_at_peak: TopProcess | None
    ru_maxrss_bytes: int | None  # the kernel's own peak RSS of the command (wait4)
    backend: dict[str, Any]
    kernel_peak_bytes: int | None = None  # the cgroup's own peak (usage incl. cache)
    kernel_oom_kills: int = 0
    warned_at: float | None = None  # when --warn-rss was first crossed
    stop: dict[str, Any] | None = None  # what pmrun (or the coordinator) decided, with figures
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def write_report(report: ExitReport, path: str) -> None:
    """Write ``report`` to ``path`` (``-`` for stderr) atomically."""
    text = report.to_json() + "\n"
    if path == "-":
        os.write(2, text.encode())
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
