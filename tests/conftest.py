"""Shared fixtures: isolation from the user's setup, and a leak check on every test.

Every test runs with its own ``PMRUN_TEST_TOKEN`` in the environment, which every
process it starts inherits. At teardown, any live process still carrying the token
is a leak: it is killed, and the test fails naming it.

The fixtures every coordinator test takes (``procs``, ``sockdir``) live here too; plain
helpers (waits, liveness, a fake clock, another uid) are in ``helpers.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator_fixtures import Procs
from pmrun.demo import pids_with_token

VENV_BIN = Path(sys.executable).parent
PMRUN = str(VENV_BIN / "pmrun")
PYTHON = sys.executable


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime/config dir and a leak-check token for every test."""
    token = uuid.uuid4().hex
    # Short path: AF_UNIX socket paths are limited to 107 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="pmt", dir="/tmp"))
    os.chmod(runtime, 0o700)
    monkeypatch.setenv("PMRUN_TEST_TOKEN", token)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(runtime / "config"))
    for var in [v for v in os.environ if v.startswith("PMRUN_") and v != "PMRUN_TEST_TOKEN"]:
        monkeypatch.delenv(var)
    yield runtime
    # A process killed just before teardown may still be exiting: give it a moment.
    deadline = time.monotonic() + 3
    leaked = pids_with_token(token, "PMRUN_TEST_TOKEN")
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked = pids_with_token(token, "PMRUN_TEST_TOKEN")
    descriptions = []
    for pid in leaked:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            descriptions.append(f"{pid}: {cmd}")
        except OSError:
            descriptions.append(str(pid))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(runtime, ignore_errors=True)
    if leaked:
        pytest.fail("processes left behind: " + "; ".join(descriptions))


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Every process the test starts through it: killed, reaped and checked gone by pid."""
    owner = Procs()
    try:
        yield owner
    finally:
        owner.cleanup()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private directory (AF_UNIX paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="pmc", dir="/tmp"))
    os.chmod(d, 0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def run_pmrun() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``pmrun`` command line; returns the completed process (text mode)."""

    def run(*args: str, input: str | None = None, timeout: float = 60, **kw: object):  # type: ignore[no-untyped-def]
        return subprocess.run(
            [PMRUN, *args], input=input, capture_output=True, text=True, timeout=timeout, **kw
        )

    return run


REPO = Path(__file__).resolve().parent.parent
NPM_PREFIX = REPO / ".venv" / "npm"
CLAUDE_CODE = "@anthropic-ai/claude-code"


@pytest.fixture(scope="session")
def claude() -> Path:
    """The ``claude`` executable, installed with npm into .venv/npm if not there yet."""
    exe = NPM_PREFIX / "node_modules" / ".bin" / "claude"
    if not exe.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed")
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_PREFIX), CLAUDE_CODE],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            reachable = subprocess.run(
                [npm, "ping"], capture_output=True, text=True, timeout=60
            ).returncode
            if reachable != 0:
                pytest.skip(f"the npm registry is unreachable: {r.stderr.strip()[-200:]}")
            pytest.fail(f"npm install {CLAUDE_CODE} failed: {r.stderr[-500:]}")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{exe} --version failed bare: {r.stderr[-300:]}"
    return exe
