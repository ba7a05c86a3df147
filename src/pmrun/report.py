"""The exit report: what happened to one agent, as JSON (``--report FILE``)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `from typing import`: the launch path avoids importing typing
if TYPE_CHECKING:
    from typing import Any


# Why an agent ended. "exit" and "signal" are the command's own doing; the others are pmrun's
# or the kernel's.
REASONS = ("exit", "signal", "max-rss", "max-as", "pool", "system-pressure", "kernel-oom")


class Limits:
    """An agent's limits in bytes (``max_as`` None = no RLIMIT_AS) and the stop grace in seconds."""

    __slots__ = ("max_rss", "warn_rss", "max_as", "grace_s")

    def __init__(self, max_rss: int, warn_rss: int, max_as: int | None, grace_s: float) -> None:
        self.max_rss = max_rss
        self.warn_rss = warn_rss
        self.max_as = max_as
        self.grace_s = grace_s

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limits) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Limits({self.to_dict()})"


class TopProcess:
    """The biggest process of the tree at its peak."""

    __slots__ = ("pid", "name", "rss_bytes")

    def __init__(self, pid: int, name: str, rss_bytes: int) -> None:
        self.pid = pid
        self.name = name
        self.rss_bytes = rss_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "rss_bytes": self.rss_bytes}


# Every field of the report, in order. Sizes in bytes, times in seconds (Unix time).
FIELDS = (
    "command",
    "name",
    "agent_id",
    "pid",  # the command's pid
    "launcher_pid",
    "start_time",
    "end_time",
    "exit_status",  # what pmrun exits with: the command's code, 128+N, or 137 for a limit
    "reason",  # one of REASONS
    "message",  # one line for people
    "signal",  # the signal that ended the command, if one did
    "peak_rss_bytes",  # sampled peak of the whole tree
    "limits",
    "samples",
    "biggest_at_peak",
    "ru_maxrss_bytes",  # the kernel's own peak RSS of the command (wait4)
    "backend",  # which backend and why
    "kernel_peak_bytes",  # the cgroup's own peak (usage incl. cache)
    "kernel_oom_kills",
    "warned_at",  # when --warn-rss was first crossed
    "stop",  # what pmrun (or the coordinator) decided, with figures
    "extra",
)


class ExitReport:
    """Everything ``--report`` writes; built once, when the agent has ended."""

    __slots__ = FIELDS
    command: list[str]
    name: str
    agent_id: str
    pid: int
    launcher_pid: int
    start_time: float
    end_time: float
    exit_status: int
    reason: str
    message: str
    signal: int | None
    peak_rss_bytes: int
    limits: Limits
    samples: int
    biggest_at_peak: TopProcess | None
    ru_maxrss_bytes: int | None
    backend: dict[str, Any]
    kernel_peak_bytes: int | None
    kernel_oom_kills: int
    warned_at: float | None
    stop: dict[str, Any] | None
    extra: dict[str, Any]

    def __init__(self, **fields: Any) -> None:
        fields.setdefault("kernel_peak_bytes", None)
        fields.setdefault("kernel_oom_kills", 0)
        fields.setdefault("warned_at", None)
        fields.setdefault("stop", None)
        fields.setdefault("extra", {})
        missing = set(FIELDS) - set(fields)
        unknown = set(fields) - set(FIELDS)
        if missing or unknown:
            raise TypeError(f"ExitReport: missing {sorted(missing)}, unknown {sorted(unknown)}")
        for k, v in fields.items():
            setattr(self, k, v)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for k in FIELDS:
            v = getattr(self, k)
            out[k] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

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
