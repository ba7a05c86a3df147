"""One table of the launcher's event kinds and their levels, as the log and its filter see them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import PMRUN, PYTHON
from coordinator_fixtures import Daemon
from helpers import wait_until
from pmrun import events, launcher

GROW = "chunks = [b'x' * (4 << 20) for _ in range(60)]\nimport time; time.sleep(60)"


def test_every_event_the_launcher_sends_has_its_level_in_the_table() -> None:
    sent = set(re.findall(r'self\._event\(\s*"([a-z-]+)"', Path(launcher.__file__).read_text()))
    assert sent and sent <= set(events.LAUNCHER_EVENTS), sent - set(events.LAUNCHER_EVENTS)
    assert events.launcher_event_level("stop") == "critical"
    assert events.launcher_event_level("no-such-kind") == "info"


def test_a_launchers_own_stop_is_shown_at_the_warning_level(procs, sockdir) -> None:
    d = Daemon(procs, str(sockdir / "c.sock")).start()
    r = subprocess.run(
        [PMRUN, "--socket", d.socket, "--name", "grower", "--max-rss", "100M", "--grace", "0",
         "--", PYTHON, "-c", GROW],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 137, r.stderr
    wait_until(lambda: d.events("agent.deregister"), 10, "the launcher deregistered")
    out = subprocess.run(
        [PMRUN, "events", "--events", d.events_path, "--level", "warning", "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    stops = [e for e in shown if e["kind"] == "launcher.stop"]
    assert stops and stops[0]["name"] == "grower" and stops[0]["reason"] == "max-rss"
    assert stops[0]["level"] == "critical"
