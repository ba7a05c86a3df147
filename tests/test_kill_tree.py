"""Killing by identity: a pidfd pins the process first, its identity is checked after.

Pids are recycled for real here: as root, writing ``/proc/sys/kernel/ns_last_pid`` makes
the next fork take a pid of our choosing, so "the pid now belongs to someone else" is a
real process, not a fake /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator_fixtures import Procs
from helpers import wait_until
from pmrun import _keeper, _procfs, _signals, cgroups
from pmrun.backends.sampling import SamplingBackend
from pmrun.coordinator.orphans import kill_orphans

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
FREEZER = Path("/sys/fs/cgroup/freezer")


def sleeper(procs: Procs) -> subprocess.Popen[bytes]:
    return procs.popen(["sleep", "300"], stdin=subprocess.DEVNULL)


def at_pid(procs: Procs, pid: int) -> subprocess.Popen[bytes] | None:
    """A sleeper that takes ``pid`` (free now), or None if another fork keeps winning it."""
    for _ in range(50):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        p = sleeper(procs)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


def needs_pid_control() -> None:
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("choosing the next pid needs root (ns_last_pid)")


def running(pid: int) -> bool:
    return _procfs.same_process(pid, None)


def ticks_now() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def recycle(procs: Procs, victim: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """End ``victim`` and give its pid to a new process with a later start time."""
    start = _procfs.start_time(victim.pid)
    wait_until(lambda: ticks_now() > start + 1, 5, "a clock tick later")
    victim.kill()
    victim.wait()
    newcomer = at_pid(procs, victim.pid)
    if newcomer is None:
        pytest.skip("another process kept taking the freed pid")
    wait_until(lambda: _procfs.start_time(newcomer.pid) > start, 5, "the newcomer started")
    return newcomer


# -- (pid, start time) pairs ----------------------------------------------------------------


def test_a_pid_recycled_after_the_identity_check_is_not_killed(
    procs: Procs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old window: start time checked by pid, then the kill sent by pid.

    The orphan's uid is looked at between the two; here the orphan dies right then and a
    new process takes its pid. The pidfd opened before the check still names the dead
    orphan, so the kill fails instead of reaching the newcomer.
    """
    needs_pid_control()
    victim = sleeper(procs)
    start = wait_until(lambda: _procfs.start_time(victim.pid), 5, "started")
    real_uid = _procfs.uid
    newcomers: list[subprocess.Popen[bytes]] = []

    def uid_then_recycle(pid: int, proc: str = _procfs.PROC) -> int:
        owner = real_uid(pid, proc)
        if pid == victim.pid and not newcomers:
            newcomers.append(recycle(procs, victim))
        return owner

    monkeypatch.setattr(_procfs, "uid", uid_then_recycle)
    killed = kill_orphans([[victim.pid, start]], os.geteuid(), None)
    [newcomer] = newcomers
    assert newcomer.pid == victim.pid
    assert killed == []
    assert newcomer.poll() is None and running(newcomer.pid)


def test_a_recycled_pid_is_not_killed(procs: Procs) -> None:
    needs_pid_control()
    victim = sleeper(procs)
    start = wait_until(lambda: _procfs.start_time(victim.pid), 5, "started")
    newcomer = recycle(procs, victim)
    assert _signals.kill_identified([(victim.pid, start)]) == []
    assert newcomer.poll() is None and running(newcomer.pid)
    # Its own identity, it is killed.
    assert _signals.kill_identified([(newcomer.pid, _procfs.start_time(newcomer.pid))]) == [
        newcomer.pid
    ]
    assert newcomer.wait(10) == -signal.SIGKILL


def test_gone_zombie_and_refused_pids_are_skipped_the_rest_killed(procs: Procs) -> None:
    gone = procs.popen(["true"])
    gone.wait()
    zombie = procs.popen(["true"])
    wait_until(lambda: _procfs.stat(zombie.pid).state == "Z", 5, "a zombie")
    live = sleeper(procs)
    refused = sleeper(procs)
    pairs = [
        (gone.pid, 1),
        (zombie.pid, _procfs.start_time(zombie.pid)),
        (refused.pid, _procfs.start_time(refused.pid)),
        (live.pid, _procfs.start_time(live.pid)),
    ]
    killed = _signals.kill_identified(pairs, accept=lambda st: st.pid != refused.pid)
    assert killed == [live.pid]
    assert live.wait(10) == -signal.SIGKILL
    assert refused.poll() is None


# A main thread that called pthread_exit: the leader shows Z while another thread runs.
HEADLESS = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(300,)).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)


