"""The launcher end to end: real processes, real signals, real /proc."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PMRUN, PYTHON
from helpers import backends_here, pid_alive, wait_until

# A child that allocates MB megabytes in STEP-MB chunks (written, so resident), then sleeps.
ALLOC = """
import sys, time
mb, step, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
chunks = [b"x" * (step << 20) for _ in range(mb // step)]
print("allocated", flush=True)
time.sleep(hold)
"""

BASE = ["--no-coordinator"]


@pytest.fixture(autouse=True, params=backends_here())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every scenario runs under each backend this machine has (PMRUN_BACKEND reaches pmrun)."""
    monkeypatch.setenv("PMRUN_BACKEND", request.param)
    return str(request.param)


def alloc_cmd(mb: int, step: int = 4, hold: float = 30) -> list[str]:
    return [PYTHON, "-c", ALLOC, str(mb), str(step), str(hold)]


def test_child_past_max_rss_is_stopped_with_137_and_report(run_pmrun, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE,
        "--max-rss",
        "120M",
        "--warn-rss",
        "60M",
        "--grace",
        "1",
        "--report",
        str(report),
        "--",
        *alloc_cmd(400),
    )
    assert r.returncode == 137, r.stderr
    data = json.loads(report.read_text())
    assert data["reason"] == "max-rss"
    assert data["exit_status"] == 137
    assert data["peak_rss_bytes"] > 120 << 20
    assert data["limits"]["max_rss"] == 120 << 20
    assert data["biggest_at_peak"]["name"].startswith("python")
    assert data["ru_maxrss_bytes"] > 100 << 20
    assert data["samples"] > 1
    # One warning line (not one per sample), then the stop line naming the limit and peak.
    assert r.stderr.count("passed --warn-rss") == 1
    assert "passed --max-rss 120.0M" in r.stderr
    assert "peak" in r.stderr and "biggest process" in r.stderr


def test_tree_whose_sum_crosses_the_limit_is_stopped(run_pmrun, tmp_path: Path) -> None:
    # Four processes of ~50 MB: each alone far under 150M, together over it.
    script = f"""
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", {ALLOC!r}, "50", "10", "30"]) for _ in range(4)]
for k in kids: k.wait()
"""
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE,
        "--max-rss",
        "150M",
        "--grace",
        "1",
        "--report",
        str(report),
        "--",
        PYTHON,
        "-c",
        script,
    )
    assert r.returncode == 137, r.stderr
    data = json.loads(report.read_text())
    assert data["reason"] == "max-rss"
    assert data["biggest_at_peak"]["rss_bytes"] < 150 << 20


DAEMON = """
import os, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        blob = b"y" * (int(sys.argv[2]) << 20)
        time.sleep(60)
    os._exit(0)
time.sleep(float(sys.argv[3]))
"""


def test_double_forked_setsid_daemon_is_counted_and_stopped(run_pmrun, tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE,
        "--max-rss",
        "100M",
        "--grace",
        "0.5",
        "--report",
        str(report),
        "--",
        PYTHON,
        "-c",
        DAEMON,
        str(pidfile),
        "200",
        "30",
    )
    assert r.returncode == 137, r.stderr
    daemon = int(pidfile.read_text())
    assert not pid_alive(daemon)
    assert json.loads(report.read_text())["peak_rss_bytes"] > 100 << 20


def test_daemon_left_behind_by_a_normal_exit_does_not_survive(run_pmrun, tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    r = run_pmrun(
        *BASE,
        "--grace",
        "0.5",
        "--",
        PYTHON,
        "-c",
        DAEMON.replace(
            "time.sleep(float(sys.argv[3]))",
            "import time as t\nwhile not os.path.exists(pidfile): t.sleep(0.01)",
        ),
        str(pidfile),
        "1",
        "0",
    )
    assert r.returncode == 0, r.stderr
    assert not pid_alive(int(pidfile.read_text()))


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_status_passes_through(run_pmrun, code: int) -> None:
    assert run_pmrun(*BASE, "--", "sh", "-c", f"exit {code}").returncode == code


def test_death_by_signal_is_pmruns_death_by_that_signal(run_pmrun) -> None:
    r = run_pmrun(*BASE, "--", "sh", "-c", "kill -USR2 $$")
    assert r.returncode == -signal.SIGUSR2  # a shell shows 128+N


def test_stdin_and_stdout_pass_through(run_pmrun) -> None:
    r = run_pmrun(*BASE, "--", "cat", input="hi\nthere\n")
    assert r.returncode == 0
    assert r.stdout == "hi\nthere\n"
    assert r.stderr == ""


def test_shell_pipeline_through_pmrun() -> None:
    out = subprocess.run(
        f"echo hi | {PMRUN} {' '.join(BASE)} -- cat",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout) == (0, "hi\n")


TRAP = """
import signal, sys, time
got = []
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
    signal.signal(s, lambda n, f: got.append(n))
print("ready", flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline and signal.SIGTERM not in got:
    time.sleep(0.01)
print(",".join(signal.Signals(n).name for n in got), flush=True)
sys.exit(7)
"""


def test_signals_sent_to_pmrun_reach_the_command() -> None:
    p = subprocess.Popen(
        [PMRUN, *BASE, "--", PYTHON, "-c", TRAP], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
        for s in (signal.SIGUSR1, signal.SIGHUP, signal.SIGINT, signal.SIGUSR2, signal.SIGQUIT):
            p.send_signal(s)
            time.sleep(0.05)  # keep the order observable; each is delivered regardless
        p.send_signal(signal.SIGTERM)
        out = p.stdout.readline().strip().split(",")
        assert p.wait(10) == 7
    finally:
        p.kill()
        p.wait()
    assert out == ["SIGUSR1", "SIGHUP", "SIGINT", "SIGUSR2", "SIGQUIT", "SIGTERM"]


def test_sigterm_to_pmrun_ends_a_default_command_and_pmrun_by_sigterm() -> None:
    p = subprocess.Popen([PMRUN, *BASE, "--", "sleep", "30"])
    try:
        wait_until(lambda: any(_children(p.pid)))
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_rlimit_as_is_applied_to_the_child(run_pmrun) -> None:
    r = run_pmrun(*BASE, "--max-as", "3G", "--", "cat", "/proc/self/limits")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Max address space"))
    assert line.split()[3:5] == [str(3 << 30), str(3 << 30)]


def test_default_rlimit_as_and_off(run_pmrun) -> None:
    r = run_pmrun(*BASE, "--", "cat", "/proc/self/limits")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Max address space"))
    assert line.split()[3] == "unlimited"
    r = run_pmrun(*BASE, "--max-as", "off", "--", "cat", "/proc/self/limits")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Max address space"))
    assert line.split()[3] == "unlimited"


def test_too_small_max_as_is_named_in_the_report(run_pmrun, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE,
        "--max-as",
        "200M",
        "--max-rss",
        "2G",
        "--report",
        str(report),
        "--",
        *alloc_cmd(1000, 8, 0),
    )
    assert r.returncode != 0
    data = json.loads(report.read_text())
    assert data["reason"] == "max-as", data
    assert "--max-as" in r.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--", "no-such-command-xyz"], 127, "no-such-command-xyz: command not found"),
        (["--", "/etc/passwd"], 126, "permission denied"),
        (["--", "/tmp"], 126, "permission denied"),
        (["--max-rss", "12Q", "--", "true"], 125, "invalid size '12Q'"),
        (["--max-rss", "-5M", "--", "true"], 125, "invalid size"),
        (["--warn-rss", "2G", "--max-rss", "1G", "--", "true"], 125, "above --max-rss"),
        (["--grace", "soon", "--", "true"], 125, "--grace"),
        (["--backend", "magic", "--", "true"], 125, "expected one of auto, cgroup, sampling"),
        (["--frobnicate", "--", "true"], 125, "unknown option --frobnicate"),
        (["--max-rss"], 125, "--max-rss needs a value"),
        (["--"], 125, "no command given"),
        (["--max-rss", "1G"], 125, "no command given"),
    ],
)
def test_bad_input_gets_one_line_and_its_code(run_pmrun, args, code, message) -> None:
    r = run_pmrun("--no-coordinator", *args)
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pmrun: ") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_environment_and_config_file_set_limits(run_pmrun, tmp_path: Path) -> None:
    (tmp_path / "pmrun.toml").write_text('[agent]\nmax-rss = "100M"\nwarn-rss = "50M"\n')
    report = tmp_path / "r.json"
    r = run_pmrun(*BASE, "--report", str(report), "--", "true", cwd=tmp_path)
    assert json.loads(report.read_text())["limits"]["max_rss"] == 100 << 20
    env = {**os.environ, "PMRUN_MAX_RSS": "200M"}
    r = run_pmrun(*BASE, "--report", str(report), "--", "true", cwd=tmp_path, env=env)
    assert r.returncode == 0
    assert json.loads(report.read_text())["limits"]["max_rss"] == 200 << 20
    run_pmrun(
        *BASE, "--max-rss", "300M", "--report", str(report), "--", "true", cwd=tmp_path, env=env
    )
    assert json.loads(report.read_text())["limits"]["max_rss"] == 300 << 20


IGNORE_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
blob = b"z" * (200 << 20)
time.sleep(60)
"""


def test_command_ignoring_sigterm_is_killed_after_grace(run_pmrun, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE,
        "--max-rss",
        "100M",
        "--grace",
        "0.5",
        "--report",
        str(report),
        "--",
        PYTHON,
        "-c",
        IGNORE_TERM,
    )
    assert r.returncode == 137
    data = json.loads(report.read_text())
    assert data["signal"] == signal.SIGKILL  # the grace ended it: no SIGKILL ends a sleep


def test_grace_zero_kills_at_once(run_pmrun, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE, "--max-rss", "100M", "--grace", "0", "--report", str(report), "--", *alloc_cmd(300)
    )
    assert r.returncode == 137
    assert json.loads(report.read_text())["signal"] == signal.SIGKILL


def test_sigkill_of_pmrun_takes_the_command_with_it(tmp_path: Path) -> None:
    p = subprocess.Popen([PMRUN, *BASE, "--", "sleep", "60"])
    try:
        kids = wait_until(lambda: _children(p.pid))
        p.kill()
        p.wait()
        child = kids[0]  # type: ignore[index]
        wait_until(lambda: not pid_alive(child), timeout=5)
    finally:
        p.kill()
        p.wait()


NODE_ALLOC = """
const bufs = [];
for (let i = 0; i < Number(process.argv[1]); i++) { bufs.push(Buffer.alloc(8 << 20, 1)); }
console.log("allocated");
setTimeout(() => {}, 30000);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node_agent_runs_under_default_limits_and_is_stopped_past_max(run_pmrun, tmp_path) -> None:
    ok = run_pmrun(*BASE, "--", "node", "-e", "console.log(process.memoryUsage().rss > 0)")
    assert (ok.returncode, ok.stdout.strip()) == (0, "true"), ok.stderr
    report = tmp_path / "r.json"
    r = run_pmrun(
        *BASE,
        "--max-rss",
        "150M",
        "--grace",
        "1",
        "--report",
        str(report),
        "--",
        "node",
        "-e",
        NODE_ALLOC,
        "60",
    )
    assert r.returncode == 137, r.stderr
    data = json.loads(report.read_text())
    assert data["reason"] == "max-rss"
    assert data["biggest_at_peak"]["name"].startswith("node")


def test_terminal_is_passed_through_untouched() -> None:
    # An interactive program sees a terminal on stdin/stdout and reads what is typed.
    script = (
        "import os,sys; print('tty', os.isatty(0), os.isatty(1), flush=True); print('got', input())"
    )
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.execv(PMRUN, [PMRUN, *BASE, "--", PYTHON, "-c", script])
    try:
        out = b""
        deadline = time.monotonic() + 15
        while b"tty True True" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                out += os.read(fd, 1024)
        os.write(fd, b"typed\n")
        while b"got typed" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 1024)
                except OSError:
                    break
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    assert b"tty True True" in out
    assert b"got typed" in out
    assert os.waitstatus_to_exitcode(status) == 0


