"""Signal processes through pidfds, so a recycled pid is never signalled."""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import os

from . import _procfs

_HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


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
    finally:
        os.close(fd)
