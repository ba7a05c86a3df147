"""PSI: triggers that wake the coordinator, a group's pressure in `pmrun status`.

The system-wide trigger is tried wherever /proc/pressure/memory exists (cgroup v1 hosts
have it too); the group's own pressure needs cgroup v2 (scripts/test-v2).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pmrun.cgroups import group_pressure
from pmrun.cgroups._parse import parse_pressure
from pmrun.coordinator import psi
from pmrun.diagnostics.status import backend_cell

SYSTEM = "/proc/pressure/memory"

PSI_TEXT = """some avg10=1.50 avg60=0.20 avg300=0.00 total=12345
full avg10=0.75 avg60=0.10 avg300=0.00 total=678
"""


def test_pressure_file_parses_to_avg10_percent() -> None:
    assert parse_pressure(PSI_TEXT) == {"some": 1.5, "full": 0.75}
    assert parse_pressure("") == {}
    assert parse_pressure("some avg10=x avg60=0.0\n") == {}


def test_a_system_trigger_is_accepted_here() -> None:
    if not os.path.exists(SYSTEM):
        pytest.skip("no PSI in this kernel (CONFIG_PSI off or psi=0)")
    woken = threading.Event()
    w = psi.Watch(woken.set)
    try:
        # Root may ask for a 500 ms window; elsewhere only whole multiples of 2 s.
        assert w.active, w.error
        assert w.triggers in (psi.DEFAULT_TRIGGERS, psi.UNPRIVILEGED_TRIGGERS)
    finally:
        w.close()


def test_a_file_that_takes_no_trigger_says_why(tmp_path: Path) -> None:
    f = tmp_path / "memory.pressure"
    f.write_text(PSI_TEXT)
    w = psi.Watch(lambda: None, str(f))  # a regular file: writes succeed, poll never fires
    w.close()
    missing = psi.Watch(lambda: None, str(tmp_path / "absent"))
    assert not missing.active and missing.error and "absent" in missing.error


def test_status_shows_a_v2_groups_pressure_and_why_sampling(tmp_path: Path) -> None:
    (tmp_path / "memory.pressure").write_text(PSI_TEXT)
    assert backend_cell({"name": "cgroup-v2", "group": str(tmp_path)}) == "cgroup-v2 psi 1.5%"
    assert group_pressure(str(tmp_path / "gone")) is None
    assert backend_cell({"name": "cgroup-v2", "group": str(tmp_path / "gone")}) == "cgroup-v2"
    assert backend_cell({"name": "cgroup-v1", "group": "/x"}) == "cgroup-v1"
    assert (
        backend_cell({"name": "sampling", "reason": "no cgroup: cannot create a cgroup under /x"})
        == "sampling (no cgroup)"
    )
    assert backend_cell({"name": "sampling", "reason": "--backend sampling"}) == "sampling"