def test_python_api_launch(tmp_path: Path) -> None:
    import pmrun

    agent = pmrun.launch(
        alloc_cmd(300, 4, 30),
        max_rss="100M",
        grace=0.5,
        coordinator=False,
        stdout=subprocess.DEVNULL,
    )
    assert agent.wait(60) == 137
    assert agent.report is not None
    assert agent.report["reason"] == "max-rss"
    ok = pmrun.launch(
        [sys.executable, "-c", "print('fine')"],
        coordinator=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = ok.communicate(timeout=30)
    assert (ok.returncode, out) == (0, "fine\n")
    assert ok.report is not None and ok.report["reason"] == "exit"


def test_sigkill_of_pmrun_leaves_no_daemon_behind(tmp_path: Path, backend: str) -> None:
    """The keeper kills the whole tree, double-forked setsid daemon included."""
    pidfile = tmp_path / "daemon.pid"
    p = subprocess.Popen(
        [
            PMRUN,
            "--no-coordinator",
            "--backend",
            backend,
            "--",
            PYTHON,
            "-c",
            DAEMON,
            str(pidfile),
            "1",
            "60",
        ]
    )
    try:
        wait_until(pidfile.exists)
        daemon = int(pidfile.read_text())
        assert pid_alive(daemon)
        p.kill()
        p.wait()
        wait_until(lambda: not pid_alive(daemon), timeout=5)
    finally:
        p.kill()
        p.wait()


# Grows to 97% of LIMIT (its interpreter included), holds still HOLD s, then grows past it.
PARKED = """
import sys, time
limit, hold = int(sys.argv[1]), float(sys.argv[2])
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * 4096
held = [b"x" * (int(0.97 * limit) - rss - (2 << 20))]
time.sleep(hold)
held += [b"x" * (1 << 20) for _ in range(limit // 8 >> 20)]
time.sleep(30)
"""


def test_a_tree_parked_near_its_limit_is_sampled_slowly_and_still_stopped(
    run_pmrun, tmp_path: Path, backend: str
) -> None:
    """Parked at 97% it cost ~800 samples/s; now at most ~100/s (10 ms; 20/s on cgroup v1,
    where the kernel wakes pmrun at the limit), and the growth that follows is still
    stopped by pmrun, not by the kernel."""
    report, rec = tmp_path / "r.json", tmp_path / "rec"
    limit = 400 << 20
    r = run_pmrun(
        *BASE,
        *("--max-rss", str(limit), "--grace", "0", "--report", str(report), "--record", str(rec)),
        *("--", PYTHON, "-c", PARKED, str(limit), "6"),
    )
    data = json.loads(report.read_text())
    assert r.returncode == 137, r.stderr
    assert data["reason"] == "max-rss"
    if backend == "sampling":
        # Over the whole run (start-up and growth included, so a little under the parked
        # rate); the old schedule took 200-700 a second here, depending on the load.
        rate = data["samples"] / (data["end_time"] - data["start_time"])
        assert rate < 150, data["samples"]
    else:
        # The recording keeps at most 100 samples a second: enough to see 20 from 45-700.
        lines = [json.loads(x) for x in rec.read_text().splitlines()]
        times = [x["t"] for x in lines if x["type"] == "sample" and x["rss"] >= 0.95 * limit]
        settled = [t for t in times if times[0] + 3 <= t < times[0] + 6]
        assert len(settled) / 3 < 35, len(settled)


def test_a_launch_without_a_coordinator_imports_nothing_of_it(tmp_path: Path) -> None:
    """``--no-coordinator`` has no admission to wait for: the protocol (~9 ms of imports)
    stays off its path to exec, which is what start-up costs."""
    r = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "pmrun", "--no-coordinator", "--", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "pmrun.launcher" in imported  # the measure works
    assert not imported & {"pmrun._admit", "pmrun.coordinator.protocol", "pmrun.coordinator.link"}
