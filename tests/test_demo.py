"""The demo (``scripts/demo``, ``python -m pmrun.demo``) in its quick form: every step it
promises happens, in order, and nothing it started is left, also when it is interrupted."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import pid_alive

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="the fleet has Node agents")


def _events(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line]


def _coordinator_pid(text: str) -> int:
    m = re.search(r"coordinator started on demand by the launchers: pid (\d+)", text)
    assert m, text
    return int(m.group(1))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_demo_evicts_first_then_stops_one_agent_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pmrun.demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    lines = text.splitlines()

    def first(prefix: str) -> int:
        found = [i for i, line in enumerate(lines) if prefix in line]
        assert found, f"no {prefix!r} in the demo's output:\n{text}"
        return found[0]

    # The steps, in order, as printed.
    assert first("== 1. start the fleet") < first("== 2.") < first("evict (")
    assert first("evict (") < first("still over the pool after evicting: stop coder")
    assert "prompt-cache in planner" in lines[first("evict (") + 1]
    assert first("STOPPED coder: exit 137, reason pool") < first("== 3.")
    assert first("$ pmrun status") < first("$ pmrun events") < first("PLOT ")
    assert "NAME" in text and "stop.decision" in text  # the status table, the events

    # The coordinator's own log says the same: a cache eviction that freed bytes (and
    # measured an RSS drop) before the only stop, which was the coder's, for the pool.
    events = _events(out)
    kinds = [e["kind"] for e in events]
    freed = [
        i
        for i, e in enumerate(events)
        if e["kind"] == "evict.result" and isinstance(e["freed_bytes"], int) and e["freed_bytes"]
    ]
    [stop] = [i for i, k in enumerate(kinds) if k == "stop.sent"]
    assert freed and freed[0] < stop
    assert any(a["rss_drop"] for i in freed for a in events[i]["answered"])  # type: ignore[union-attr]
    assert events[stop]["name"] == "coder" and events[stop]["reason"] == "pool"
    report = json.loads((out / "coder.report.json").read_text())
    assert report["exit_status"] == 137 and report["reason"] == "pool"
    for name in ("planner", "reviewer", "tester"):  # stopped at the end by the demo, not before
        assert json.loads((out / f"{name}.report.json").read_text())["reason"] == "signal"

    pngs = re.findall(r"^PLOT (\S+)", text, re.M)
    assert len(pngs) == 2
    for png in pngs:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert "no process left" in lines[-1]
    assert not pid_alive(_coordinator_pid(text))
    # Every other process it started carries PMRUN_TEST_TOKEN: conftest checks they are gone.


def _controlling_tty() -> None:
    """In the child (a new session): its stdin, the pty, becomes its terminal, so ^C is SIGINT."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_in_a_terminal_stops_everything_the_demo_started(tmp_path: Path) -> None:
    """scripts/demo in a real terminal (a pty), interrupted by ^C once the fleet is up."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "demo"), "--quick", "--out", str(tmp_path)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_controlling_tty,
    )
    os.close(slave)
    output = b""

    def read_until(done: Callable[[bytes], bool], timeout_s: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout_s
        while not done(output) and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal has closed it
                    return
                if not chunk:
                    return
                output += chunk

    try:
        read_until(lambda out: b"== 2." in out, 90)  # the fleet and its coordinator are up
        assert b"== 2." in output, output.decode(errors="replace")
        os.write(master, b"\x03")  # ^C: the terminal sends SIGINT to its foreground group
        assert proc.wait(60) == 130
        read_until(lambda out: False, 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    assert "interrupted: stopping everything the demo started" in text, text
    assert "no process left" in text.rstrip().splitlines()[-1], text
    assert not pid_alive(_coordinator_pid(text))  # the rest: conftest's leak check


def test_scripts_demo_sets_up_then_runs_the_fleet_demo() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "demo"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--out DIR" in done.stdout


def _quickstart_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)


@pytest.mark.timeout(120)
def test_readme_quickstart_blocks_work_as_shown(tmp_path: Path) -> None:
    """The README's copy-paste blocks, run by bash as a user would (PATH as the README sets it)."""
    path_block, one_command, fleet, completion = _quickstart_blocks()
    assert 'export PATH="$PWD/.venv/bin:$PATH"' in path_block
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["HOME"] = str(tmp_path)

    def bash(script: str, shell: tuple[str, ...] = ("bash", "--norc", "-c")) -> str:
        done = subprocess.run(
            [*shell, script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    try:
        out = bash(one_command)
        assert re.search(r"^fine\nexit 0\nexit 137\n", out, re.M), out
        assert "coordinator pid" in out
        out = bash(fleet)
        assert "exit 0\nexit 0\nexit 137\n" in out, out
        assert re.search(r"agent.deregister +runaway +exited: max-rss, status 137", out), out
        for_bash, for_zsh, for_fish = completion.splitlines()
        assert "-F _pmrun_completion pmrun" in bash(for_bash + "\ncomplete -p pmrun")
        if shutil.which("zsh"):
            zsh = ("zsh", "-fc")
            out = bash(
                f"autoload -Uz compinit && compinit -u -D\n{for_zsh}\nprint $_comps[pmrun]", zsh
            )
            assert out.strip() == "_pmrun_completion"
        bash(for_fish)
        assert "_PMRUN_COMPLETE" in (tmp_path / ".config/fish/completions/pmrun.fish").read_text()
    finally:
        status = subprocess.run(
            [str(Path(sys.executable).parent / "pmrun"), "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        coordinator = json.loads(status.stdout).get("coordinator") if status.stdout else None
        if coordinator:  # started on demand by the first block: stop it
            os.kill(coordinator["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(coordinator["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
