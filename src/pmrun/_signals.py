"""Signal processes through pidfds, so a recycled pid is never signalled."""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import os

from . import _procfs

_HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
# Pids that refused a signal (EPERM): a process of the tree that changed its uid (a
# setuid program that set its real uid too, sudo) cannot be stopped by a non-root pmrun.
REFUSED: set[int] = set()


def send(pid: int, sig: int, *, parents: set[int] | None = None) -> bool:
    """Send ``sig`` to ``pid``; False if it is gone (or no longer a child of ``parents``).

    With ``parents``, the pid is signalled only if, once pinned by a pidfd, its parent
    is still one of them: a pid read from a children file and recycled before we
    pinned it belongs to someone else's process, whose parent is not in our tree.
    """
    try:
        if not _HAVE_PIDFD:  # pragma: no cover - kernels before 5.3
            raise NotImplementedError
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, NotImplementedError):  # pragma: no cover - ENOSYS on old kernels
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            REFUSED.add(pid)
            return False
    try:
        if parents is not None:
            try:
                ppid = int(_procfs.stat(pid)[3])
            except _procfs.ProcessGone:
                return False
            if ppid not in parents:
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
