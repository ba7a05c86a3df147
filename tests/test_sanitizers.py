"""What agents run must run under pmrun's defaults: sanitizers, Node, the JVM.

A finite RLIMIT_AS breaks programs that reserve more address space than they use:
AddressSanitizer's shadow is ~15 TiB, ThreadSanitizer's is fixed-address and larger,
so both die at start-up under any --max-as an agent's memory would suggest. The
default is therefore off; whoever sets --max-as gets a report that names it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from pmrun import policy

BASE = ["--no-coordinator"]

# Two threads and a heap block: enough for each sanitizer's runtime to map all it maps.
SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static int counter;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static void *work(void *arg) {
    for (int i = 0; i < 1000; i++) { pthread_mutex_lock(&m); counter++; pthread_mutex_unlock(&m); }
    return arg;
}
int main(void) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, work, 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], 0);
    char *p = malloc(64);
    p[0] = 'x';
    printf("ok %d %c\n", counter, p[0]);
    free(p);
    return 0;
}
"""


@pytest.fixture(scope="module", params=["address", "thread"])
def sanitized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A C program built with -fsanitize=address or =thread."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp(f"san-{request.param}")
    (d / "prog.c").write_text(SOURCE)
    exe = d / "prog"
    r = subprocess.run(
        [gcc, f"-fsanitize={request.param}", "-O1", "-pthread", str(d / "prog.c"), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"gcc cannot build a {request.param} sanitizer binary: {r.stderr[-300:]}")
    bare = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    return exe


def test_sanitizers_run_under_the_defaults(run_pmrun, sanitized: Path) -> None:
    r = run_pmrun(*BASE, "--", str(sanitized))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok 2000 x\n"


def test_sanitizers_under_a_small_max_as_are_named(run_pmrun, sanitized: Path, tmp_path) -> None:
    report = tmp_path / "r.json"
    r = run_pmrun(*BASE, "--max-as", "4G", "--report", str(report), "--", str(sanitized))
    assert r.returncode != 0
    data = json.loads(report.read_text())
    assert data["reason"] == "max-as", data
    assert "raise --max-as" in data["message"]
    assert "--max-as" in r.stderr


def test_node_and_java_run_under_the_defaults(run_pmrun) -> None:
    ran = 0
    for argv, needle in (
        (["node", "-e", "console.log(1+1)"], "2"),
        (["java", "-version"], "version"),
    ):
        exe = shutil.which(argv[0])
        if exe is None:
            continue
        bare = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=120)
        r = run_pmrun(*BASE, "--", exe, *argv[1:], timeout=120)
        assert (r.returncode, r.stdout) == (bare.returncode, bare.stdout), r.stderr
        assert needle in r.stdout + r.stderr
        ran += 1
    if ran == 0:
        pytest.skip("neither node nor java is installed")


def test_default_max_as_is_off() -> None:
    from pmrun.config import SETTINGS

    setting = next(s for s in SETTINGS if s.key == "max-as")
    assert setting.parse(setting.default) is None


@pytest.mark.parametrize(
    ("status", "vsz", "max_as", "expected"),
    [
        # A runtime's up-front reservation fails before any sample sees it: vsz stays low.
        (signal.SIGILL, 0, 2 << 30, True),  # Bun/JavaScriptCore's panic
        (signal.SIGSEGV, 0, 4 << 30, True),  # ThreadSanitizer's failed CHECK
        (signal.SIGABRT, 0, 4 << 30, True),  # AddressSanitizer's failed shadow reservation
        (66 << 8, 0, 4 << 30, True),  # the sanitizers' own exit code
        ((128 + signal.SIGABRT) << 8, 0, 4 << 30, True),  # a shell reporting the abort
        (1 << 8, 0, 4 << 30, False),  # a plain failure far from the limit
        (signal.SIGILL, 0, None, False),  # no RLIMIT_AS: a crash is a crash
        (signal.SIGKILL, 0, 4 << 30, False),  # killed by someone
    ],
)
def test_crashes_under_an_address_space_limit(status, vsz, max_as, expected) -> None:
    got = policy.looks_like_max_as(wait_status=status, peak_vsz_bytes=vsz, max_as_bytes=max_as)
    assert got is expected
