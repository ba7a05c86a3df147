"""A short fleet session on a simulated 1 GiB machine, pmrun arm only: its guarantees hold.

The full benchmark (benchmarks/fleet/run.py, minutes, four arms) stays out of the suite;
this runs the same harness with ``--quick`` (a few agents, ~10-20 s) and checks what the
pmrun arm promises: the orchestrator survives, no well-behaved agent is killed, every
runaway is stopped by pmrun with a report, and the kernel's OOM killer never acts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "fleet" / "run.py"
PMRUN_STOPS = {"max-rss", "pool", "system-pressure"}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create memory cgroups"
    sys.path.insert(0, str(RUN.parent))
    try:
        import simcg

        simcg.detect()
    except simcg.SimMachineError as e:
        return f"no simulated machine here: {e}"
    finally:
        sys.path.remove(str(RUN.parent))
    if shutil.which("node") is None:
        return "node is not installed (the session has Node agents)"
    return None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_short_fleet_session_pmrun_arm(tmp_path: Path) -> None:
    why = _why_not()
    if why:
        pytest.skip(why)
    out, png = tmp_path / "fleet.json", tmp_path / "fleet.png"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--machine", "1G", "--seed", "3", "--arms", "pmrun",
         "--out", str(out), "--png", str(png)],
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    arm = doc["arms"]["pmrun"]
    detail = json.dumps({k: v for k, v in arm.items() if k != "coordinator"}, indent=1)

    assert arm["orchestrator_survived"], detail
    assert arm["good_killed"] == 0 and arm["good_lost_with_orchestrator"] == 0, detail
    assert arm["good_finished"] == arm["good_planned"], detail
    assert arm["kernel_oom_kills"] == 0, detail
    runaways = [a for a in arm["agents"] if not a["good"]]
    assert runaways, detail
    for a in runaways:
        assert a["killer"] == "pmrun", detail
        assert a["report_reason"] in PMRUN_STOPS, detail
        assert a["report_message"], detail
    # The coordinator ran inside the simulated machine and took its limit as system memory.
    status = arm["coordinator"]["status_at_start"]
    assert status["system"]["total_bytes"] == doc["machine_bytes"], status.get("system")
    # pmrun's per-agent groups (cgroup backend) nest under the machine: agents cannot escape it.
    assert arm["pmrun_groups_nested"] in (True, None), arm["pmrun_groups_outside"]
    # Nothing is left: the machine's cgroup is gone (processes are checked by conftest).
    assert not os.path.exists(arm["machine_cgroup"])
    assert png.exists()
