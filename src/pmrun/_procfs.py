"""Process trees, sizes and identities from /proc; every size it returns is in bytes.

An agent's memory is counted as the cgroup backend's kernel counts it: anonymous memory,
shared memory (shmem, tmpfs, memfd) and swap (:data:`COUNTED`), from ``/proc/PID/status``
(RssAnon + RssShmem + VmSwap). File-backed pages (the program's own binary, a read-only
mapping of a big file) are left out: the kernel drops them under pressure instead of failing
an allocation. ``statm`` cannot tell shmem from file pages, ``stat`` gives only the total RSS.
The tree is found through ``task/<tid>/children`` (no scan of all of /proc). A process that
vanishes between two reads is normal and surfaces as :class:`ProcessGone`. The root is
overridable (``proc=``) so parsing can be tested on a fake tree.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable

PROC = "/proc"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
COUNTED = "anon+shmem+swap"  # what every backend counts, as reports and messages name it


class ProcessGone(Exception):
    """The process exited (or its pid is no longer readable) while we looked at it."""


_EMFILE, _ENFILE, _ESRCH = 24, 23, 3
_readers: list[TreeReader] = []  # every open reader: one that is short of fds asks them all


def _relieve() -> None:
    """Out of fds: every reader closes half of the files it keeps open."""
    for reader in _readers:
        reader.shrink(reader.open_files() // 2)


def _read(path: str) -> str:
    for attempt in (0, 1):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (FileNotFoundError, ProcessLookupError) as e:
            raise ProcessGone(path) from e
        except OSError as e:
            # ESRCH on a task that died mid-read; EACCES is not "gone" and propagates.
            if e.errno == _ESRCH:
                raise ProcessGone(path) from e
            if e.errno in (_EMFILE, _ENFILE):
                # Out of fds: free some and try once more; then the file is unreadable
                # this time, like a process that is gone: skipped, never an error.
                if attempt == 0:
                    _relieve()
                    continue
                raise ProcessGone(path) from e
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def statm(pid: int, proc: str = PROC) -> tuple[int, int]:
    """Return (virtual size, resident size) of ``pid`` in bytes."""
    return _statm_sizes(pid, _read(f"{proc}/{pid}/statm").split())


def _statm_sizes(pid: int, fields: list[str] | list[bytes]) -> tuple[int, int]:
    """(virtual size, resident size) in bytes from the fields of a ``statm`` line."""
    if len(fields) < 2 or (int(fields[0]) == 0 and int(fields[1]) == 0):
        raise ProcessGone(pid)  # a zombie has an empty or all-zero statm
    return int(fields[0]) * PAGE_SIZE, int(fields[1]) * PAGE_SIZE


def _status_field(data: bytes, key: bytes) -> int:
    """The number after ``key`` in a ``status`` text (kB figures stay in kB); 0 if absent."""
    i = data.find(key)
    if i < 0:
        return 0
    return int(data[i + len(key) : data.find(b"\n", i + 1)].split()[0])


def _status_memory(pid: int, data: bytes) -> tuple[bytes, int, int, int]:
    """(state, threads, virtual size, counted memory) in bytes from ``/proc/PID/status``."""
    i = data.find(b"\nState:")
    if i < 0:
        raise ProcessGone(pid)
    state = data[i + 7 : i + 16].split()[0]
    if state in (b"Z", b"X"):
        raise ProcessGone(pid)  # a zombie has no memory left
    counted = (
        _status_field(data, b"\nRssAnon:")
        + _status_field(data, b"\nRssShmem:")
        + _status_field(data, b"\nVmSwap:")
    )
    return (
        state,
        _status_field(data, b"\nThreads:"),
        _status_field(data, b"\nVmSize:") << 10,
        counted << 10,
    )


def counted_pss(pid: int, proc: str = PROC) -> int | None:
    """``pid``'s share of anonymous + shared memory + swap (Pss_Anon + Pss_Shmem + SwapPss).

    Summed over a tree, a page that several processes map (copy-on-write after fork,
    a shared mapping) counts once, as the kernel's cgroup counts it. Walks the page
    tables (~100 us for a small process): for occasional use. None where the kernel
    does not split PSS by kind (before 5.7).
    """
    r = smaps_rollup(pid, proc)
    if "Pss_Anon" not in r:
        return None
    return r["Pss_Anon"] + r.get("Pss_Shmem", 0) + r.get("SwapPss", 0)


def memory(pid: int, proc: str = PROC) -> tuple[int, int]:
    """(virtual size, counted memory: anon + shmem + swap) of ``pid`` in bytes."""
    _, _, vsz, counted = _status_memory(pid, _read(f"{proc}/{pid}/status").encode())
    return vsz, counted


def has_children_files(proc: str = PROC) -> bool:
    """Whether the kernel has CONFIG_PROC_CHILDREN (``/proc/PID/task/TID/children``)."""
    pid = os.getpid()
    return os.path.exists(f"{proc}/{pid}/task/{pid}/children")


def children(pid: int, proc: str = PROC) -> list[int]:
    """Direct children of every thread of ``pid`` (a child's parent may be any thread)."""
    return _children_of(pid, _tids(pid, proc), proc, _read)


def _tids(pid: int, proc: str) -> list[str]:
    try:
        return os.listdir(f"{proc}/{pid}/task")
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(pid) from e
    except OSError as e:
        if e.errno in (_EMFILE, _ENFILE, _ESRCH):
            raise ProcessGone(pid) from e  # out of fds: unreadable this time
        raise


def _children_of(
    pid: int, tids: list[str], proc: str, read: Callable[[str], str | bytes]
) -> list[int]:
    """The children listed in each of ``tids``' children files, read with ``read``."""
    out: list[int] = []
    for tid in tids:
        try:
            text = read(f"{proc}/{pid}/task/{tid}/children")
        except ProcessGone:
            continue  # that thread exited; its children moved to a sibling or reaper
        out.extend(int(c) for c in text.split())
    return out


def children_by_scan(proc: str = PROC) -> dict[int, list[int]]:
    """Parent -> children for every process: the slow fallback without children files."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            ppid = stat(int(name), proc).ppid
        except (ProcessGone, PermissionError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(roots: list[int], proc: str = PROC) -> list[int]:
    """``roots`` and all their descendants, parents before children, vanished ones skipped."""
    seen: list[int] = []
    stack = list(reversed(roots))
    visited: set[int] = set()
    fast = has_children_files(proc)
    scan = None if fast else children_by_scan(proc)
    while stack:
        pid = stack.pop()
        if pid in visited:
            continue
        visited.add(pid)
        seen.append(pid)
        if scan is not None:
            kids = scan.get(pid, [])
        else:
            try:
                kids = children(pid, proc)
            except ProcessGone:
                continue
        stack.extend(reversed(kids))
    return seen


# Task flag in /proc/PID/stat (include/linux/sched.h): the process is exiting. It is set
# before its memory and files go and long before it shows as a zombie.
PF_EXITING = 0x4


class ProcStat:
    """The fields of ``/proc/PID/stat`` pmrun uses, named; sizes in bytes, times in ticks."""

    __slots__ = ("pid", "comm", "state", "ppid", "pgrp", "session", "flags", "threads",
                 "start_time", "vsize_bytes", "rss_bytes")  # fmt: skip

    def __init__(
        self,
        pid: int,
        comm: str,
        state: str,
        ppid: int,
        pgrp: int,
        session: int,
        flags: int,
        threads: int,
        start_time: int,
        vsize_bytes: int,
        rss_bytes: int,
    ) -> None:
        self.pid = pid
        self.comm = comm
        self.state = state  # R, S, D, T, t, Z, X, ...
        self.ppid = ppid
        self.pgrp = pgrp
        self.session = session
        self.flags = flags  # PF_* task flags
        self.threads = threads
        self.start_time = start_time  # clock ticks after boot: with the pid, an identity
        self.vsize_bytes = vsize_bytes
        self.rss_bytes = rss_bytes  # every resident page, file-backed ones included

    @property
    def zombie(self) -> bool:
        """Every thread is gone; only the exit status waits to be reaped.

        A leader that ended by ``pthread_exit`` shows Z too while its other threads run:
        the thread count tells them apart.
        """
        return self.state in ("Z", "X", "x") and self.threads <= 1

    @property
    def running(self) -> bool:
        """Some thread of it can still act: not a zombie, and not exiting (``PF_EXITING``)."""
        if self.threads > 1:
            return True
        return self.state not in ("Z", "X", "x") and not self.flags & PF_EXITING

    def __repr__(self) -> str:
        return (
            f"ProcStat(pid={self.pid}, comm={self.comm!r}, state={self.state!r},"
            f" ppid={self.ppid}, start_time={self.start_time})"
        )


def parse_stat(pid: int, text: str) -> ProcStat:
    """A ``/proc/PID/stat`` line as a :class:`ProcStat`; :class:`ProcessGone` if it is not one.

    Parsed from the last ``)``: a comm may hold spaces and parentheses. Field N of
    proc(5) is ``rest[N - 3]``.
    """
    lpar, rpar = text.find("("), text.rfind(")")
    rest = text[rpar + 1 :].split()
    if lpar < 0 or rpar < lpar or len(rest) < 22:
        raise ProcessGone(pid)
    try:
        return ProcStat(
            pid=int(text[:lpar]),
            comm=text[lpar + 1 : rpar],
            state=rest[0],
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            session=int(rest[3]),
            flags=int(rest[6]),
            threads=int(rest[17]),
            start_time=int(rest[19]),
            vsize_bytes=int(rest[20]),
            rss_bytes=int(rest[21]) * PAGE_SIZE,
        )
    except ValueError:
        raise ProcessGone(pid) from None


def stat(pid: int, proc: str = PROC) -> ProcStat:
    """``/proc/PID/stat`` of ``pid``, parsed."""
    return parse_stat(pid, _read(f"{proc}/{pid}/stat"))


def start_time(pid: int, proc: str = PROC) -> int:
    """The process's start time in clock ticks since boot: with the pid, a unique identity."""
    return stat(pid, proc).start_time


