"""The cgroup backend on the real kernel, with real processes.

Runs on whichever hierarchy holds the memory controller here (v1 on this project's CI,
v2 on most current distributions); what is specific to one is marked and skipped
with the reason on the other. Every process a test starts is killed and reaped, and
every group it makes removed, before the test ends; :func:`no_groups_left` checks.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import prctl
import pytest

from conftest import PMRUN, PYTHON
from helpers import NOBODY, become_nobody, pid_alive, wait_until
from pmrun import _spawn, cgroups
from pmrun.backends.cgroup import CgroupBackend, create_cgroup_backend, kernel_limit_bytes
from pmrun.errors import CgroupError, PmrunError

MiB = 1 << 20
GiB = 1 << 30
F = TypeVar("F", bound=Callable[..., Any])
SRC = str(Path(__file__).resolve().parent.parent / "src")


def _why_not() -> str | None:
    try:
        layout = cgroups.detect()
    except CgroupError as e:
        return f"no cgroup memory controller for pmrun here: {e}"
    if not os.access(layout.memory_dir, os.W_OK):
        return f"{layout.memory_dir} is not writable by this user"
    return None


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
LAYOUT = None if REASON else cgroups.detect()


def v(version: int) -> Callable[[F], F]:
    """Run only where the memory controller is on cgroup ``version``; marked ``v1``/``v2``
    so that each lane can select its own (``-m "not v1"`` in the v2 guest)."""
    here = LAYOUT.version if LAYOUT else None
    skip = pytest.mark.skipif(
        here != version,
        reason=f"the memory controller is on cgroup v{here} here, not v{version}"
        + (" (scripts/test-v2 runs these on a real v2 kernel)" if version == 2 else ""),
    )

    def mark(f: F) -> F:
        return getattr(pytest.mark, f"v{version}")(skip(f))  # type: ignore[no-any-return]

    return mark


def no_groups_left(*dirs: str) -> None:
    for d in dirs:
        assert not os.path.exists(d), f"group left behind: {d}"


class Launcher:
    """Plays the launcher's part: a child subreaper that starts agents through the real
    ``_spawn`` (joining the group before exec) and reaps everything below it."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.started: list[int] = []
        self.backends: list[CgroupBackend] = []
        self.extra_pids: list[int] = []  # daemons the agents reported

    def backend(
        self, max_rss: int = 200 * MiB, warn_rss: int = 100 * MiB, memory_high: str = "backstop"
    ) -> CgroupBackend:
        agent_id = f"test-{len(self.backends)}.{os.getpid()}"
        b = create_cgroup_backend(
            agent_id=agent_id, max_rss=max_rss, warn_rss=warn_rss, memory_high=memory_high
        )
        self.backends.append(b)
        return b

    def start(self, backend: CgroupBackend, *argv: str) -> int:
        pid = _spawn.spawn(list(argv), dict(os.environ), max_as=None, prepare=backend.prepare_child)
        backend.started(pid)
        self.started.append(pid)
        return pid

    def python(self, backend: CgroupBackend, code: str, *args: str) -> int:
        return self.start(backend, PYTHON, "-c", code, *args)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.statuses[pid] = status

    def wait(self, pid: int, timeout: float = 20) -> int:
        def done() -> bool:
            self.reap()
            return pid in self.statuses

        wait_until(done, timeout)
        return self.statuses[pid]

    def close(self) -> None:
        dirs: list[str] = []
        for b in self.backends:
            dirs.extend(b.group.dirs)
            b.kill_all(self.reap)
            b.close()
        for pid in self.started + self.extra_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.reap()
        for pid in self.started + self.extra_pids:
            assert not pid_alive(pid), f"process {pid} outlived its test"
        no_groups_left(*dirs)


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    prctl.set_child_subreaper(1)  # orphans of the agents' trees come back to us
    la = Launcher()
    try:
        yield la
    finally:
        try:
            la.close()
        finally:
            prctl.set_child_subreaper(0)


def ready_file(tmp_path: Path, name: str = "ready") -> Path:
    return tmp_path / name


def wait_file(path: Path, timeout: float = 20) -> str:
    wait_until(lambda: path.exists() and path.read_text().strip(), timeout)
    return path.read_text().strip()


