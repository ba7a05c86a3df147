"""The exit report: what happened to one agent, as JSON (``--report FILE``)."""

from __future__ import annotations

import errno
import os
import stat
import time

TYPE_CHECKING = False  # not `from typing import`: the launch path avoids importing typing
if TYPE_CHECKING:
    from typing import Any


# Why an agent ended. "exit" and "signal" are the command's own doing; the others are pmrun's
# or the kernel's.
REASONS = ("exit", "signal", "max-rss", "max-as", "pool", "system-pressure", "kernel-oom")


class Limits:
    """An agent's limits in bytes (``max_as`` None = no RLIMIT_AS) and the stop grace in seconds."""

    __slots__ = ("max_rss", "warn_rss", "max_as", "grace_s")

    def __init__(self, max_rss: int, warn_rss: int, max_as: int | None, grace_s: float) -> None:
        self.max_rss = max_rss
        self.warn_rss = warn_rss
        self.max_as = max_as
        self.grace_s = grace_s

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limits) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Limits({self.to_dict()})"


class TopProcess:
    """The biggest process of the tree at its peak."""

    __slots__ = ("pid", "name", "rss_bytes")

    def __init__(self, pid: int, name: str, rss_bytes: int) -> None:
        self.pid = pid
        self.name = name
        self.rss_bytes = rss_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "rss_bytes": self.rss_bytes}


# Every field of the report, in order. Sizes in bytes, times in seconds (Unix time).
FIELDS = (
    "command",
    "name",
    "agent_id",
    "pid",  # the command's pid
    "launcher_pid",
    "start_time",
    "end_time",
    "exit_status",  # what pmrun exits with: the command's code, 128+N, or 137 for a limit
    "reason",  # one of REASONS
    "message",  # one line for people
    "signal",  # the signal that ended the command, if one did
    "peak_rss_bytes",  # sampled peak of the whole tree
    "limits",
    "samples",
    "biggest_at_peak",
    "ru_maxrss_bytes",  # the kernel's own peak RSS of the command (wait4)
    "backend",  # which backend and why
    "kernel_peak_bytes",  # the cgroup's own peak (usage incl. cache)
    "kernel_oom_kills",
    "warned_at",  # when --warn-rss was first crossed
    "stop",  # what pmrun (or the coordinator) decided, with figures
    "extra",
)


class ExitReport:
    """Everything ``--report`` writes; built once, when the agent has ended."""

    __slots__ = FIELDS
    command: list[str]
    name: str
    agent_id: str
    pid: int
    launcher_pid: int
    start_time: float
    end_time: float
    exit_status: int
    reason: str
    message: str
    signal: int | None
    peak_rss_bytes: int
    limits: Limits
    samples: int
    biggest_at_peak: TopProcess | None
    ru_maxrss_bytes: int | None
    backend: dict[str, Any]
    kernel_peak_bytes: int | None
    kernel_oom_kills: int
    warned_at: float | None
    stop: dict[str, Any] | None
    extra: dict[str, Any]

    def __init__(self, **fields: Any) -> None:
        fields.setdefault("kernel_peak_bytes", None)
        fields.setdefault("kernel_oom_kills", 0)
        fields.setdefault("warned_at", None)
        fields.setdefault("stop", None)
        fields.setdefault("extra", {})
        missing = set(FIELDS) - set(fields)
        unknown = set(fields) - set(FIELDS)
        if missing or unknown:
            raise TypeError(f"ExitReport: missing {sorted(missing)}, unknown {sorted(unknown)}")
        for k, v in fields.items():
            setattr(self, k, v)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for k in FIELDS:
            v = getattr(self, k)
            out[k] = v.to_dict() if hasattr(v, "to_dict") else v
        return out

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Where a magic /proc link names an open file (``/dev/fd/N``, ``/dev/stdout``): its text is
# "pipe:[123]", not a path, so it can only be opened by following it.
_FD_DIRS = ("/proc/self/fd", "/proc/thread-self/fd")
_MAX_HOPS = 40  # the kernel's own limit on symlinks in one lookup


def _fd_dir(directory: str) -> bool:
    real = os.path.realpath(directory)
    if real in _FD_DIRS:
        return True
    parts = real.split("/")  # /proc/PID/fd or /proc/PID/task/TID/fd
    return (
        len(parts) in (4, 6)
        and parts[1] == "proc"
        and parts[2].isdigit()
        and parts[-1] == "fd"
        and (len(parts) == 4 or parts[3] == "task")
    )


