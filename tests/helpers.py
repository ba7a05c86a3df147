"""Small helpers the tests share: condition waits, process liveness, a fake clock, another uid.

Plain functions and classes (no fixtures), importable from test modules and from the scripts
the tests run (``coordinator_fixtures.py`` as a fake launcher).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

# Deadlines stretch where everything runs slower (PMRUN_TEST_TIME_SCALE=10 in the v2 lane's
# emulated guest, see scripts/test-v2); read at import, before isolated_env clears PMRUN_*.
TIME_SCALE = float(os.environ.get("PMRUN_TEST_TIME_SCALE") or 1)

NOBODY = 65534  # uid and gid of ``nobody``: the other user of the tests that need one


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> Any:
    """Poll ``predicate`` until it is truthy and return its value; fail the test at the
    deadline (``timeout`` seconds, times TIME_SCALE), naming ``what`` was awaited."""
    timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (one that exited but is not reaped yet
    can do nothing any more: it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


class FakeClock:
    """Seconds that move only when told to (``tick``), or by ``step_s`` at every reading:
    inject it where code takes a ``clock``/``timer``, so tests never sleep for time to pass."""

    def __init__(self, start: float = 1000.0, step_s: float = 0.0) -> None:
        self.now = start
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


def become_nobody() -> None:
    """Drop this process to uid and gid ``nobody`` with no supplementary groups, as
    ``setpriv --reuid --regid --clear-groups`` does: a ``preexec_fn``, or the first
    thing a forked child does. Needs root."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def agent_info(name: str = "agent", **fields: Any) -> dict[str, Any]:
    """What a launcher registers with the coordinator (an AgentLink's ``info``), for a fake
    agent called ``name`` whose launcher and child are this process; ``fields`` override."""
    info: dict[str, Any] = {
        "agent_id": f"id-{name}", "name": name, "launcher_pid": os.getpid(),
        "child_pid": os.getpid(), "argv": [name], "max_rss": 1 << 30,
        "warn_rss": 1 << 29, "priority": 0, "backend": {"name": "sampling", "reason": "test"},
        "started": time.time(),
    }  # fmt: skip
    info.update(fields)
    return info


def backends_here() -> list[str]:
    """The launcher backends this machine can run: sampling, and cgroup where a memory
    controller is found (tests parametrized over both run each one that can)."""
    from pmrun.errors import CgroupError

    try:
        from pmrun.cgroups import detect

        detect()
        return ["sampling", "cgroup"]
    except (ImportError, CgroupError):
        return ["sampling"]
