"""Claude Code (npm ``@anthropic-ai/claude-code``, a Bun binary) runs under pmrun as it runs bare.

The package is installed once into ``.venv/npm`` (conftest's ``claude`` fixture); without the
npm registry the tests are skipped, saying so. Each command gets a fresh HOME, so nothing
of the user's setup is read and the three commands work offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import backends_here

COMMANDS = (["--version"], ["--help"], ["mcp", "list"])
BASE = ["--no-coordinator"]
PMRUN = str(Path(sys.executable).parent / "pmrun")


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_byte_identical_bare_and_under_the_defaults(
    claude: Path, tmp_path: Path, args: list[str]
) -> None:
    env = _env(tmp_path)
    bare = subprocess.run([str(claude), *args], capture_output=True, env=env, timeout=120)
    under = subprocess.run(
        [PMRUN, *BASE, "--", str(claude), *args],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert bare.returncode == 0, bare.stderr[-500:]
    assert (under.returncode, under.stdout) == (bare.returncode, bare.stdout), under.stderr[-500:]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_same_verdict_on_both_backends_at_200m(
    claude: Path, tmp_path: Path, args: list[str]
) -> None:
    env = _env(tmp_path)
    bare = subprocess.run([str(claude), *args], capture_output=True, env=env, timeout=120)
    verdicts = {}
    for backend in backends_here():
        report = tmp_path / f"{backend}.json"
        r = subprocess.run(
            [
                PMRUN,
                *BASE,
                "--backend",
                backend,
                "--max-rss",
                "200M",
                "--report",
                str(report),
                "--",
                str(claude),
                *args,
            ],
            capture_output=True,
            env=env,
            timeout=120,
        )
        data = json.loads(report.read_text())
        verdicts[backend] = (r.returncode, data["reason"])
        assert r.stdout == bare.stdout, (backend, r.stderr[-500:])
    assert set(verdicts.values()) == {(bare.returncode, "exit")}, verdicts


@pytest.mark.parametrize("backend", backends_here())
def test_the_peak_of_claude_version_is_seen(claude: Path, tmp_path: Path, backend: str) -> None:
    """A 100 ms command's peak is sampled (it was the 24 KiB of the exec'ing launcher)."""
    report = tmp_path / "r.json"
    r = subprocess.run(
        [
            PMRUN,
            *BASE,
            "--backend",
            backend,
            "--report",
            str(report),
            "--",
            str(claude),
            "--version",
        ],
        capture_output=True,
        env=_env(tmp_path),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["peak_rss_bytes"] >= 16 << 20, data
    assert data["ru_maxrss_bytes"] >= data["peak_rss_bytes"], data