def _may_follow(link: str, st_link: os.stat_result, uid: int) -> str | None:
    """Why ``link`` must not be followed, or None; like the kernel's ``fs.protected_symlinks``.

    The kernel follows a link in a sticky world-writable directory (``/tmp``) only if the
    follower or the directory's owner owns it. pmrun is stricter, because its report may be
    written as root: the link must also belong to us or to root, wherever it is.
    """
    directory = os.path.dirname(link) or "."
    st_dir = os.stat(directory)
    owner = st_link.st_uid
    if owner not in (uid, 0):
        return f"refusing to follow symlink {link}: it belongs to uid {owner}, not to uid {uid}"
    sticky_ww = st_dir.st_mode & stat.S_ISVTX and st_dir.st_mode & stat.S_IWOTH
    if sticky_ww and owner not in (uid, st_dir.st_uid):
        return (
            f"refusing to follow symlink {link}: it belongs to uid {owner} in the sticky"
            f" world-writable {directory} of uid {st_dir.st_uid}"
        )
    return None


def _resolve(path: str) -> tuple[str, bool]:
    """Follow ``path``'s final symlinks one hop at a time, checking each.

    Returns the path to open and whether it must be opened following a magic fd link.
    Directories along the way are resolved by the kernel as usual.
    """
    uid = os.geteuid()
    for _ in range(_MAX_HOPS):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path, False  # created (O_NOFOLLOW: a link planted now fails, never followed)
        if not stat.S_ISLNK(st.st_mode):
            return path, False
        why = _may_follow(path, st, uid)
        if why is not None:
            raise PermissionError(errno.EPERM, why)
        directory = os.path.dirname(path) or "."
        if _fd_dir(directory):
            return path, True
        path = os.path.join(directory, os.readlink(path))
    raise OSError(errno.ELOOP, f"too many levels of symbolic links in {path}")


def _own_fd(link: str) -> int | None:
    """The fd number if ``link`` is one of this process's own ``/proc/.../fd/N``."""
    directory, _, name = link.rpartition("/")
    real = os.path.realpath(directory or ".")
    mine = (f"/proc/{os.getpid()}/fd", f"/proc/{os.getpid()}/task/{_thread_id()}/fd")
    return int(name) if name.isdigit() and real in mine else None


def _thread_id() -> int:
    return os.gettid() if hasattr(os, "gettid") else os.getpid()


def _open_through(path: str, reader_wait_s: float) -> int:
    """Open ``path`` for writing without replacing it; wait a while for a FIFO's reader.

    One of our own fds (``/dev/stdout``, ``/dev/fd/N``) is duplicated, not reopened: the
    report goes after what the command wrote there, as ``cmd; cat report >&N`` would put it,
    instead of truncating (or overwriting from offset 0) a file the command writes too.
    """
    target, magic = _resolve(path)
    if magic:
        fd = _own_fd(target)
        if fd is not None:
            return os.dup(fd)
        return os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
    deadline = time.monotonic() + reader_wait_s
    while True:
        try:
            return os.open(target, flags, 0o600)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: a FIFO nobody has open for reading (yet)
                raise
            if time.monotonic() >= deadline:
                raise OSError(errno.ENXIO, f"no reader on FIFO {path}") from None
            time.sleep(0.05)


def _write_all(fd: int, data: bytes, stall_s: float) -> None:
    """Write all of ``data`` to ``fd``; give up when the reader takes nothing for ``stall_s``.

    The fd may be blocking and shared with the command (its stdout), so it is never made
    non-blocking: each write waits for room first and is at most PIPE_BUF long, which a
    pipe with room takes without blocking.
    """
    import select

    view = memoryview(data)
    while view:
        if not select.select([], [fd], [], stall_s)[1]:
            raise OSError(errno.ETIMEDOUT, f"the reader took nothing for {stall_s:g} s")
        try:
            n = os.write(fd, view[: select.PIPE_BUF])
        except BlockingIOError:
            continue
        view = view[n:]


def private_fd(path: str | None) -> None:
    """Keep a ``--report /dev/fd/N`` (N > 2) from the command: the fd is pmrun's to write.

    Without this the command would inherit it, and a ``>(jq .)`` reader would wait for every
    descendant to close it.
    """
    if not path:
        return
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        rest = path[len(prefix) :] if path.startswith(prefix) else ""
        if rest.isdigit() and int(rest) > 2:
            try:
                os.set_inheritable(int(rest), False)
            except OSError:
                pass  # not open: writing the report will say so


def write_report(
    report: ExitReport, path: str, *, reader_wait_s: float = 30.0, stall_s: float = 30.0
) -> None:
    """Write ``report`` to ``path`` (``-`` for stderr), through the path, never replacing it.

    A FIFO, ``/dev/fd/N`` (``>(jq .)``), ``/dev/stdout`` and a symlink of ours are written
    through; a new file is created 0600. Every failure is an :class:`OSError` whose
    ``strerror`` is one line for the user; nothing waits forever (``reader_wait_s`` for a
    FIFO's reader to appear, ``stall_s`` for a reader that stops reading).
    """
    data = (report.to_json() + "\n").encode()
    if path == "-":
        _write_all(2, data, stall_s)
        return
    try:
        fd = _open_through(path, reader_wait_s)
    except ValueError as e:  # a NUL in the path
        raise OSError(errno.EINVAL, str(e)) from None
    try:
        _write_all(fd, data, stall_s)
    finally:
        os.close(fd)
