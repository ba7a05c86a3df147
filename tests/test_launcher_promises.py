"""README promises of the launcher that need a dedicated scenario to break visibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import PYTHON

# Ignores SIGTERM and keeps allocating (4 MiB every 10 ms, ~400 MiB/s: slow enough that
# the grace loop's 20 ms samples see it pass 110% well before the kernel's backstop).
GROWS_THROUGH_GRACE = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
chunks = []
for _ in range(100):
    chunks.append(b"g" * (4 << 20))
    time.sleep(0.01)
time.sleep(120)
"""


@pytest.mark.parametrize("backend", ["sampling", "cgroup"])
def test_a_tree_growing_past_110_percent_during_the_grace_is_killed_at_once(
    run_pmrun, tmp_path: Path, backend: str
) -> None:
    """README: "a tree that keeps growing past 110% of --max-rss is killed at once"."""
    if backend == "cgroup":
        from pmrun.cgroups import detect
        from pmrun.errors import CgroupError

        try:
            detect()
        except CgroupError as e:
            pytest.skip(f"no cgroup backend here: {e}")
    record, report = tmp_path / "rec.jsonl", tmp_path / "r.json"
    r = run_pmrun(
        "--no-coordinator",
        "--backend",
        backend,
        "--max-rss",
        "100M",
        "--grace",
        "30",  # far longer than the scenario: only the overrun rule can end it early
        "--record",
        str(record),
        "--report",
        str(report),
        "--",
        PYTHON,
        "-c",
        GROWS_THROUGH_GRACE,
        timeout=90,
    )
    assert r.returncode == 137, r.stderr
    assert json.loads(report.read_text())["reason"] == "max-rss"
    events = [json.loads(line) for line in record.read_text().splitlines()]
    kills = [e["detail"] for e in events if e.get("type") == "event" and e["kind"] == "kill"]
    assert kills and kills[0]["why"] == "grew past max-rss during the grace period", events[-5:]
    assert kills[0]["rss"] > 110 * (1 << 20)
