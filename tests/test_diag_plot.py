"""``pmrun plot``: a real recording of a run stopped for memory, drawn; bad inputs refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PMRUN, PYTHON
from pmrun.cli.diag import plot_command
from pmrun.diagnostics.plot import (
    MAX_PROCESS_LINES,
    byte_tick_step,
    describe_end,
    marker_label,
    markers_of,
    plot_recording,
)
from pmrun.recording import Recording, read_recording

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Grows by 4 MiB every 10 ms until stopped; a second process holds 20 MiB meanwhile.
GROW = """
import subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; b = b'h' * (20 << 20); time.sleep(30)"])
time.sleep(0.3)
chunks = []
while True:
    chunks.append(b"x" * (4 << 20))
    time.sleep(0.01)
"""


# A small recording as the launcher writes it: one process, warned, then ended by itself.
RECORDING = (
    "\n".join(
        json.dumps(line)
        for line in [
            {
                "type": "start",
                "t0": 1e9,
                "command": ["x"],
                "name": "x",
                "limits": {"max_rss": 10 << 20, "warn_rss": 5 << 20},
            },
            {"type": "proc", "t": 0.0, "pid": 7, "name": "x"},
            {"type": "sample", "t": 0.0, "rss": 1 << 20, "procs": {"7": 1 << 20}},
            {"type": "sample", "t": 0.5, "rss": 6 << 20, "procs": {"7": 6 << 20}},
            {"type": "event", "t": 0.4, "kind": "warn", "detail": {"rss": 6 << 20}},
            {"type": "end", "t": 0.6, "reason": "exit", "exit_status": 0, "peak_rss": 6 << 20},
        ]
    )
    + "\n"
)


@pytest.fixture
def killed_recording(tmp_path: Path) -> Path:
    """A recording of a two-process run killed at --max-rss 100M (grace 0: SIGKILL at once)."""
    rec = tmp_path / "run.rec"
    r = subprocess.run(
        [PMRUN, "--no-coordinator", "--backend", "sampling", "--record", str(rec),
         "--max-rss", "100M", "--warn-rss", "60M", "--grace", "0", "--quiet",
         "--", PYTHON, "-c", GROW],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 137, r.stderr
    return rec


def test_plot_of_a_killed_run_has_every_line_limit_and_marker(
    killed_recording: Path, tmp_path: Path
) -> None:
    rec = read_recording(str(killed_recording))
    out = tmp_path / "out.png"
    summary = plot_recording(rec, str(out))

    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000  # a drawn figure, not an empty canvas
    # The tree total first, then one line per process, labelled "pid name".
    assert summary.lines[0].startswith("tree total")
    assert len(summary.lines) == 1 + len(rec.per_process) >= 3
    for pid, name in rec.names.items():
        assert f"{pid} {name}" in summary.lines
    assert summary.limits == ("--warn-rss 60.0M", "--max-rss 100.0M")
    kinds = [m.kind for m in summary.markers]
    assert kinds.count("warn") == 1
    assert "stop" in kinds and "kill" in kinds and kinds[-1] == "exit"
    assert [m.t for m in summary.markers] == sorted(m.t for m in summary.markers)
    assert "stop (max-rss)" in next(m.label for m in summary.markers if m.kind == "stop")
    assert summary.title.splitlines()[-1].startswith(
        "stopped by pmrun: memory passed --max-rss (exit 137"
    )
    assert summary.samples == len(rec.times) > 5
    kinds = {json.loads(line)["type"] for line in killed_recording.read_text().splitlines()}
    assert kinds == {"start", "proc", "sample", "event", "end"}


def test_plot_command_writes_the_png_and_says_how_the_run_ended(
    killed_recording: Path, tmp_path: Path
) -> None:
    out = tmp_path / "incident.png"
    r = subprocess.run([PMRUN, "plot", str(killed_recording), "-o", str(out)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert r.stdout.startswith(f"wrote {out}:")
    assert "passed --max-rss" in r.stdout and "exit 137" in r.stdout


def test_plot_writes_next_to_the_recording_without_o(tmp_path: Path) -> None:
    rec = tmp_path / "run.rec"
    rec.write_text(RECORDING)
    r = CliRunner().invoke(plot_command, [str(rec)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (None, 2, "no such file"),
        ("hello\n", 2, "not a pmrun recording"),
        ('{"type":"sample","t":0,"rss":1,"procs":{}}\n', 2, "not a pmrun recording"),
        ('{"type":"start","t0":0,"command":["x"],"limits":{}}\n', 1, "no samples"),
        ('{"type":"start","t0":0}\n{"type":"sample","t":"soon"}\n', 2, "not a pmrun recording"),
        (b"\xff\xfe\x00garbage", 2, "not a pmrun recording"),
    ],
    ids=["missing", "text", "no-start", "no-samples", "bad-sample", "binary"],
)
def test_plot_refuses_bad_input_in_one_line(
    tmp_path: Path, content: str | bytes | None, code: int, message: str
) -> None:
    path = tmp_path / "in.rec"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    r = subprocess.run([PMRUN, "plot", str(path), "-o", str(tmp_path / "o.png")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith("pmrun: error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_plot_refuses_an_unwritable_output(tmp_path: Path) -> None:
    rec = tmp_path / "run.rec"
    rec.write_text(RECORDING)
    r = CliRunner().invoke(plot_command, [str(rec), "-o", str(tmp_path / "no" / "dir.png")])
    assert r.exit_code == 1
    assert r.stderr.startswith("pmrun: error: cannot write") and r.stderr.count("\n") == 1


# -- the pure parts ----------------------------------------------------------------------


def _recording(
    n_procs: int = 1, events: list[dict] | None = None, end: dict | None = None
) -> Recording:
    rec = Recording(header={"command": ["agent", "--flag"], "name": "agent",
                            "limits": {"max_rss": 100 << 20, "warn_rss": 50 << 20}})  # fmt: skip
    for i in range(10):
        t = i * 0.1
        procs = {1000 + p: (p + 1) * (i + 1) << 20 for p in range(n_procs)}
        rec.times.append(t)
        rec.totals.append(sum(procs.values()))
        for pid, rss in procs.items():
            rec.per_process.setdefault(pid, []).append((t, rss))
    rec.names = {1000 + p: f"worker{p}" for p in range(n_procs)}
    rec.events = events or []
    rec.end = end
    return rec


def test_many_processes_are_folded_into_one_line(tmp_path: Path) -> None:
    rec = _recording(n_procs=MAX_PROCESS_LINES + 4)
    summary = plot_recording(rec, str(tmp_path / "p.png"))
    assert len(summary.lines) == 1 + MAX_PROCESS_LINES + 1
    assert summary.lines[-1] == "4 other processes"
    # The biggest processes get their own lines.
    assert f"{1000 + MAX_PROCESS_LINES + 3} worker{MAX_PROCESS_LINES + 3}" in summary.lines


def test_a_recording_without_end_still_plots_and_says_so(tmp_path: Path) -> None:
    summary = plot_recording(_recording(), str(tmp_path / "p.svg"))
    assert "has no end" in summary.title
    assert summary.markers == ()
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("event", "label"),
    [
        ({"kind": "warn", "detail": {"rss": 50 << 20}}, "warn at 50.0M"),
        ({"kind": "stop", "detail": {"reason": "pool", "rss": 3 << 30}}, "stop (pool) at 3.0G"),
        ({"kind": "kill", "detail": {"why": "grace over"}}, "SIGKILL (grace over)"),
        ({"kind": "kill", "detail": {}}, "SIGKILL"),
        ({"kind": "evict", "detail": {"freed": 1 << 20}}, "evict: freed 1.0M"),
        ({"kind": "something-new", "detail": {}}, "something-new"),
    ],
)
def test_marker_labels(event: dict, label: str) -> None:
    assert marker_label(event) == label


def test_the_end_is_a_marker_unless_an_exit_event_says_it() -> None:
    end = {"t": 0.9, "reason": "exit", "exit_status": 0, "peak_rss": 10 << 20}
    assert [m.label for m in markers_of(_recording(end=end))] == ["exit 0"]
    rec = _recording(events=[{"t": 0.8, "kind": "exit", "detail": {}}], end=end)
    assert [m.kind for m in markers_of(rec)] == ["exit"]
    assert describe_end(_recording(end=end)) == "exited by itself (exit 0, peak 10.0M)"


@pytest.mark.parametrize(
    ("top", "step"),
    [
        (80 << 20, 20 << 20),
        (100 << 20, 20 << 20),
        (5 << 30, 1 << 30),
        (1 << 20, 200 << 10),
        (0, 1 << 10),
    ],
)
def test_y_ticks_are_round_binary_steps(top: int, step: int) -> None:
    assert byte_tick_step(top) == step
    assert top / byte_tick_step(top) <= 6


def test_plot_refuses_an_image_format_it_does_not_know(tmp_path: Path) -> None:
    rec = tmp_path / "run.rec"
    rec.write_text(RECORDING)
    r = CliRunner().invoke(plot_command, [str(rec), "-o", str(tmp_path / "out.xyz")])
    assert r.exit_code == 2
    assert r.stderr.startswith("pmrun: error: cannot write") and "xyz" in r.stderr


def test_a_process_is_named_by_its_latest_name(tmp_path: Path) -> None:
    """A process that execs (a pyenv shim: bash, then python) is named by what it became."""
    rec_path = tmp_path / "exec.rec"
    r = subprocess.run(
        [PMRUN, "--no-coordinator", "--record", str(rec_path), "--",
         "sh", "-c", f"sleep 1.5; exec {PYTHON} -c 'import time; time.sleep(3)'"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec = read_recording(str(rec_path))
    pid = json.loads(rec_path.read_text().splitlines()[0])["pid"]
    summary = plot_recording(rec, str(tmp_path / "p.png"))
    assert f"{pid} python" in summary.lines, summary.lines