def headless(procs: Procs) -> subprocess.Popen[bytes]:
    p = procs.popen([sys.executable, "-c", HEADLESS], stdin=subprocess.DEVNULL)
    wait_until(lambda: _procfs.stat(p.pid).state == "Z", 10, "the main thread gone")
    return p


def tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []


def test_a_process_whose_main_thread_exited_is_still_killed(procs: Procs) -> None:
    p = headless(procs)
    st = _procfs.stat(p.pid)
    assert st.threads > 1 and st.running and not st.zombie
    assert _procfs.same_process(p.pid, st.start_time)
    assert _signals.kill_identified([(p.pid, st.start_time)]) == [p.pid]
    assert p.wait(10) == -signal.SIGKILL


def test_kill_tree_kills_a_child_whose_main_thread_exited(procs: Procs) -> None:
    root = procs.popen(["sh", "-c", f"{sys.executable} -c '{HEADLESS}' & wait; exec sleep 300"])
    kid = wait_until(lambda: _procfs.children(root.pid), 10, "the child")[0]
    wait_until(lambda: _procfs.stat(kid).state == "Z", 10, "the main thread gone")
    assert _keeper.kill_below(root.pid, reap=lambda: None) == []
    wait_until(lambda: len(tasks(kid)) <= 1, 10, "the child's last thread killed")


def test_kill_orphans_keeps_its_rules(procs: Procs) -> None:
    old = sleeper(procs)
    old_start = _procfs.start_time(old.pid)
    wait_until(lambda: ticks_now() > old_start + 1, 5, "a clock tick later")
    young = sleeper(procs)
    young_start = wait_until(lambda: _procfs.start_time(young.pid), 5, "started")
    launcher_start = old_start + 1
    me = os.getpid()
    pairs = [
        [0, 0],
        [1, _procfs.start_time(1)],
        [me, _procfs.start_time(me)],
        [old.pid, old_start],  # older than its launcher
        [young.pid, young_start],
    ]
    assert kill_orphans(pairs, os.geteuid() + 1, launcher_start) == []  # another uid
    assert kill_orphans(pairs, os.geteuid(), launcher_start) == [young.pid]
    assert young.wait(10) == -signal.SIGKILL
    assert old.poll() is None


# -- trees ----------------------------------------------------------------------------------


def sleeping(pid: int) -> bool:
    try:
        return _procfs.comm(pid) == "sleep"
    except _procfs.ProcessGone:
        return False