# Agents. Each writes to the file named in argv[1] once it has done what the test watches.
HOLD_ANON = """
import sys, time
block = b"\\1" * (100 << 20)  # written, so every page is resident
open(sys.argv[1], "w").write("ok")
time.sleep(120)
"""
READ_FILE = """
import sys
n = 0
with open(sys.argv[2], "rb") as f:
    while chunk := f.read(1 << 20):
        n += len(chunk)
open(sys.argv[1], "w").write(str(n))
"""
FULL_SPEED = """
blocks = []
while True:
    blocks.append(b"\\1" * (1 << 20))
"""
DAEMON_AND_FORK_LOOP = """
import os, sys, time
if os.fork() == 0:  # a daemon: double fork, new session
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        while True:
            time.sleep(1)
    os._exit(0)
while True:  # and a fork loop
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        pass
    time.sleep(0.002)
"""
DAEMON_ONLY = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        while True:
            time.sleep(1)
    os._exit(0)
time.sleep(120)
"""


# -- the group ----------------------------------------------------------------------------


def test_group_is_made_under_pmrun_with_the_backstop_and_removed(launcher: Launcher) -> None:
    b = launcher.backend(max_rss=200 * MiB)
    assert LAYOUT is not None
    assert os.path.dirname(b.group.memory_dir) == LAYOUT.memory_parent
    name = os.path.basename(b.group.memory_dir)
    assert cgroups.parse_group_name(name) == (
        f"test-0.{os.getpid()}",
        os.getpid(),
        int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]),
    )
    assert b.kernel_limit == kernel_limit_bytes(200 * MiB) == 232 * MiB
    assert b.group.limit_bytes() == 232 * MiB
    d = b.describe()
    assert d["name"] == f"cgroup-v{LAYOUT.version}" and d["backstop_margin_bytes"] == 32 * MiB
    assert "pmrun may create groups here" in b.reason
    dirs = b.group.dirs
    assert all(os.path.isdir(x) for x in dirs)
    b.close()
    no_groups_left(*dirs)


@v(1)
def test_v1_group_has_a_freezer_twin_and_no_swap(launcher: Launcher) -> None:
    b = launcher.backend()
    assert isinstance(b.group, cgroups.V1Group) and b.group.freezer_dir is not None
    assert LAYOUT is not None and LAYOUT.freezer_parent is not None
    assert os.path.dirname(b.group.freezer_dir) == LAYOUT.freezer_parent
    memsw = Path(b.group.memory_dir, "memory.memsw.limit_in_bytes")
    if memsw.exists():
        assert int(memsw.read_text()) == 232 * MiB


@v(2)
def test_v2_group_throttles_only_past_max_rss_and_kills_as_a_whole(launcher: Launcher) -> None:
    b = launcher.backend(max_rss=200 * MiB, warn_rss=100 * MiB)
    d = Path(b.group.memory_dir)
    assert (d / "memory.max").read_text().strip() == str(232 * MiB)
    # Half-way between pmrun's stop and the kernel's limit, never at --warn-rss.
    assert (d / "memory.high").read_text().strip() == str(216 * MiB)
    if (d / "memory.oom.group").exists():
        assert (d / "memory.oom.group").read_text().strip() == "1"
    if (d / "memory.swap.max").exists():
        assert (d / "memory.swap.max").read_text().strip() == "0"


HOLD_150M = """
import sys, time
block = bytearray(150 << 20)
for i in range(0, len(block), 4096):  # touched page by page: every page resident
    block[i] = 1
