"""The wrapper's contract, against the real ``pmrun`` executable.

pmrun sits in front of commands in users' scripts, so whatever pmrun's own trouble it
must never hang, print a traceback or take the command down with it: one line on
stderr, a documented exit code, and the command's own behaviour where it could run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PMRUN
from coordinator_fixtures import coordinator_pids, pid_alive, wait_until


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    """A private coordinator socket; whatever coordinator pmrun starts on it is stopped after."""
    path = str(tmp_path / "s" / "coordinator.sock")
    yield path
    for pid in coordinator_pids(path):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(pid_alive(p) for p in coordinator_pids(path)), 10, "coordinator")


def pmrun(*args: str, timeout: float = 30, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PMRUN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[call-overload]
    )


def assert_one_pmrun_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pmrun:")]
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], stderr


# -- exec failures (item: hang on exec failure with a coordinator) --------------------


def _script(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(0o755)
    return str(p)


@pytest.mark.parametrize("coordinator", [True, False], ids=["coordinator", "standalone"])
def test_file_without_shebang_runs_with_bin_sh(
    tmp_path: Path, socket_path: str, coordinator: bool
) -> None:
    """As execvp(3) and env(1) do: ENOEXEC → /bin/sh FILE ARGS."""
    script = _script(tmp_path, "plain", 'echo "sh says $1 $#"\nexit 7\n')
    opts = ["--socket", socket_path] if coordinator else ["--no-coordinator"]
    r = pmrun(*opts, "--", script, "hello")
    assert r.returncode == 7, r.stderr
    assert r.stdout == "sh says hello 1\n"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("coordinator", [True, False], ids=["coordinator", "standalone"])
def test_missing_interpreter_is_127_with_a_clear_line(
    tmp_path: Path, socket_path: str, coordinator: bool
) -> None:
    script = _script(tmp_path, "bad", "#!/nonexistent/interp -x\necho never\n")
    opts = ["--socket", socket_path] if coordinator else ["--no-coordinator"]
    r = pmrun(*opts, "--", script)
    assert r.returncode == 127, r.stderr
    assert_one_pmrun_line(r.stderr, "/nonexistent/interp", "interpreter")
    assert r.stdout == ""


@pytest.mark.parametrize(
    "text, code",
    [
        ("#!/nonexistent/interp\n", 127),  # bad interpreter
        (None, 126),  # a directory
        ("\x7fELF\x02garbage", 126),  # not a valid binary, but looks like one
    ],
    ids=["bad-interpreter", "directory", "bad-elf"],
)
def test_exec_failure_with_a_coordinator_never_hangs(
    tmp_path: Path, socket_path: str, text: str | None, code: int
) -> None:
    if text is None:
        target = str(tmp_path / "dir")
        os.mkdir(target)
    else:
        target = _script(tmp_path, "x", text)
    r = pmrun("--socket", socket_path, "--", target, timeout=20)
    assert r.returncode == code, r.stderr
    assert_one_pmrun_line(r.stderr)