def parent_with_children(procs: Procs, n: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A shell with ``n`` sleeping children (its own pid is the tree's root)."""
    root = procs.popen(["sh", "-c", "sleep 300 & " * n + "wait; exec sleep 300"])

    def kids() -> list[int]:
        k = _procfs.children(root.pid)
        return k if len(k) == n and all(sleeping(p) for p in k) else []

    return root, wait_until(kids, 10, "children")


def test_kill_tree_kills_every_process_and_copes_with_one_that_exits_meanwhile(
    procs: Procs,
) -> None:
    root, kids = parent_with_children(procs, 4)
    early = kids[0]
    calls = 0

    def listing() -> list[int]:
        nonlocal calls
        calls += 1
        pids = _procfs.descendants(_procfs.children(root.pid))
        if calls == 1:  # listed, then it exits before it is signalled
            os.kill(early, signal.SIGKILL)
            wait_until(lambda: not running(early), 5, "the early one gone")
        return pids

    left = _signals.kill_tree(listing, root.pid, lambda: None)  # the shell reaps
    assert left == []
    wait_until(lambda: not _procfs.any_alive(kids), 10, "the tree gone")
    assert root.poll() is None  # the root itself is not part of the tree


def test_kill_tree_does_not_signal_a_pid_recycled_outside_the_tree(procs: Procs) -> None:
    needs_pid_control()
    root, kids = parent_with_children(procs, 1)
    # The child is reaped and its pid taken by a process outside the tree (the test's own
    # child); a stale listing still names it.
    [kid] = kids
    os.kill(kid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{kid}"), 10, "reaped by the shell")
    newcomer = at_pid(procs, kid)
    if newcomer is None:
        pytest.skip("another process kept taking the freed pid")
    stale = [kid]
    left = _signals.kill_tree(lambda: list(stale), root.pid, lambda: stale.clear(), timeout_s=1)
    assert left == []
    assert newcomer.poll() is None and running(newcomer.pid)
    assert _procfs.stat(newcomer.pid).state != "T"  # not even stopped


@pytest.fixture
def frozen_group() -> Iterator[Path]:
    """A v1 freezer group of this test's own: a task in it cannot act on SIGKILL."""
    if not (FREEZER / "cgroup.procs").exists() or not os.access(FREEZER, os.W_OK):
        pytest.skip("needs a writable cgroup v1 freezer")
    group = FREEZER / f"pmrun-test-kill-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        (group / "freezer.state").write_text("THAWED")
        for pid in (group / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        wait_until(lambda: not (group / "cgroup.procs").read_text().split(), 30, "group empty")
        group.rmdir()


def freeze(group: Path, pid: int) -> None:
    (group / "cgroup.procs").write_text(str(pid))
    (group / "freezer.state").write_text("FROZEN")
    wait_until(lambda: (group / "freezer.state").read_text().strip() == "FROZEN", 10, "frozen")


@pytest.mark.parametrize("how", ["sampling.kill_all", "keeper.kill_below"])
def test_a_kill_gives_up_on_a_process_that_cannot_die(
    procs: Procs, frozen_group: Path, how: str
) -> None:
    """A frozen task keeps its SIGKILL pending: the kill returns after its timeout."""
    root, [stuck] = parent_with_children(procs, 1)
    freeze(frozen_group, stuck)
    result: list[object] = []

    def kill() -> None:
        if how == "sampling.kill_all":
            b = SamplingBackend("test")
            b.keeper_pid = root.pid
            try:
                result.append(b.kill_all(lambda: None, timeout_s=0.5))
            finally:
                b.close()
        else:
            result.append(_keeper.kill_below(root.pid, reap=lambda: None, timeout_s=0.5))

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    t.join(60)
    stuck_still = t.is_alive()
    (frozen_group / "freezer.state").write_text("THAWED")  # the pending SIGKILL now acts
    t.join(60)
    assert not stuck_still, "the kill waited for ever on a process SIGKILL cannot end yet"
    assert result in ([None], [[]])
    wait_until(lambda: not running(stuck), 10, "killed once thawed")


def test_a_zombie_or_exiting_launcher_s_group_is_an_orphan(procs: Procs, tmp_path: Path) -> None:
    zombie = procs.popen(["true"])
    wait_until(lambda: _procfs.stat(zombie.pid).state == "Z", 5, "a zombie")
    assert not cgroups.launcher_alive(zombie.pid, _procfs.start_time(zombie.pid))
    live = sleeper(procs)
    start = wait_until(lambda: _procfs.start_time(live.pid), 5, "started")
    assert cgroups.launcher_alive(live.pid, start)
    assert not cgroups.launcher_alive(live.pid, start + 1)
    # A launcher past exit(2), its flags saying so, is dead too (a fake /proc line).
    d = tmp_path / str(live.pid)
    d.mkdir()
    line = (Path("/proc") / str(live.pid) / "stat").read_text().split(") ", 1)
    rest = line[1].split()
    rest[6] = str(int(rest[6]) | _procfs.PF_EXITING)
    (d / "stat").write_text(line[0] + ") " + " ".join(rest) + "\n")
    assert not cgroups.launcher_alive(live.pid, start, str(tmp_path))


def test_kill_tree_returns_what_is_left_stuck(procs: Procs, frozen_group: Path) -> None:
    root, [stuck] = parent_with_children(procs, 1)
    freeze(frozen_group, stuck)
    now = [0.0]

    def clock() -> float:  # every round a second later: the timeout is over at once
        now[0] += 1
        return now[0]

    listing = lambda: _procfs.descendants(_procfs.children(root.pid))  # noqa: E731
    assert _signals.kill_tree(listing, root.pid, lambda: None, timeout_s=2, clock=clock) == [stuck]


def test_a_real_tree_with_a_fork_loop_is_killed(procs: Procs) -> None:
    # Forks on while it is being killed, slowly enough to stay a few hundred processes.
    # Each child sleeps, then exits: never forks on itself, so the tree stays bounded.
    loop = (
        "import os, time\nfor _ in range(500):\n    if os.fork() == 0:\n"
        "        time.sleep(300)\n        os._exit(0)\n    time.sleep(0.005)\n"
    )
    root = procs.popen(["sh", "-c", f"{sys.executable} -c '{loop}' & wait"])
    listing = lambda: _procfs.descendants(_procfs.children(root.pid))  # noqa: E731
    wait_until(lambda: len(listing()) > 20, 20, "the loop forked")
    assert _signals.kill_tree(listing, root.pid, lambda: None) == []
    wait_until(lambda: not _procfs.any_alive(listing()), 20, "the tree gone")