open(sys.argv[1], "w").write("ok")
time.sleep(120)
"""


@v(2)
def test_v2_agent_past_warn_rss_is_not_throttled(launcher: Launcher, tmp_path: Path) -> None:
    # 150 MiB between --warn-rss (50M) and --max-rss (200M): pmrun means to let it run.
    # With memory.high at --warn-rss and no swap the kernel throttled it (an allocator
    # needed 65 s for 24 MiB): memory.events counted "high" and it never got there.
    b = launcher.backend(max_rss=200 * MiB, warn_rss=50 * MiB)
    ready = ready_file(tmp_path)
    pid = launcher.python(b, HOLD_150M, str(ready))
    wait_file(ready, timeout=120)
    events = b.memory_events()
    assert events.get("high", 0) == 0 and events.get("max", 0) == 0, events
    assert 150 * MiB <= b.sample().rss_bytes < 200 * MiB
    os.kill(pid, signal.SIGKILL)
    launcher.wait(pid)


def test_agent_is_in_its_group_from_its_first_instruction(
    launcher: Launcher, tmp_path: Path
) -> None:
    b = launcher.backend()
    out = ready_file(tmp_path)
    pid = launcher.python(
        b,
        "import sys; open(sys.argv[1], 'w').write(open('/proc/self/cgroup').read())",
        str(out),
    )
    assert launcher.wait(pid) == 0
    v1, v2 = cgroups._parse.parse_proc_cgroup(out.read_text())
    if b.group.version == 1:
        assert v1["memory"] == b.group.path
        assert isinstance(b.group, cgroups.V1Group)
        if b.group.freezer_dir:
            assert v1["freezer"].endswith("/pmrun/" + b.group.name)
    else:
        assert v2 == b.group.path


@v(2)
def test_v2_child_is_born_in_its_group_by_clone3(launcher: Launcher) -> None:
    # Born there, not moved there: the child's cgroup is the group's before it runs a
    # single instruction of its own (it blocks on the pipe first).
    b = launcher.backend()
    fd = cgroups.open_for_clone(b.group.memory_dir)
    assert fd is not None
    r, w = os.pipe()
    try:
        pid = cgroups.fork_into(fd)
        if pid == 0:  # the child: wait for the parent's look, then leave
            os.read(r, 1)
            os._exit(0)
        assert pid is not None and pid > 0
        launcher.started.append(pid)
        own = Path(f"/proc/{pid}/cgroup").read_text()
        assert cgroups._parse.parse_proc_cgroup(own)[1] == b.group.path
        assert b.pids() == [pid]
        os.write(w, b"x")
        assert launcher.wait(pid) == 0
    finally:
        for x in (r, w, fd):
            os.close(x)


def test_clone3_that_cannot_be_done_makes_no_child() -> None:
    # An fd that is no cgroup v2 group (a plain directory, a v1 group, a closed fd):
    # the kernel refuses and no child exists, so the caller forks as before.
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert cgroups.fork_into(fd) is None
    finally:
        os.close(fd)
    assert cgroups.fork_into(-1) is None
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


# For --max-rss 100M (memory.high 116M, the hard limit 132M): over memory.high with the
# interpreter's own ~8 MiB, under the hard limit.
HOLD_OVER_HIGH = HOLD_150M.replace("150 << 20", "118 << 20")


@v(2)
def test_v2_memory_events_wake_the_launcher(launcher: Launcher, tmp_path: Path) -> None:
    # An agent going over memory.high: the kernel's change of memory.events makes the
    # wake-up fd readable.
    b = launcher.backend(max_rss=100 * MiB, warn_rss=50 * MiB)
    fd = b.wakeup_fd()
    assert fd is not None
    ready = ready_file(tmp_path)
    pid = launcher.python(b, HOLD_OVER_HIGH, str(ready))
    wait_until(lambda: select.select([fd], [], [], 0.5)[0], timeout=300)
    assert os.eventfd_read(fd) >= 1
    assert b.memory_events()["high"] > 0
    os.kill(pid, signal.SIGKILL)
    launcher.wait(pid)


@v(2)
def test_v2_group_psi_trigger_fires_when_the_agent_stalls(
    launcher: Launcher, tmp_path: Path
) -> None:
    # Over memory.high without swap, the kernel throttles the agent's allocations: a
    # memory stall PSI counts, so a trigger on the group's memory.pressure fires, and
    # `pmrun status` reads the same file.
    from pmrun.coordinator import psi

    b = launcher.backend(max_rss=100 * MiB, warn_rss=50 * MiB)
    fired = threading.Event()
    w = psi.Watch(fired.set, os.path.join(b.group.memory_dir, "memory.pressure"))
    try:
        assert w.active, w.error
        pid = launcher.python(b, HOLD_OVER_HIGH, str(ready_file(tmp_path)))
        wait_until(fired.is_set, timeout=300)
        assert cgroups.group_pressure(b.group.memory_dir) is not None
        os.kill(pid, signal.SIGKILL)
        launcher.wait(pid)
    finally:
        w.close()


def test_agent_that_cannot_join_its_group_never_runs(launcher: Launcher, tmp_path: Path) -> None:
    b = launcher.backend()
    for d in b.group.dirs:
        os.rmdir(d)  # gone before the agent starts (e.g. removed by hand)
    ran = tmp_path / "ran"
    with pytest.raises(PmrunError, match="cannot join cgroup .*No such file"):
        launcher.start(b, "touch", str(ran))
    launcher.reap()
    assert not ran.exists()
    b.close()  # nothing left to remove: no error
    assert b.close_error is None


# -- accounting -----------------------------------------------------------------------------


def test_sample_counts_the_agents_anonymous_memory(launcher: Launcher, tmp_path: Path) -> None:
    b = launcher.backend(max_rss=500 * MiB)
    ready = ready_file(tmp_path)
    pid = launcher.python(b, HOLD_ANON, str(ready))
    wait_file(ready)
    s = b.sample()
    assert 100 * MiB <= s.rss_bytes < 140 * MiB  # 100 MiB plus the interpreter's own
    assert s.kernel_usage_bytes is not None and s.kernel_usage_bytes >= s.rss_bytes
    (proc,) = [p for p in s.processes if p.pid == pid]
    assert proc.rss_bytes >= 100 * MiB
    assert b.pids() == [pid]
    b.kill_all(launcher.reap)
    assert os.WTERMSIG(launcher.wait(pid)) == signal.SIGKILL


def test_page_cache_is_not_counted_and_is_reclaimed_at_the_limit(
    launcher: Launcher, tmp_path: Path
) -> None:
    # A 1 GiB file read through the page cache by an agent limited to 200 MiB: the kernel
    # charges the cache to the group and reclaims it at the group's limit; pmrun's figure
    # stays small, so pmrun would not stop the agent, and the kernel does not either.
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(GiB)  # sparse: read as zeros, cached like any file
    b = launcher.backend(max_rss=200 * MiB)
    done = ready_file(tmp_path)
    pid = launcher.python(b, READ_FILE, str(done), str(big))
    peak_counted = 0
    while not done.exists():
        s = b.sample()
        peak_counted = max(peak_counted, s.rss_bytes)
        launcher.reap()
        if pid in launcher.statuses:
            break
        time.sleep(0.005)
    assert launcher.wait(pid) == 0
    assert int(done.read_text()) == GiB
    s = b.sample()
    assert peak_counted < 60 * MiB and s.rss_bytes < 60 * MiB
    assert s.kernel_usage_bytes is not None and s.kernel_usage_bytes > 100 * MiB  # the cache
    peak = b.kernel_peak_bytes()
    assert peak is not None and 150 * MiB < peak <= 232 * MiB
    assert b.kernel_oom_kills() == 0


def test_kernel_backstop_oom_kills_a_full_speed_allocator(launcher: Launcher) -> None:
    # Nobody samples here: the kernel's limit alone stops the allocator, and it cannot
    # be overshot. (On v2, memory.high half-way below it would first slow the allocator
    # down for pmrun's SIGTERM to land; with nobody to send it, that only takes longer.)
    b = launcher.backend(max_rss=100 * MiB, memory_high="off")
    pid = launcher.python(b, FULL_SPEED)
    status = launcher.wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert b.kernel_oom_kills() >= 1
    peak = b.kernel_peak_bytes()
    assert b.kernel_limit == 132 * MiB
    assert peak is not None and 100 * MiB < peak <= b.kernel_limit
    kills = b.oom_kills()
    assert len(kills) == b.kernel_oom_kills()
    if os.geteuid() == 0 and os.access("/dev/kmsg", os.R_OK):
        assert kills[0].pid == pid and kills[0].comm and kills[0].comm.startswith("python")
        assert kills[0].anon_rss_bytes is None or kills[0].anon_rss_bytes > 90 * MiB


# -- stopping the tree -------------------------------------------------------------------------


def test_kill_all_takes_a_setsid_daemon_and_a_fork_loop(launcher: Launcher, tmp_path: Path) -> None:
    b = launcher.backend()
    daemon_file = tmp_path / "daemon"
    pid = launcher.python(b, DAEMON_AND_FORK_LOOP, str(daemon_file))
    daemon = int(wait_file(daemon_file))
    launcher.extra_pids.append(daemon)
    wait_until(lambda: len(b.pids()) > 20)  # the fork loop is running
    assert daemon in b.pids()
    assert os.getsid(daemon) != os.getsid(pid)  # out of the agent's session: no pgrp kill finds it
    b.kill_all(launcher.reap)
    assert b.pids() == []
    launcher.reap()
    assert not pid_alive(daemon) and not pid_alive(pid)
    assert os.WTERMSIG(launcher.statuses[pid]) == signal.SIGKILL


# -- orphans --------------------------------------------------------------------------------------

ORPHAN_LAUNCHER = """
import os, sys, time
from pmrun import _spawn
from pmrun.backends.cgroup import create_cgroup_backend
b = create_cgroup_backend(agent_id="orphan." + str(os.getpid()), max_rss=200 << 20, warn_rss=0)
pid = _spawn.spawn([sys.executable, "-c", sys.argv[1], sys.argv[2]], dict(os.environ),
                   max_as=None, pdeathsig=0, prepare=b.prepare_child)
