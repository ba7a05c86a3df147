"""pmrun's Python API as a drop-in for subprocess and asyncio, with real processes.

Where Popen has an answer, the same call is made through ``subprocess`` and through
``pmrun`` and the outcomes compared.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import pmrun
from conftest import PYTHON
from helpers import pid_alive, wait_until

NOC = {"coordinator": False}

# args, kwargs: each run under subprocess.run and pmrun.run; the outcomes must match.
SAME_AS_SUBPROCESS: list[tuple[Any, dict[str, Any]]] = [
    ("echo hi; echo $0", {"shell": True}),
    (["echo $0-$1", "zero", "one"], {"shell": True}),  # a list with shell=True: Popen's meaning
    ("/bin/echo", {}),  # a str without shell is the program itself
    (["/bin/echo", "a b", "c"], {}),
    (["printf", "%s|", "x", "y z"], {}),
    (["sh", "-c", "exit 3"], {}),
    (["sh", "-c", "kill -TERM $$"], {}),  # -15, as Popen says
    (["argv0", "from", "executable"], {"executable": "/bin/echo"}),
    ("echo $0", {"shell": True, "executable": "/bin/bash"}),
    (["sh", "-c", "echo $FOO; pwd"], {"env": {"FOO": "bar", "PATH": "/usr/bin:/bin"}, "cwd": "/"}),
    (["cat"], {"input": "typed\n", "text": True}),
    (["sh", "-c", "echo out; echo err >&2"], {"encoding": "utf-8"}),
    (["sh", "-c", "ls /proc/self/fd | wc -l"], {}),  # no fd of pmrun's reaches the command
]


@pytest.mark.parametrize("args,kwargs", SAME_AS_SUBPROCESS)
def test_same_outcome_as_subprocess(args: Any, kwargs: dict[str, Any]) -> None:
    bare = subprocess.run(args, capture_output=True, timeout=60, **kwargs)
    under = pmrun.run(args, capture_output=True, timeout=60, **kwargs, **NOC)
    assert isinstance(under, subprocess.CompletedProcess)
    assert (under.returncode, under.stdout, under.stderr) == (
        bare.returncode,
        bare.stdout,
        bare.stderr,
    )
    assert under.args == args


@pytest.mark.parametrize(
    "args,kwargs,error",
    [
        ("echo hi", {}, FileNotFoundError),  # not split into characters, not a shell line
        (["/no/such/program"], {}, FileNotFoundError),
        (["no-such-program-anywhere"], {}, FileNotFoundError),
        (["/etc/passwd"], {}, PermissionError),
        (["true"], {"cwd": "/no/such/dir"}, FileNotFoundError),
        ([], {}, IndexError),
    ],
)
def test_errors_popen_raises_are_raised(args: Any, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        subprocess.Popen(args, **kwargs)
    with pytest.raises(error):
        pmrun.launch(args, **kwargs, **NOC)


def test_pid_is_the_commands_and_launcher_pid_is_pmruns() -> None:
    agent = pmrun.launch(["sleep", "30"], **NOC)
    try:
        assert agent.pid != agent.launcher_pid
        with open(f"/proc/{agent.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[:2] == [b"sleep", b"30"]
        with open(f"/proc/{agent.launcher_pid}/cmdline", "rb") as f:
            assert b"pmrun" in f.read()
        assert agent.args == ["sleep", "30"] and agent.returncode is None
        assert agent.poll() is None
        agent.terminate()  # forwarded to the command
        assert agent.wait(30) == -signal.SIGTERM
        assert agent.report is not None and agent.report["pid"] == agent.pid
        assert "signal 15" in repr(agent)
    finally:
        agent.kill()
        agent.wait(30)


def test_start_new_session_and_pass_fds() -> None:
    r, w = os.pipe()
    script = f"import os; os.write({w}, str(os.getsid(0)).encode())"
    try:
        with pmrun.launch(
            [PYTHON, "-c", script], pass_fds=(w,), start_new_session=True, **NOC
        ) as a:
            os.close(w)
            sid = int(os.read(r, 100).decode())
    finally:
        os.close(r)
    assert a.returncode == 0 and sid != os.getsid(0) and sid == a.launcher_pid


def test_stopped_for_memory_is_137_and_check_raises() -> None:
    alloc = (
        "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(30)"
    )
    with pytest.raises(subprocess.CalledProcessError) as e:
        pmrun.run([PYTHON, "-c", alloc], max_rss="100M", grace=0.5, check=True, timeout=60, **NOC)
    assert e.value.returncode == 137
    agent = pmrun.launch([PYTHON, "-c", alloc], max_rss="100M", grace=0.5, **NOC)
    assert agent.wait(60) == 137
    assert agent.report is not None and agent.report["reason"] == "max-rss"


def test_run_timeout_stops_the_whole_tree() -> None:
    script = "sleep 60 & echo $! ; echo $$; wait"
    with pytest.raises(subprocess.TimeoutExpired) as e:
        pmrun.run(["sh", "-c", script], capture_output=True, text=True, timeout=1, **NOC)
    pids = [int(p) for p in e.value.output.split()]
    assert len(pids) == 2
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10)


def test_kill_reaches_the_command_and_the_report_is_written() -> None:
    agent = pmrun.launch(["sleep", "30"], **NOC)
    pid = agent.pid
    agent.kill()
    assert agent.wait(30) == -signal.SIGKILL
    assert not pid_alive(pid)
    assert agent.report is not None and agent.report["signal"] == signal.SIGKILL


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("ending", ["wait", "poll", "kill", "exception", "never-read", "dropped"])
def test_no_file_left_behind_and_no_fd_leaked(
    ending: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    before = _fds()
    if ending == "exception":
        with pytest.raises(subprocess.TimeoutExpired):
            with pmrun.launch(["sleep", "30"], **NOC) as agent:
                try:
                    agent.wait(0.2)
                finally:
                    agent.kill()
    else:
        agent = pmrun.launch(["sh", "-c", "exit 4"] if ending != "kill" else ["sleep", "30"], **NOC)
        if ending == "wait":
            assert agent.wait(30) == 4 and agent.report is not None
        elif ending == "poll":
            wait_until(lambda: agent.poll() is not None, timeout=30)
            assert agent.report is not None and agent.report["exit_status"] == 4
        elif ending == "kill":
            agent.kill()
            agent.wait(30)
        elif ending == "never-read":
            agent._popen.wait(30)  # ends, but no one asks pmrun's handle
        agent_pid = agent.launcher_pid
        del agent
        wait_until(lambda: not pid_alive(agent_pid), timeout=30)
    import gc

    gc.collect()
    assert os.listdir(tmp) == []
    assert _fds() <= before | {max(before)}  # at most the fd listdir itself reuses


def test_a_parent_without_stdin_gets_its_report_and_the_command_no_extra_stdin() -> None:
    """With fd 0 closed, the memfd must not become the command's stdin (it would write into it)."""
    code = (
        "import os, pmrun; os.close(0);"
        "a = pmrun.launch(['sh', '-c', 'echo junk >&0'], stderr=-3, coordinator=False);"
        "a.wait(); print(a.report is not None and a.report['reason'])"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout == "exit\n", out.stderr


def test_pmruns_own_error_is_125_without_report_and_pid_is_the_launchers() -> None:
    agent = pmrun.launch(["true"], backend="bogus", stderr=subprocess.PIPE, text=True, **NOC)
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == 125 and agent.report is None
    assert agent.pid == agent.launcher_pid
    assert err.count("\n") == 1 and err.startswith("pmrun:")


def test_context_manager_closes_and_waits() -> None:
    with pmrun.launch(["sh", "-c", "echo hi"], stdout=subprocess.PIPE, text=True, **NOC) as agent:
        assert agent.stdout is not None and agent.stdout.read() == "hi\n"
    assert agent.returncode == 0 and agent.stdout.closed
    assert agent.report is not None and agent.report["reason"] == "exit"


def test_communicate_with_input_bytes() -> None:
    agent = pmrun.launch(["wc", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, **NOC)
    out, err = agent.communicate(b"12345", timeout=30)
    assert (out.strip(), err, agent.returncode) == (b"5", None, 0)


def test_asyncio_exec_and_shell() -> None:
    async def main() -> None:
        proc = await pmrun.create_subprocess_exec(
            "sh", "-c", "cat; echo $$", stdin=subprocess.PIPE, stdout=subprocess.PIPE, **NOC
        )
        assert proc.pid != proc.launcher_pid
        out, _ = await proc.communicate(b"in\n")
        lines = out.decode().split()
        assert lines == ["in", str(proc.pid)]
        assert proc.returncode == 0 and proc.report is not None
        shell = await pmrun.create_subprocess_shell(
            "echo $0; exit 5", stdout=asyncio.subprocess.PIPE, **NOC
        )
        assert shell.stdout is not None
        assert await shell.stdout.read() == b"/bin/sh\n"
        assert await shell.wait() == 5
        sleeper = await pmrun.create_subprocess_exec("sleep", "30", **NOC)
        pid = sleeper.pid
        sleeper.kill()
        assert await sleeper.wait() == -signal.SIGKILL and not pid_alive(pid)

    before = _fds()
    asyncio.run(main())
    import gc

    gc.collect()
    assert _fds() <= before | {max(before)}


def test_async_and_sync_agree_with_asyncio_on_errors() -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("no-such-program-anywhere")
        with pytest.raises(FileNotFoundError):
            await pmrun.create_subprocess_exec("no-such-program-anywhere", **NOC)

    asyncio.run(main())


def test_exports() -> None:
    for name in ("launch", "run", "create_subprocess_exec", "create_subprocess_shell", "Agent"):
        assert name in pmrun.__all__ and getattr(pmrun, name) is not None
    assert sys.modules["pmrun.api"].run is pmrun.run