def same_process(
    pid: int, start_time: int | None, proc: str = PROC, *, unreadable: bool = False
) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` and still running.

    A zombie or an exiting process is not (it will never act again), nor a recycled pid
    (another start time). With ``start_time`` None only liveness is checked. Where /proc
    refuses to say (EACCES), the answer is ``unreadable``: the caller knows which mistake
    is the safe one.
    """
    if pid <= 0:
        return False
    try:
        st = stat(pid, proc)
    except ProcessGone:
        return False
    except OSError:
        return unreadable
    return st.running and (start_time is None or st.start_time == start_time)


def any_alive(pids: list[int], proc: str = PROC) -> bool:
    """Whether any of ``pids`` is still running (zombies waiting to be reaped are not)."""
    for pid in pids:
        try:
            if not stat(pid, proc).zombie:
                return True
        except ProcessGone:
            continue
    return False


def comm(pid: int, proc: str = PROC) -> str:
    return _read(f"{proc}/{pid}/comm").strip()


def cmdline(pid: int, proc: str = PROC) -> list[str]:
    return [a for a in _read(f"{proc}/{pid}/cmdline").split("\0") if a]


def meminfo(proc: str = PROC) -> dict[str, int]:
    """``/proc/meminfo`` as bytes (``MemTotal``, ``MemAvailable``, ...)."""
    out: dict[str, int] = {}
    for line in _read(f"{proc}/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        value = int(parts[0])
        if len(parts) > 1 and parts[1] == "kB":
            value *= 1024
        out[key] = value
    return out


class Pressure:
    """One line of a PSI file: percentages of wall time some/all tasks stalled."""

    __slots__ = ("avg10", "avg60", "avg300", "total_us")

    def __init__(self, avg10: float, avg60: float, avg300: float, total_us: int) -> None:
        self.avg10 = avg10
        self.avg60 = avg60
        self.avg300 = avg300
        self.total_us = total_us

    def __repr__(self) -> str:
        return f"Pressure(avg10={self.avg10}, avg60={self.avg60}, avg300={self.avg300}, total_us={self.total_us})"


def memory_pressure(proc: str = PROC) -> dict[str, Pressure] | None:
    """``/proc/pressure/memory`` as {"some": ..., "full": ...}; None where PSI is absent."""
    try:
        text = _read(f"{proc}/pressure/memory")
    except (ProcessGone, OSError):
        return None
    out: dict[str, Pressure] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        kv = dict(p.split("=", 1) for p in pairs)
        out[kind] = Pressure(
            float(kv["avg10"]), float(kv["avg60"]), float(kv["avg300"]), int(kv["total"])
        )
    return out


def smaps_rollup(pid: int, proc: str = PROC) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` (Rss, Pss, Private_*, Swap, ...) as bytes."""
    out: dict[str, int] = {}
    for line in _read(f"{proc}/{pid}/smaps_rollup").splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key.strip()] = int(parts[0]) * 1024
    return out


def uss_pss(pid: int, proc: str = PROC) -> tuple[int, int, int]:
    """(USS, PSS, swap) of ``pid`` in bytes: unique, proportional and swapped-out memory."""
    r = smaps_rollup(pid, proc)
    uss = r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
    return uss, r.get("Pss", 0), r.get("Swap", 0)


def uid(pid: int, proc: str = PROC) -> int:
    """Real uid of ``pid``."""
    return os.stat(f"{proc}/{pid}").st_uid


class TreeReader:
    """Reads one process tree again and again, keeping its /proc files open.

    Re-reading an open ``status`` or ``children`` file costs one ``pread``; opening
    it each time costs three syscalls and a path walk, about 15 times more for a
    20-process tree (benchmarks/bench_launcher.py). An open /proc file also stays
    bound to its process: once that process is gone, reads fail rather than return
    a recycled pid's figures.

    The files kept open are capped (``max_open``; by default a quarter of the soft
    RLIMIT_NOFILE, at most :data:`MAX_OPEN_FILES`): a wider tree's other files are
    opened, read and closed each time, so a tree of any width never runs the
    launcher out of fds. Out of fds anyway, a reader gives back half of what it
    holds and tries again; a file it still cannot open is skipped this time.
    """

    MAX_OPEN_FILES = 256

    # A multi-threaded process's thread list is listed again when its thread count
    # changes, and at least this often (a thread that exits while another starts
    # leaves the count unchanged; children of the new one are then found this late).
    TIDS_MAX_AGE_S = 1.0

    def __init__(self, proc: str = PROC, *, max_open: int | None = None) -> None:
        self._proc = proc
        self._fds: dict[str, int] = {}
        self._fast = has_children_files(proc)
        self._tids: dict[int, tuple[int, float, list[str]]] = {}  # pid -> (threads, when, tids)
        if max_open is None:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            soft = self.MAX_OPEN_FILES * 4 if soft == resource.RLIM_INFINITY else soft
            max_open = max(8, min(self.MAX_OPEN_FILES, soft // 4))
        self.max_open = max_open
        _readers.append(self)

    def _open(self, path: str) -> int:
        for attempt in (0, 1):
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError) as e:
                raise ProcessGone(path) from e
            except OSError as e:
                if e.errno == _ESRCH:
                    raise ProcessGone(path) from e
                if e.errno not in (_EMFILE, _ENFILE):
                    raise
                if attempt == 0:
                    _relieve()
                    continue
                raise ProcessGone(path) from e  # still none: skipped this time
        raise AssertionError("unreachable")  # pragma: no cover

    def _pread(self, path: str) -> bytes:
        fd = self._fds.get(path)
        keep = True
        if fd is None:
            fd = self._open(path)
            keep = len(self._fds) < self.max_open
            if keep:
                self._fds[path] = fd
        try:
            data = os.pread(fd, 4096, 0)
        except OSError as e:
            if keep:
                self._drop(path)
            if e.errno == _ESRCH:  # the process is gone
                raise ProcessGone(path) from e
            raise
        finally:
            if not keep:
                os.close(fd)
        return data

    def shrink(self, count: int) -> None:
        """Close ``count`` of the files kept open (the oldest first)."""
        for path in list(self._fds)[:count]:
            self._drop(path)

    def _drop(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def statm(self, pid: int) -> tuple[int, int]:
        """(virtual size, resident size) of ``pid`` in bytes."""
        return _statm_sizes(pid, self._pread(f"{self._proc}/{pid}/statm").split())

    def memory(self, pid: int) -> tuple[int, int]:
        """(virtual size, counted memory: anon + shmem + swap) of ``pid`` in bytes."""
        _, _, vsz, counted = _status_memory(pid, self._pread(f"{self._proc}/{pid}/status"))
        return vsz, counted

    def children(self, pid: int) -> list[int]:
        """Like :func:`children`, through the open files."""
        return _children_of(pid, _tids(pid, self._proc), self._proc, self._pread)

    def walk(self, roots: list[int]) -> list[tuple[int, int, int]]:
        """(pid, virtual size, counted memory) of ``roots`` and every descendant, zombies left out.

        One read of ``/proc/PID/status`` per process gives its sizes and its thread
        count (``stat`` costs nearly as much and cannot tell anonymous from file pages);
        the thread list (a directory listing, the costliest part) is read only for
        multi-threaded processes, and again only when their thread count changes.
        """
        if not self._fast:
            out = []
            for pid in descendants(roots, self._proc):
                try:
                    vsz, counted = self.memory(pid)
                except ProcessGone:
                    continue
                out.append((pid, vsz, counted))
            return out
        now = time.monotonic()
        out = []
        visited: set[int] = set()
        stack = list(reversed(roots))
        while stack:
            pid = stack.pop()
            if pid in visited:
                continue
            visited.add(pid)
            try:
                data = self._pread(f"{self._proc}/{pid}/status")
                _, threads, vsz, counted = _status_memory(pid, data)
                out.append((pid, vsz, counted))
                if threads <= 1:
                    tids = [str(pid)]
                else:
                    cached = self._tids.get(pid)
                    if cached and cached[0] == threads and now - cached[1] < self.TIDS_MAX_AGE_S:
                        tids = cached[2]
                    else:
                        tids = os.listdir(f"{self._proc}/{pid}/task")
                        self._tids[pid] = (threads, now, tids)
            except (ProcessGone, OSError, IndexError, ValueError):
                continue  # gone, or unreadable this time (out of fds): skipped, not fatal
            kids = _children_of(pid, tids, self._proc, self._pread)
            stack.extend(reversed(kids))
        return out

    def descendants(self, roots: list[int]) -> list[int]:
        """Like :func:`descendants`, through the open files; zombies are left out."""
        return [pid for pid, _, _ in self.walk(roots)]

    def open_files(self) -> int:
        """How many /proc files are held open."""
        return len(self._fds)

    def forget_others(self, live: set[int]) -> None:
        """Close the files of processes no longer in the tree."""
        prefix = len(self._proc) + 1
        for path in list(self._fds):
            if int(path[prefix:].split("/", 1)[0]) not in live:
                self._drop(path)
        for gone in [p for p in self._tids if p not in live]:
            del self._tids[gone]

    def close(self) -> None:
        for path in list(self._fds):
            self._drop(path)
        if self in _readers:
            _readers.remove(self)