print(" ".join(b.group.dirs), pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("cleaner", ["next pmrun", "coordinator sweep", "pmrun gc"])
def test_group_of_a_sigkilled_launcher_is_cleaned(
    launcher: Launcher, tmp_path: Path, cleaner: str
) -> None:
    # Beside it, a group pmrun did not make, and one whose launcher (us) is alive.
    assert LAYOUT is not None
    live = launcher.backend()
    foreign = os.path.join(LAYOUT.memory_parent, f"not-pmrun-{os.getpid()}")
    os.mkdir(foreign)
    try:
        orphan_is_cleaned(launcher, tmp_path, cleaner, live, foreign)
    finally:
        os.rmdir(foreign)


def orphan_is_cleaned(
    launcher: Launcher, tmp_path: Path, cleaner: str, live: CgroupBackend, foreign: str
) -> None:
    daemon_file = tmp_path / "daemon"
    helper = subprocess.Popen(
        [PYTHON, "-c", ORPHAN_LAUNCHER, DAEMON_ONLY, str(daemon_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert helper.stdout is not None
        *dirs, agent_s = helper.stdout.readline().split()
        agent = int(agent_s)
        daemon = int(wait_file(daemon_file))
    finally:
        helper.kill()  # SIGKILL: the launcher has no chance to clean up
        helper.wait()
    launcher.extra_pids += [agent, daemon]
    assert pid_alive(agent) and pid_alive(daemon)
    assert all(os.path.isdir(d) for d in dirs)
    if cleaner == "next pmrun":
        nxt = launcher.backend()
        assert dirs[0] in nxt.orphans_cleaned
        assert nxt.describe()["orphans_cleaned"] == nxt.orphans_cleaned
    elif cleaner == "coordinator sweep":
        assert dirs[0] in cgroups.cleanup_orphans()
    else:
        r = subprocess.run([PMRUN, "gc"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"removed {dirs[0]}" in r.stdout
    launcher.reap()
    assert not pid_alive(agent) and not pid_alive(daemon)
    no_groups_left(*dirs)
    assert os.path.isdir(foreign) and all(os.path.isdir(d) for d in live.group.dirs)


def test_gc_dry_run_and_nothing_to_do(launcher: Launcher) -> None:
    r = subprocess.run([PMRUN, "gc", "--dry-run"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "no stale pmrun groups" in r.stdout or "stale:" in r.stdout


# -- permission and fallback ----------------------------------------------------------------------

AS_NOBODY = """
import json
from pmrun.backends import select
from pmrun.backends.cgroup import create_cgroup_backend
from pmrun.errors import CgroupError, PmrunError
out = {}
try:
    create_cgroup_backend(agent_id="n.1", max_rss=200 << 20, warn_rss=100 << 20)
except CgroupError as e:
    out["error"] = str(e)
b = select("auto", agent_id="n.1", max_rss=200 << 20, warn_rss=100 << 20)
out["auto"] = [b.name, b.reason]
try:
    select("cgroup", agent_id="n.1", max_rss=200 << 20, warn_rss=100 << 20)
except CgroupError as e:
    out["cgroup"] = str(e)
print(json.dumps(out))
"""


def nobody_python() -> list[str]:
    """An interpreter ``nobody`` may run, with pmrun importable; skip if there is none."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as nobody")
    site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    path = ":".join([SRC, *site])
    for exe in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if not exe:
            continue
        probe = subprocess.run(
            [
                "env",
                f"PYTHONPATH={path}",
                exe,
                "-c",
                "import sys, pmrun, prctl; print(sys.version_info >= (3, 11))",
            ],
            preexec_fn=become_nobody,
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            return ["env", f"PYTHONPATH={path}", exe]
    pytest.skip("no Python >= 3.11 that nobody may run, with pmrun and prctl importable")


def test_nobody_cannot_create_a_group_and_auto_falls_back() -> None:
    r = subprocess.run(
        [*nobody_python(), "-c", AS_NOBODY],
        preexec_fn=become_nobody,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert LAYOUT is not None
    assert out["error"].startswith(f"cannot create a cgroup under {LAYOUT.memory_parent}")
    assert "Permission denied" in out["error"]
    assert out["auto"][0] == "sampling" and out["auto"][1] == "no cgroup: " + out["error"]
    assert out["cgroup"] == out["error"]


@v(2)
def test_v2_a_user_in_a_delegated_subtree_gets_cgroups(tmp_path: Path) -> None:
    # What systemd does for `systemd-run --user --scope -p Delegate=yes`: a group whose
    # directory, cgroup.procs, cgroup.threads and cgroup.subtree_control belong to the
    # user, with pmrun started inside it. As that user, pmrun moves itself into a
    # pmrun-launcher leaf and makes the agent's group beside it, under pmrun/.
    cmd = nobody_python()
    assert LAYOUT is not None
    deleg = Path(LAYOUT.mount_point) / f"pmrun-test-user-{os.getpid()}"
    deleg.mkdir()
    out = Path("/tmp") / f"pmrun-deleg-{os.getpid()}"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    try:
        for f in (deleg, *(deleg / n for n in DELEGATED_FILES)):
            os.chown(f, NOBODY, NOBODY)

        def enter_and_drop() -> None:  # as root: into the subtree, then become nobody
            Path(deleg, "cgroup.procs").write_text("0")
            become_nobody()

        report = out / "report.json"
        show = "print(open('/proc/self/cgroup').read().strip())"
        r = subprocess.run(
            [*cmd, "-m", "pmrun", "--no-coordinator", "--backend", "cgroup", "--report",
             str(report), "--", cmd[-1], "-c", show],
            preexec_fn=enter_and_drop, capture_output=True, text=True, timeout=300,
            env={**os.environ, "XDG_RUNTIME_DIR": str(out), "HOME": str(out)},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        backend = json.loads(report.read_text())["backend"]
        assert backend["name"] == "cgroup-v2"
        assert backend["group"].startswith(str(deleg / "pmrun") + "/")
        assert r.stdout.strip().startswith(f"0::/{deleg.name}/pmrun/")
    finally:
        for leftover in sorted(deleg.glob("**/"), key=lambda p: -len(p.parts)):
            for pid in read_pids_of(leftover):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda d=leftover: not read_pids_of(d), timeout=30)
            leftover.rmdir()
        shutil.rmtree(out)


DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


def read_pids_of(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


# -- container awareness -------------------------------------------------------------------------

SHOW_MEMORY = """
import json
from pmrun import cgroups
m = cgroups.container_memory()
print(json.dumps({
    "limit": cgroups.container_memory_limit(),
    "total": cgroups.effective_total_memory(),
    "source": m.source if m else None,
}))
"""


def test_a_process_in_a_1g_group_sees_1g_of_system_memory(tmp_path: Path) -> None:
    # What the coordinator computes its system threshold against, from inside a
    # memory-limited cgroup (a container): 1 GiB, not the host's MemTotal.
    assert LAYOUT is not None
    if LAYOUT.version == 2:
        # A child of our group has the memory controller only if our group hands it down
        # (the v2 lane's guest runs in the root, with memory in its subtree_control).
        sc = Path(LAYOUT.memory_dir, "cgroup.subtree_control").read_text().split()
        if "memory" not in sc:
            pytest.skip("needs the memory controller enabled below our v2 group")
    box = os.path.join(LAYOUT.memory_dir, f"pmrun-test-box-{os.getpid()}")
    os.mkdir(box)
    try:
        limit_file = "memory.limit_in_bytes" if LAYOUT.version == 1 else "memory.max"
        Path(box, limit_file).write_text(str(GiB))

        def join() -> None:
            fd = os.open(os.path.join(box, "cgroup.procs"), os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

        r = subprocess.run(
            [PYTHON, "-c", SHOW_MEMORY], preexec_fn=join, capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["limit"] == GiB and out["total"] == GiB
        assert out["source"] == f"cgroup v{LAYOUT.version} {box}"
    finally:
        wait_until(lambda: not cgroups._group.read_pids(box))
        os.rmdir(box)


# -- cgroup v2 mechanics on the real kernel, without the memory controller --------------------


def unified_dir() -> tuple[str, bool]:
    """Our group in a cgroup2 mount here (the unified hierarchy of a hybrid system), and
    whether it is the hierarchy's root."""
    mounts = cgroups._parse.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    _, v2 = cgroups._parse.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    for m in mounts:
        if m.version == 2 and v2 is not None:
            d = cgroups._parse.dir_in_mount(m, v2)
            if d and os.access(d, os.W_OK):
                return d, m.root == "/" and v2 == "/"
    pytest.skip("no writable cgroup2 mount here")


@v(1)
def test_v2_join_and_cgroup_kill_on_the_unified_hierarchy(
    launcher: Launcher, tmp_path: Path
) -> None:
    # cgroup.procs, cgroup.kill and rmdir on a real cgroup2, without memory files: the part
    # of the v2 backend a fake cgroupfs cannot show.
    d = os.path.join(unified_dir()[0], f"pmrun-test-v2-{os.getpid()}")
    os.mkdir(d)
    group = cgroups.V2Group(d, "/x")
    if not os.path.exists(os.path.join(d, "cgroup.kill")):
        os.rmdir(d)
        pytest.skip("cgroup.kill needs Linux 5.14")

    class Joiner:
        def prepare_child(self) -> None:
            group.join_self()

    daemon_file = tmp_path / "daemon"
    pid = _spawn.spawn(
        [PYTHON, "-c", DAEMON_AND_FORK_LOOP, str(daemon_file)],
        dict(os.environ),
        max_as=None,
        prepare=Joiner().prepare_child,
    )
    launcher.started.append(pid)
    try:
        daemon = int(wait_file(daemon_file))
        launcher.extra_pids.append(daemon)
        wait_until(lambda: len(group.pids()) > 10)
        assert pid in group.pids() and daemon in group.pids()
        killed = group.kill(launcher.reap)
        assert killed >= 10 and group.pids() == []
        launcher.reap()
        assert not pid_alive(daemon)
    finally:
        group.kill(launcher.reap)
        group.remove()
    no_groups_left(d)


@v(1)
def test_v2_delegated_group_with_processes_is_evacuated_for_real(launcher: Launcher) -> None:
    # The no-internal-process rule on a real cgroup2, with hugetlb standing in for memory
    # (the only controller this machine's cgroup2 has): a group holding a process cannot
    # give a controller to children until the process moves to a leaf.
    top, is_root = unified_dir()
    if "hugetlb" not in Path(top, "cgroup.controllers").read_text().split():
        pytest.skip("no hugetlb controller on the cgroup2 mount to stand in for memory")
    if not is_root and Path(top, "cgroup.procs").read_text().split():
        pytest.skip("our own cgroup2 group holds processes: cannot give hugetlb to a child")
    enabled_before = "hugetlb" in Path(top, "cgroup.subtree_control").read_text().split()
    base = os.path.join(top, f"pmrun-test-delegated-{os.getpid()}")
    created: list[str] = []
    if not enabled_before:
        Path(top, "cgroup.subtree_control").write_text("+hugetlb")
    try:
        os.mkdir(base)
        created.append(base)
        assert "hugetlb" in Path(base, "cgroup.controllers").read_text().split()
        group = cgroups.V2Group(base, "/x")
        pid = _spawn.spawn(["sleep", "60"], dict(os.environ), max_as=None, prepare=group.join_self)
        launcher.started.append(pid)
        parent = os.path.join(base, "pmrun")
        with pytest.raises(OSError):  # what pmrun meets: EBUSY
            Path(base, "cgroup.subtree_control").write_text("+hugetlb")
        cgroups._group.enable_controller(base, parent, "hugetlb")
        leaf = os.path.join(base, cgroups.LAUNCHER_LEAF)
        created += [leaf, parent]
        assert cgroups._group.read_pids(leaf) == [pid] and cgroups._group.read_pids(base) == []
        agent = os.path.join(parent, "a.1@1.2")
        os.mkdir(agent)
        created.append(agent)
        assert "hugetlb" in Path(agent, "cgroup.controllers").read_text().split()
        cgroups.V2Group(leaf, "/y").kill(launcher.reap)
    finally:
        for d in reversed(created):
            if os.path.isdir(d):
                cgroups.V2Group(d, "/z").kill(launcher.reap)
                os.rmdir(d)
        if not enabled_before:
            Path(top, "cgroup.subtree_control").write_text("-hugetlb")
    no_groups_left(*created)


# -- through `pmrun -- cmd` -------------------------------------------------------------------------


def run_pmrun(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = Path(os.environ["XDG_RUNTIME_DIR"]) / f"report-{time.monotonic_ns()}.json"
    r = subprocess.run(
        [PMRUN, "--no-coordinator", "--report", str(report), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return r, data


def test_pmrun_stops_a_full_speed_allocator_under_the_backstop() -> None:
    r, rep = run_pmrun("--backend", "cgroup", "--max-rss", "200M", "--", PYTHON, "-c", FULL_SPEED)
    assert r.returncode == 137, r.stderr
    assert rep["backend"]["name"].startswith("cgroup-v")
    assert rep["reason"] in ("max-rss", "kernel-oom")
    limit = rep["backend"]["kernel_limit_bytes"]
    assert limit == 232 * MiB
    assert rep["kernel_peak_bytes"] is not None and rep["kernel_peak_bytes"] <= limit
    assert LAYOUT is not None
    no_groups_left(rep["backend"]["group"])


def test_pmrun_does_not_stop_an_agent_reading_a_big_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(GiB)
    done = tmp_path / "done"
    r, rep = run_pmrun(
        "--backend",
        "cgroup",
        "--max-rss",
        "200M",
        "--",
        PYTHON,
        "-c",
        READ_FILE,
        str(done),
        str(big),
    )
    assert r.returncode == 0, r.stderr
    assert int(done.read_text()) == GiB
    assert rep["reason"] == "exit" and rep["peak_rss_bytes"] < 60 * MiB
    assert rep["kernel_peak_bytes"] > 150 * MiB  # the cache was there, and was reclaimed


def test_pmrun_leaves_no_daemon_behind(tmp_path: Path) -> None:
    daemon_file = tmp_path / "daemon"
    # the command exits as soon as its daemon is up
    code = DAEMON_ONLY.replace(
        "time.sleep(120)", "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.001)"
    )
    r, rep = run_pmrun("--backend", "cgroup", "--", PYTHON, "-c", code, str(daemon_file))
    assert r.returncode == 0, r.stderr
    daemon = int(daemon_file.read_text())
    assert not pid_alive(daemon)
    no_groups_left(rep["backend"]["group"])


def test_pmrun_sigkilled_with_its_keeper_leaves_an_orphan_the_next_pmrun_cleans(
    tmp_path: Path,
) -> None:
    daemon_file = tmp_path / "daemon"
    prctl.set_child_subreaper(1)  # the daemon, orphaned, comes to us to be reaped
    try:
        p = subprocess.Popen(
            [
                PMRUN,
                "--no-coordinator",
                "--backend",
                "cgroup",
                "--",
                PYTHON,
                "-c",
                DAEMON_ONLY,
                str(daemon_file),
            ],
            stderr=subprocess.DEVNULL,
        )
        daemon = int(wait_file(daemon_file))
        keeper = [int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
        # Both die before either can react: the launcher, once its keeper is gone, would
        # itself stop what is left in the group, and the keeper would clean up after its
        # launcher. Stop the launcher first so the two SIGKILLs land as one event.
        os.kill(p.pid, signal.SIGSTOP)
        for pid in keeper:
            os.kill(pid, signal.SIGKILL)
        p.kill()
        p.wait()
        assert pid_alive(daemon)  # outside pmrun's tree now; only its group still holds it
        r, rep = run_pmrun("--backend", "cgroup", "--", "true")
        assert r.returncode == 0, r.stderr
        assert any(f"@{p.pid}." in d for d in rep["backend"].get("orphans_cleaned", []))

        def reaped() -> bool:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pass
            return not pid_alive(daemon)

        wait_until(reaped)
    finally:
        prctl.set_child_subreaper(0)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def test_pmrun_sampling_backend_says_so() -> None:
    r, rep = run_pmrun("--backend", "sampling", "--", "true")
    assert r.returncode == 0, r.stderr
    assert rep["backend"] == {
        "name": "sampling",
        "reason": "--backend sampling",
        "counted": "anon+shmem+swap",
    }


def test_pmrun_auto_as_nobody_falls_back_to_sampling_and_says_why(tmp_path: Path) -> None:
    cmd = nobody_python()
    out = Path("/tmp") / f"pmrun-nobody-{os.getpid()}"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    try:
        report = out / "report.json"
        r = subprocess.run(
            [*cmd, "-m", "pmrun", "--no-coordinator", "--report", str(report), "--", "true"],
            preexec_fn=become_nobody,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "XDG_RUNTIME_DIR": str(out), "HOME": str(out)},
        )
        assert r.returncode == 0, r.stderr
        backend = json.loads(report.read_text())["backend"]
        assert backend["name"] == "sampling"
        assert backend["reason"].startswith("no cgroup: cannot create a cgroup under")
        assert "Permission denied" in backend["reason"]
    finally:
        shutil.rmtree(out)
