"""Where the coordinator's socket lives, and making its directory safely.

The default is ``$XDG_RUNTIME_DIR/pmrun/coordinator.sock`` (a per-user tmpfs that the
login manager makes 0700), else ``<tempdir>/pmrun-<uid>/coordinator.sock``. The lock,
the daemon's log and the event log sit next to the socket.

The directory is the security boundary: it is created 0700 and must be a real
directory owned by the user (or root). A symlink or someone else's directory at that path
is refused with :class:`~pmrun.errors.SocketSecurityError` rather than used, because in a
shared /tmp another user could have made it first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

from ..errors import SocketSecurityError, UsageError

SOCKET_NAME = "coordinator.sock"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def _tempdir(env: Mapping[str, str]) -> str:
    # tempfile.gettempdir() would cost an import of tempfile (and random) on every agent start.
    for name in ("TMPDIR", "TEMP", "TMP"):
        d = env.get(name)
        if d and os.path.isdir(d):
            return d
    return "/tmp"


def default_socket_path(env: Mapping[str, str] | None = None) -> str:
    """The socket used when neither ``--socket`` nor ``PMRUN_SOCKET`` nor the config names one."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, "pmrun", SOCKET_NAME)
    return os.path.join(_tempdir(env), f"pmrun-{os.geteuid()}", SOCKET_NAME)


def resolve_socket_path(value: str | None, env: Mapping[str, str] | None = None) -> str:
    """``value`` (a flag, PMRUN_SOCKET or the config's ``coordinator.socket``), or the default."""
    env = os.environ if env is None else env
    path = value or env.get("PMRUN_SOCKET") or default_socket_path(env)
    if "\0" in path:
        raise UsageError("the socket path holds a NUL character: choose another --socket")
    path = os.path.abspath(os.path.expanduser(path))
    size = len(os.fsencode(path))  # the bytes the kernel gets: not UTF-8 is fine too
    if size > MAX_SOCKET_PATH:
        raise UsageError(
            f"socket path {shown(path)} is {size} bytes; Unix sockets allow "
            f"{MAX_SOCKET_PATH}: choose a shorter --socket"
        )
    check_socket_path(path)
    return path


def shown(path: str) -> str:
    """``path`` fit to print: bytes that are not UTF-8 (from the environment) as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
)


def check_socket_path(path: str) -> None:
    """Refuse a socket path where something other than a socket exists (``/dev/null``, a
    file, a directory, a symlink), before anything is created next to it.

    One ``lstat``; a path that cannot be looked at is left to ``connect``/``bind`` to report.
    """
    try:
        st = os.lstat(path)
    except NotADirectoryError:
        raise SocketSecurityError(
            f"{shown(path)}: a parent is not a directory; choose another --socket"
        ) from None
    except OSError:
        return
    if stat.S_ISSOCK(st.st_mode):
        return
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a socket")
    raise SocketSecurityError(f"{shown(path)} is {kind}, not a socket: choose another --socket")


def sibling(socket_path: str, name: str) -> str:
    """A file next to the socket (``coordinator.lock``, ``coordinator.log``, ``events.jsonl``)."""
    return os.path.join(os.path.dirname(socket_path), name)


def lock_path(socket_path: str) -> str:
    return socket_path + ".lock"


def log_path(socket_path: str) -> str:
    return sibling(socket_path, "coordinator.log")


def default_events_path(socket_path: str) -> str:
    return sibling(socket_path, "events.jsonl")


def open_private(path: str, flags: int, *, devices: bool = False) -> int:
    """Open one of pmrun's own files (the lock, the daemon's log, the event log) for writing.

    Never through a symlink (``O_NOFOLLOW``), never blocking on a FIFO planted there
    (``O_NONBLOCK``), and only a file of our own uid: in a shared directory (``--socket
    /tmp/x.sock``) another user could have made ``coordinator.log`` first and would read
    what we append. ``devices``: a character device or FIFO the user named (``--events
    /dev/stderr``'s target) is accepted too, if it is ours or root's. Raises
    :class:`~pmrun.errors.SocketSecurityError`, or OSError for what the kernel refused.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SocketSecurityError(
                f"{shown(path)} is a symlink: pmrun does not follow it"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if stat.S_ISREG(st.st_mode):
            if st.st_uid != me:
                raise SocketSecurityError(
                    f"{shown(path)} belongs to uid {st.st_uid}, not to you (uid {me}): remove "
                    "it or choose another --socket"
                )
        elif not (devices and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode))):
            raise SocketSecurityError(f"{shown(path)} is not a regular file: remove it")
        elif st.st_uid not in (me, 0):
            raise SocketSecurityError(f"{shown(path)} belongs to uid {st.st_uid}, not to you")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_dir(path: str, *, uid: int | None = None) -> None:
    """Refuse ``path`` unless it is a real directory owned by ``uid`` (or root) that others
    cannot write to (a sticky directory such as /tmp is accepted: others cannot replace
    what is ours in it).

    Cheap (one ``lstat``): clients call it before trusting a socket found there.
    """
    uid = os.geteuid() if uid is None else uid
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise SocketSecurityError(
            f"{path} is a symlink; pmrun refuses to use it for its socket: remove it "
            f"or choose another --socket"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise SocketSecurityError(
            f"{path} is not a directory: remove it or choose another --socket"
        )
    if st.st_uid not in (uid, 0):
        raise SocketSecurityError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {uid}); another user may "
            f"have made it: remove it or choose another --socket"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise SocketSecurityError(
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"chmod 700 it or choose another --socket"
        )


def prepare_dir(socket_path: str) -> str:
    """Create the socket's directory 0700 if missing (parents too), then check it.

    An existing directory is never changed, only checked: ``--socket /tmp/x.sock`` must
    not chmod /tmp. Returns the directory.
    """
    d = os.path.dirname(socket_path) or "."
    if not os.path.lexists(d):
        os.makedirs(os.path.dirname(d) or ".", mode=0o700, exist_ok=True)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass  # made meanwhile, by us or someone else: the checks below decide
    check_dir(d)
    return d
