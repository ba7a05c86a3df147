"""The coordinator's claim on its socket path: the lock, the bound socket, and keeping both.

One coordinator serves a socket path: the one holding ``flock`` on ``<socket>.lock``. A /tmp
cleaner may delete the socket, the lock or the whole directory under a running daemon, so
the daemon checks its claim every second (:meth:`Endpoint.check`): a missing or replaced
socket is bound again; a missing lock is taken again, unless another coordinator took it
meanwhile, and then this one must go (two daemons would be two pools). Launchers look at
the lock (:func:`lock_held`) before starting a daemon, so a socket that merely vanished does
not start a second coordinator that exits at once.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time

from ..errors import SocketSecurityError
from . import paths

# A launcher's look at the lock (lock_held) holds it shared for microseconds: a daemon that
# finds it taken tries again for this long before deciding another coordinator runs.
LOCK_WAIT_S = 0.5


class AlreadyRunning(Exception):
    """Another coordinator holds the lock for this socket."""


def _same_file(path: str, st: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def acquire_lock(socket_path: str, wait_s: float = LOCK_WAIT_S) -> int:
    """Take the per-socket lock (flock) or raise :class:`AlreadyRunning`. Returns its fd.

    The lock is checked to still be the file at its path once held: one deleted between
    our open and our flock would let a second coordinator lock a new file there.
    """
    lock = paths.lock_path(socket_path)
    deadline = time.monotonic() + wait_s
    while True:
        fd = paths.open_private(lock, os.O_RDWR | os.O_CREAT)  # ours, regular, no symlink
        try:
            st = os.fstat(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            # Held by a live coordinator (its pid is in the file): give way at once, so that
            # a daemon started at the same instant cannot take over when that one stops. A
            # launcher's brief look (lock_held) leaves the file as it was: wait it out.
            if (holder is not None and _alive(holder)) or time.monotonic() >= deadline:
                raise AlreadyRunning(socket_path) from None
            time.sleep(0.02)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(lock, st):
            break
        os.close(fd)  # deleted or replaced meanwhile: lock the file that is there now
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder_pid(fd: int) -> int | None:
    """The pid the lock's holder wrote into it, if any."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a planted FIFO: no hang


def lock_held(socket_path: str) -> bool:
    """Whether a coordinator (running or starting) holds the lock of ``socket_path``."""
    try:
        fd = os.open(paths.lock_path(socket_path), _READ)
    except OSError:
        return False  # no lock file (or one we may not use): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases our shared lock, if we took it
    return False


def check_lock(socket_path: str) -> None:
    """Refuse a lock path that a daemon could not take: a symlink, a FIFO, another user's
    file. One ``lstat``, so that launchers do not start daemons that fail on it."""
    lock = paths.lock_path(socket_path)
    try:
        st = os.lstat(lock)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SocketSecurityError(f"{paths.shown(lock)} is a symlink: pmrun does not follow it")
    if not stat.S_ISREG(st.st_mode):
        raise SocketSecurityError(f"{paths.shown(lock)} is not a regular file: remove it")
    if st.st_uid != os.geteuid():
        raise SocketSecurityError(
            f"{paths.shown(lock)} belongs to uid {st.st_uid}, not to you: remove it"
        )


def lock_holder(socket_path: str) -> int | None:
    """The pid the lock's holder wrote in it, if any (for messages only)."""
    try:
        fd = os.open(paths.lock_path(socket_path), _READ)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def bind_socket(socket_path: str) -> socket.socket:
    """Bind and listen on ``socket_path`` (0600), replacing a stale socket. Hold the lock first."""
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketSecurityError(
                f"{socket_path} exists and is not a socket: remove it or choose another --socket"
            )
        if st.st_uid != os.geteuid():
            raise SocketSecurityError(
                f"{socket_path} belongs to uid {st.st_uid}: choose another --socket"
            )
        os.unlink(socket_path)  # stale: we hold the lock, so no coordinator serves it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(socket_path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(256)
    sock.setblocking(False)
    return sock


def reopen_log_if_deleted(socket_path: str, proc: str = "/proc") -> bool:
    """A daemon started on demand logs to ``coordinator.log`` (its stdout and stderr): if a
    cleaner deleted that file, log to a new one at the same path. True if it did."""
    log = paths.log_path(socket_path)
    try:
        if os.readlink(f"{proc}/self/fd/2") != log + " (deleted)":
            return False
        fd = paths.open_private(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except (OSError, SocketSecurityError):
        return False
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True


class Endpoint:
    """The lock and the listening socket of one running coordinator."""

    OK, REBOUND, LOST = "ok", "rebound", "lost"

    def __init__(self, socket_path: str) -> None:
        """Take the lock and bind; raises :class:`AlreadyRunning` if another coordinator has it."""
        self.socket_path = socket_path
        self.lock_fd = acquire_lock(socket_path)
        try:
            self.sock = bind_socket(socket_path)
            self._identity = os.stat(socket_path)
        except BaseException:
            os.close(self.lock_fd)
            raise

    def _lock_is_ours(self) -> bool:
        return _same_file(paths.lock_path(self.socket_path), os.fstat(self.lock_fd))

    def serves_path(self) -> bool:
        """Whether the file at the socket path is still the socket we listen on."""
        return _same_file(self.socket_path, self._identity)

    def check(self) -> str:
        """Make sure the path still leads here: :attr:`OK`, :attr:`REBOUND` (``sock`` is a new
        socket: serve it, the old one is unreachable) or :attr:`LOST` (another coordinator
        holds the lock now: stop serving). Raises OSError if the path cannot be restored."""
        if not self._lock_is_ours():
            paths.prepare_dir(self.socket_path)  # the cleaner may have taken the directory
            try:
                fd = acquire_lock(self.socket_path)
            except AlreadyRunning:
                return self.LOST
            os.close(self.lock_fd)
            self.lock_fd = fd
        if self.serves_path():
            return self.OK
        self.sock = bind_socket(self.socket_path)
        self._identity = os.stat(self.socket_path)
        return self.REBOUND

    def close(self) -> None:
        """Remove the socket if it is still ours, and release the lock."""
        try:
            if self.serves_path():
                os.unlink(self.socket_path)
        except OSError:
            pass
        self.sock.close()
        os.close(self.lock_fd)
