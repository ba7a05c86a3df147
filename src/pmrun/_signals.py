"""Signal processes through pidfds, so a recycled pid is never signalled."""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import os
import time

from . import _procfs

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

_HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
# Pids that refused a signal (EPERM): a process of the tree that changed its uid (a
# setuid program that set its real uid too, sudo) cannot be stopped by a non-root pmrun.
REFUSED: set[int] = set()
# SIGKILLed processes still alive after this are stuck in the kernel (D state, a frozen
# cgroup): a kill gives up on them rather than wait for ever; their SIGKILL stays pending.
KILL_TIMEOUT_S = 10.0


def send(pid: int, sig: int, *, parents: set[int] | None = None) -> bool:
    """Send ``sig`` to ``pid``; False if it is gone (or no longer a child of ``parents``).

    With ``parents``, the pid is signalled only if, once pinned by a pidfd, its parent
    is still one of them: a pid read from a children file and recycled before we
    pinned it belongs to someone else's process, whose parent is not in our tree.
    """
    if parents is None:
        return send_if(pid, sig, None)
    return send_if(pid, sig, lambda st: st.ppid in parents)


def send_if(
    pid: int,
    sig: int,
    accept: Callable[[_procfs.ProcStat], bool] | None,
    proc: str = _procfs.PROC,
) -> bool:
    """Pin ``pid`` with a pidfd, then send ``sig`` only if ``accept`` takes what it is now.

    ``accept`` sees the process's stat read after pinning: if the pid was recycled before
    the pidfd was opened, the stat is the new process's and ``accept`` can refuse it; if
    it is recycled after, the pidfd still names the old one and the signal fails (ESRCH)
    instead of reaching the new one. False when gone, refused, or not ours to signal.
    """
    try:
        if not _HAVE_PIDFD:  # pragma: no cover - kernels before 5.3
            raise NotImplementedError
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, NotImplementedError):  # pragma: no cover - ENOSYS on old kernels
        try:
            if accept is not None and not accept(_procfs.stat(pid, proc)):
                return False
            os.kill(pid, sig)
            return True
        except (ProcessLookupError, _procfs.ProcessGone):
            return False
        except PermissionError:
            REFUSED.add(pid)
            return False
    try:
        if accept is not None:
            try:
                if not accept(_procfs.stat(pid, proc)):
                    return False
            except (_procfs.ProcessGone, OSError):
                return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        REFUSED.add(pid)
        return False
    finally:
        os.close(fd)


def kill_identified(
    targets: Iterable[tuple[int, int]] | Iterable[list[int]],
    *,
    accept: Callable[[_procfs.ProcStat], bool] | None = None,
    proc: str = _procfs.PROC,
) -> list[int]:
    """SIGKILL each ``(pid, start time)`` that, pinned by a pidfd, still is that process.

    A pid whose start time differs (recycled), that is a zombie or exiting, or that
    ``accept`` refuses is left alone. Returns the pids signalled.
    """
    killed: list[int] = []
    for pid, start in targets:

        def same(st: _procfs.ProcStat, start: int = start) -> bool:
            return st.start_time == start and st.running and (accept is None or accept(st))

        if send_if(pid, signal.SIGKILL, same, proc):
            killed.append(pid)
    return killed


def kill_tree(
    list_tree: Callable[[], list[int]],
    root: int,
    reap: Callable[[], object],
    *,
    timeout_s: float = KILL_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> list[int]:
    """SIGSTOP then SIGKILL the processes ``list_tree()`` names below ``root`` until none is alive.

    Freezing first means nothing forks between our walk and our kill: the tree is walked
    (parents before children) again until no new process appears, then the frozen set is
    killed. A process is signalled only if, pinned by a pidfd, its parent is ``root`` or
    in the tree (see :func:`send`). ``reap`` collects the zombies between rounds. Returns the pids still
    alive: those that refused the signal (:data:`REFUSED`), and after ``timeout_s`` those
    stuck in the kernel (their SIGKILL stays pending).
    """
    deadline = clock() + timeout_s
    delay = 0.0
    while True:
        if delay:
            time.sleep(delay)  # let the kernel finish exits before the next walk
        delay = min(max(delay * 2, 0.0002), 0.01)
        stopped: set[int] = set()
        for _ in range(100):
            pids = list_tree()
            new = [p for p in pids if p not in stopped]
            if not new:
                break
            parents = {root, *pids}
            for p in new:
                send(p, signal.SIGSTOP, parents=parents)
                stopped.add(p)
        pids = list_tree()
        killable = [p for p in pids if p not in REFUSED]
        if not _procfs.any_alive(killable) or clock() > deadline:
            return [p for p in pids if _procfs.any_alive([p])]
        parents = {root, *pids}
        # Children before their parents: a parent that dies first hands its children to a
        # reaper that may be outside the tree, where the parent check would spare them,
        # stopped for ever.
        for p in reversed(killable):
            send(p, signal.SIGKILL, parents=parents)
        reap()


def pending(pid: int) -> int:
    """Bit mask (bit N-1 = signal N) of the signals pending for the whole process ``pid``.

    Read from /proc/PID/status (``ShdPnd``, the process-directed ones); 0 if it is gone.
    """
    try:
        text = _procfs._read(f"{_procfs.PROC}/{pid}/status")
    except (_procfs.ProcessGone, OSError):
        return 0
    for line in text.splitlines():
        if line.startswith("ShdPnd:"):
            return int(line.split()[1], 16)
    return 0


def die_by(sig: int) -> None:
    """End this process by ``sig``, as a wrapper whose command died by it should.

    A shell tells "killed by SIGINT" from "exited 130" (bash ends a loop on ^C only for the
    first), so the status must be the signal itself. No core of pmrun for a core signal.
    Returns only if the signal did not end the process (then the caller exits 128+N).
    """
    import resource
    import sys

    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # their action cannot be changed
            signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        return
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    signal.pthread_sigmask(signal.SIG_BLOCK, [sig])  # e.g. SIGCONT, SIGURG: ignored by default
