"""No process of an agent's tree survives pmrun, whatever the tree and however pmrun ends.

Randomized trees (double forks, setsid, SIGTERM ignored, forks while being killed,
bounded fork storms) under every backend, ended three ways: by the memory limit, by
a signal to pmrun, and by SIGKILL of pmrun itself. Every process that ever existed
recorded its pid and start time; afterwards none of them may be alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import PMRUN, PYTHON, wait_for

TREE = str(Path(__file__).parent / "agents" / "tree.py")
SEEDS = range(4)


def backends() -> list[str]:
    out = ["sampling"]
    try:
        from pmrun.backends.cgroup import create_cgroup_backend  # noqa: F401

        out.append("cgroup")
    except ImportError:
        pass
    return out


def survivors(piddir: Path) -> tuple[int, list[int]]:
    """(processes recorded, those still alive with the same start time)."""
    alive = []
    files = [f for f in piddir.iterdir() if not f.name.startswith(".")]
    for f in files:
        pid, start = (int(x) for x in f.read_text().split())
        try:
            with open(f"/proc/{pid}/stat") as st:
                rest = st.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[19]) == start and rest[0] not in ("Z", "X"):
            alive.append(pid)
    return len(files), alive


def kill_all(piddir: Path) -> None:
    for pid in survivors(piddir)[1]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(
    backend: str, seed: int, piddir: Path, *extra: str, alloc_mb: int = 0
) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [
            PMRUN,
            "--no-coordinator",
            "--backend",
            backend,
            "--grace",
            "0.3",
            *extra,
            "--",
            PYTHON,
            TREE,
            str(seed),
            str(piddir),
            str(alloc_mb),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    return p


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("how", ["limit", "signal", "sigkill"])
def test_nothing_escapes(tmp_path: Path, backend: str, how: str) -> None:
    runs, recorded, found = 0, 0, []
    for seed in SEEDS:
        piddir = tmp_path / f"{how}-{seed}"
        piddir.mkdir()
        p = None
        try:
            if how == "limit":
                p = start(backend, seed, piddir, "--max-rss", "600M", alloc_mb=700)
                assert p.wait(30) == 137
            elif how == "signal":
                p = start(backend, seed, piddir)
                p.send_signal(signal.SIGTERM)
                assert p.wait(30) != 0
            else:
                p = start(backend, seed, piddir)
                p.kill()
                p.wait(30)
            # After SIGKILL the keeper (sampling) or the group (cgroup) takes the tree down;
            # wait for that to finish, bounded, before counting.
            n, alive = survivors(piddir)
            if alive and how == "sigkill":
                wait_for(lambda d=piddir: not survivors(d)[1], timeout=10)
                n, alive = survivors(piddir)
            runs += 1
            recorded += n
            found += alive
        finally:
            if p is not None:
                p.kill()
                p.wait()
            kill_all(piddir)
    print(f"{backend}/{how}: {runs} runs, {recorded} processes, {len(found)} survivors")
    assert recorded > runs  # the trees really had processes
    assert found == []
