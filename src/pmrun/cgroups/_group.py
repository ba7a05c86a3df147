"""One agent's group, on cgroup v1 or v2: create, join, read, limit, kill, remove.

The group is the truth about which processes belong to an agent: a process cannot
leave it by forking, double-forking or calling setsid, so stopping the agent means
emptying the group. Killing freezes first (v1 ``freezer.state``) or uses ``cgroup.kill``
(v2), so nothing can fork between the listing and the kill.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import errno
import os
import time

from ..errors import CgroupError
from ._layout import LAUNCHER_LEAF, Layout, read_text
from ._parse import (
    MemoryStat,
    memory_stat_v1,
    memory_stat_v2,
    parse_flat_keyed,
    parse_limit,
    parse_pressure,
)

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable

KILL_TIMEOUT_S = 10.0  # SIGKILLed processes still listed after this are stuck in the kernel
FREEZE_TIMEOUT_S = 1.0  # a freeze not done by then (a task in D state) is killed unfrozen
REMOVE_TIMEOUT_S = 2.0  # rmdir may say EBUSY for a moment after the last task exits
_BUSY = (errno.EBUSY, errno.ENOTEMPTY)
# At most this many memory.events wake-ups a second reach the launcher (20): near its
# limit the launcher samples every 1 ms anyway, and memory.high slows a runaway there.
EVENTS_MIN_INTERVAL_S = 0.05


def write_file(path: str, text: str) -> None:
    """One write(2) of ``text``: cgroup files take a value per write."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_pids(directory: str) -> list[int]:
    """The processes in one group (``cgroup.procs``); [] when the group is gone."""
    try:
        return [int(x) for x in read_text(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def _sigkill(pid: int) -> None:
    # The pid was read from cgroup.procs a moment ago; reusing it in between would take
    # a whole wrap of pid_max, and every process of the group is frozen or dying.
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.0002
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    return True


class AgentGroup:
    """One agent's cgroup: a directory per hierarchy pmrun uses (v1) or one (v2)."""

    version = 0

    def __init__(self, memory_dir: str, path: str, dirs: tuple[str, ...]) -> None:
        self.memory_dir = memory_dir  # the directory holding memory.* files
        self.path = path  # its path as /proc/PID/cgroup and the kernel log name it
        self.dirs = dirs  # every directory of the group, memory first
        # Prepared here so that the forked child only opens and writes.
        self.join_files = tuple(os.fsencode(os.path.join(d, "cgroup.procs")) for d in dirs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.memory_dir!r})"

    @property
    def name(self) -> str:
        return os.path.basename(self.memory_dir)

    def join_self(self) -> None:
        """Move the calling process into the group (in the forked child, before exec)."""
        for path in self.join_files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")  # "0" is the writing process itself, in v1 and v2
            finally:
                os.close(fd)

    def _file(self, name: str) -> str:
        return os.path.join(self.memory_dir, name)

    def pids(self) -> list[int]:
        """Processes in the group now (exited ones are not listed, even unreaped)."""
        return read_pids(self.memory_dir)

    def all_pids(self) -> list[int]:
        """Processes in any of the group's directories (v1: memory and freezer)."""
        if len(self.dirs) == 1:
            return self.pids()
        seen: dict[int, None] = {}
        for d in self.dirs:
            seen.update(dict.fromkeys(read_pids(d)))
        return list(seen)

    def memory_stat(self) -> MemoryStat:
        raise NotImplementedError

    def usage_bytes(self) -> int:
        """Everything charged to the group, page cache included."""
        raise NotImplementedError

    def peak_bytes(self) -> int | None:
        """The kernel's peak of :meth:`usage_bytes`, where it keeps one."""
        raise NotImplementedError

    def oom_kills(self) -> int:
        """Processes of the group the kernel's OOM killer has killed."""
        raise NotImplementedError

    def memory_events(self) -> dict[str, int]:
        """v2 ``memory.events``: how often the group met memory.high ("high"), memory.max
        ("max"), the OOM killer ("oom") and lost a process to it ("oom_kill"); {} on v1."""
        return {}

    def limit_bytes(self) -> int | None:
        """The group's hard limit as the kernel holds it (rounded to pages)."""
        raise NotImplementedError

    def set_limits(self, max_bytes: int, high_bytes: int | None) -> None:
        """Set the hard limit (and, on v2, the throttling level); swap cannot add to it."""
        raise NotImplementedError

    def threshold_eventfd(self, thresholds: list[int]) -> int | None:
        """An fd the kernel makes readable when usage crosses a threshold; None if unsupported."""
        return None

    def _freeze(self) -> bool:
        """Stop every process of the group; True if a thaw is due afterwards."""
        return False

    def _thaw(self) -> None:
        pass

    def _kill_listed(self) -> list[int]:
        pids = self.all_pids()
        for pid in pids:
            _sigkill(pid)
        return pids

    def kill(self, reap: Callable[[], None], timeout_s: float = KILL_TIMEOUT_S) -> int:
        """SIGKILL every process of the group; return once none is left. Returns how many.

        ``reap`` is called while waiting, for the caller to collect its zombies.
        """
        deadline = time.monotonic() + timeout_s
        thaw = self._freeze()
        try:
            killed = set(self._kill_listed())
        finally:
            if thaw:
                self._thaw()  # SIGKILL takes effect once the frozen tasks run again
        delay = 0.0002
        while True:
            reap()
            left = self.all_pids()
            if not left:
                return len(killed)
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"{len(left)} processes of {self.memory_dir} still there {timeout_s:g}s after"
                    f" SIGKILL (stuck in the kernel?): {' '.join(map(str, left[:10]))}"
                )
            killed.update(self._kill_listed())
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def remove(self, timeout_s: float = REMOVE_TIMEOUT_S) -> None:
        """Remove the group's directories, then the ``pmrun`` parents if now empty."""
        for d in self.dirs:
            deadline = time.monotonic() + timeout_s
            delay = 0.0005
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno not in _BUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove {d}: {e.strerror}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        for d in self.dirs:
            remove_if_empty(os.path.dirname(d))


def group_pressure(directory: str) -> dict[str, float] | None:
    """A v2 group's memory PSI (``memory.pressure``): {"some"/"full": avg10 %}; None if none."""
    try:
        return parse_pressure(read_text(os.path.join(directory, "memory.pressure")))
    except OSError:
        return None


def remove_if_empty(directory: str) -> bool:
    """rmdir a parent group unless another agent's group is in it (or it is gone)."""
    try:
        os.rmdir(directory)
        return True
    except OSError:
        return False


class V1Group(AgentGroup):
    """A group in the v1 memory hierarchy, with its twin in the freezer hierarchy if mounted."""

    version = 1

    def __init__(self, memory_dir: str, path: str, freezer_dir: str | None = None) -> None:
        dirs = (memory_dir,) if freezer_dir is None else (memory_dir, freezer_dir)
        super().__init__(memory_dir, path, dirs)
        self.freezer_dir = freezer_dir

    def memory_stat(self) -> MemoryStat:
        return memory_stat_v1(read_text(self._file("memory.stat")))

    def usage_bytes(self) -> int:
        return int(read_text(self._file("memory.usage_in_bytes")))

    def peak_bytes(self) -> int | None:
        return int(read_text(self._file("memory.max_usage_in_bytes")))

    def oom_kills(self) -> int:
        return parse_flat_keyed(read_text(self._file("memory.oom_control"))).get("oom_kill", 0)

    def limit_bytes(self) -> int | None:
        return parse_limit(read_text(self._file("memory.limit_in_bytes")))

    def set_limits(self, max_bytes: int, high_bytes: int | None) -> None:
        # v1 has no throttling level (memory.soft_limit_in_bytes only matters under
        # global pressure); high_bytes is ignored.
        write_file(self._file("memory.limit_in_bytes"), str(max_bytes))
        memsw = self._file("memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # only with swap accounting (swapaccount=1)
            # memory+swap at the same value: swap cannot extend the limit.
            try:
                write_file(memsw, str(max_bytes))
            except OSError:
                pass  # the memory limit alone still holds; swap just is not bounded

    def threshold_eventfd(self, thresholds: list[int]) -> int | None:
        """An eventfd the kernel signals when the group's usage crosses any of ``thresholds``.

        v1's memory thresholds (``cgroup.event_control``): the launcher wakes the moment
        usage crosses a limit instead of at its next sample. Usage includes page cache,
        so a crossing is a reason to sample now, not a verdict. None where unsupported.
        """
        control = os.path.join(self.memory_dir, "cgroup.event_control")
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        try:
            ufd = os.open(self._file("memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                for t in thresholds:
                    write_file(control, f"{efd} {ufd} {t}")
            finally:
                os.close(ufd)  # the kernel holds its own reference once registered
        except OSError:
            os.close(efd)
            return None
        return efd

    def _freezer_state(self) -> str:
        assert self.freezer_dir is not None
        try:
            return read_text(os.path.join(self.freezer_dir, "freezer.state")).strip()
        except FileNotFoundError:  # removed by another cleaner: nothing left to freeze
            return "FROZEN"

    def _freeze(self) -> bool:
        if self.freezer_dir is None:
            return False
        try:
            write_file(os.path.join(self.freezer_dir, "freezer.state"), "FROZEN")
        except FileNotFoundError:
            return False
        # FREEZING until every task has stopped; a task in uninterruptible sleep can hold
        # that up, and is then killed unfrozen (the kill loop catches what it forks).
        _wait_until(lambda: self._freezer_state() == "FROZEN", FREEZE_TIMEOUT_S)
        return True

    def _thaw(self) -> None:
        assert self.freezer_dir is not None
        try:
            write_file(os.path.join(self.freezer_dir, "freezer.state"), "THAWED")
        except FileNotFoundError:
            pass


class V2Group(AgentGroup):
    """A group in the v2 unified hierarchy."""

    version = 2

    def __init__(self, directory: str, path: str) -> None:
        super().__init__(directory, path, (directory,))

    def memory_stat(self) -> MemoryStat:
        try:
            swap: str | None = read_text(self._file("memory.swap.current"))
        except FileNotFoundError:  # no swap accounting (CONFIG_SWAP off)
            swap = None
        return memory_stat_v2(read_text(self._file("memory.stat")), swap)

    def usage_bytes(self) -> int:
        return int(read_text(self._file("memory.current")))

    def peak_bytes(self) -> int | None:
        try:
            return int(read_text(self._file("memory.peak")))
        except FileNotFoundError:  # before Linux 5.19
            return None

    def oom_kills(self) -> int:
        return self.memory_events().get("oom_kill", 0)

    def memory_events(self) -> dict[str, int]:
        return parse_flat_keyed(read_text(self._file("memory.events")))

    def oom_group(self) -> bool:
        """Whether a kernel OOM kill takes the whole group (``memory.oom.group``)."""
        try:
            return read_text(self._file("memory.oom.group")).strip() == "1"
        except FileNotFoundError:  # before Linux 4.19
            return False

    def has_kill_file(self) -> bool:
        """Whether ``cgroup.kill`` (Linux 5.14+) kills the group, forks included."""
        return os.path.exists(self._file("cgroup.kill"))

    def limit_bytes(self) -> int | None:
        return parse_limit(read_text(self._file("memory.max")))

    def set_limits(self, max_bytes: int, high_bytes: int | None) -> None:
        write_file(self._file("memory.max"), str(max_bytes))
        write_file(self._file("memory.high"), "max" if high_bytes is None else str(high_bytes))
        for name, value in (
            ("memory.swap.max", "0"),  # swap would be RAM the hard limit does not bound
            ("memory.oom.group", "1"),  # a kernel OOM kill takes the whole agent, not one process
        ):
            if os.path.exists(self._file(name)):
                write_file(self._file(name), value)

    def events_eventfd(self) -> int | None:
        """An eventfd written each time the kernel changes ``memory.events``; None if not.

        The kernel marks the file for poll(2) (POLLPRI) whenever a counter moves: the
        group went over memory.high or memory.max, or met the OOM killer. A daemon
        thread waits on it and turns each change into one eventfd count, the same kind
        of fd v1's threshold gives, so the launcher's relay reads both alike.
        """
        import _thread
        import select

        try:
            events = os.open(self._file("memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC)
        except (AttributeError, OSError):
            os.close(events)
            return None

        def watch() -> None:
            poller = select.poll()
            poller.register(events, select.POLLPRI)
            try:
                last = os.pread(events, 4096, 0)  # reading re-arms the notification
                while True:
                    for _fd, ev in poller.poll():
                        if ev & select.POLLNVAL:
                            return
                    now = os.pread(events, 4096, 0)
                    if now != last:
                        last = now
                        os.eventfd_write(efd, 1)
                        # Coalesced: a group reading files at memory.high moves "high"
                        # on every reclaim; a wake per change (thousands a second) made
                        # the launcher sample in a loop. Changes meanwhile wake it next.
                        time.sleep(EVENTS_MIN_INTERVAL_S)
            except OSError:  # the group was removed, or the eventfd closed
                return
            finally:
                os.close(events)

        _thread.start_new_thread(watch, ())
        return efd

    def _kill_listed(self) -> list[int]:
        kill_file = self._file("cgroup.kill")
        pids = self.pids()
        try:
            write_file(kill_file, "1")  # Linux 5.14+: the kernel kills them all, forks included
        except FileNotFoundError:
            if not os.path.isdir(self.memory_dir):
                return []
            return super()._kill_listed()
        return pids

    def _freeze(self) -> bool:
        if os.path.exists(self._file("cgroup.kill")):
            return False  # cgroup.kill needs no freeze
        try:
            write_file(self._file("cgroup.freeze"), "1")
        except FileNotFoundError:  # before Linux 5.2: the kill loop alone
            return False
        _wait_until(
            lambda: parse_flat_keyed(read_text(self._file("cgroup.events"))).get("frozen") == 1,
            FREEZE_TIMEOUT_S,
        )
        return True

    def _thaw(self) -> None:
        try:
            write_file(self._file("cgroup.freeze"), "0")
        except FileNotFoundError:
            pass


# -- creating a group ---------------------------------------------------------------------


def _mkdir(path: str, *, exist_ok: bool) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        if not exist_ok:
            raise


def _fail_create(where: str, e: OSError) -> CgroupError:
    hint = ""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        # The supported way for a user on a systemd host: a scope of their own, delegated.
        hint = " (not delegated to this user: run `systemd-run --user --scope -p Delegate=yes pmrun ...`)"
    return CgroupError(f"cannot create a cgroup under {where}: {e.strerror}{hint}")


def _make_child(parent: str, name: str, prepare: Callable[[], None] | None = None) -> str:
    """mkdir ``parent`` (if need be) and ``parent/name``; retried if another pmrun removed
    the empty parent in between."""
    child = os.path.join(parent, name)
    for attempt in range(5):
        try:
            _mkdir(parent, exist_ok=True)
            if prepare is not None:
                prepare()
            _mkdir(child, exist_ok=False)
            return child
        except FileNotFoundError as e:
            if attempt == 4 or not os.path.isdir(os.path.dirname(parent)):
                raise _fail_create(parent, e) from None
        except OSError as e:
            raise _fail_create(parent, e) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _controllers(path: str) -> list[str]:
    return read_text(path).split()


def evacuate(base: str, leaf_name: str = LAUNCHER_LEAF) -> str:
    """Move every process of ``base`` into the leaf ``base/<leaf_name>``; return the leaf.

    cgroup v2's no-internal-process rule: a group other than the root can give a
    controller to its children only while it holds no process itself. This is what a
    delegated group (a container's, a ``systemd-run --scope``'s) must do before it can
    be subdivided; the processes stay inside it, so its limits still apply to them.
    """
    leaf = os.path.join(base, leaf_name)
    _mkdir(leaf, exist_ok=True)
    target = os.path.join(leaf, "cgroup.procs")
    for _ in range(100):  # processes may fork while we move them
        pids = read_pids(base)
        if not pids:
            return leaf
        for pid in pids:
            try:
                write_file(target, str(pid))
            except ProcessLookupError:
                continue
            except OSError as e:
                if e.errno == errno.ESRCH:
                    continue
                raise CgroupError(
                    f"cannot move process {pid} out of {base} into {leaf}: {e.strerror}"
                ) from None
    raise CgroupError(f"processes keep appearing in {base}: cannot empty it")


def enable_controller(base: str, parent: str, controller: str = "memory") -> None:
    """Make ``controller`` available to the groups created in ``parent`` (a child of ``base``).

    Both ``base`` and ``parent`` must list it in ``cgroup.subtree_control``; enabling it
    in ``base`` while ``base`` holds processes fails with EBUSY, and then those are
    moved into a leaf first (see :func:`evacuate`).
    """
    sc = os.path.join(base, "cgroup.subtree_control")
    try:
        if controller not in _controllers(sc):
            try:
                write_file(sc, f"+{controller}")
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                evacuate(base)
                write_file(sc, f"+{controller}")
        _mkdir(parent, exist_ok=True)
        psc = os.path.join(parent, "cgroup.subtree_control")
        if controller not in _controllers(psc):
            write_file(psc, f"+{controller}")
    except FileNotFoundError:
        raise  # the parent vanished under us: _make_child retries
    except OSError as e:
        raise CgroupError(
            f"cannot enable the {controller} controller under {base}: {e.strerror}"
        ) from None


def create_group(layout: Layout, name: str) -> AgentGroup:
    """Create the group ``name`` under pmrun's parent group(s). Raises :class:`CgroupError`.

    On v1 the freezer twin is optional: where it cannot be made, kills fall back to
    repeated SIGKILL rounds (slower against a fork loop, and still complete).
    """
    path = layout.parent_path + "/" + name
    if layout.version == 1:
        memory_dir = _make_child(layout.memory_parent, name)
        freezer_dir = None
        if layout.freezer_parent is not None:
            try:
                freezer_dir = _make_child(layout.freezer_parent, name)
            except CgroupError:
                freezer_dir = None
        return V1Group(memory_dir, path, freezer_dir)
    parent = layout.memory_parent
    directory = _make_child(
        parent, name, prepare=lambda: enable_controller(layout.base_dir, parent)
    )
    return V2Group(directory, path)


def open_group(layout: Layout, name: str) -> AgentGroup:
    """The existing group ``name`` under pmrun's parent(s) (no check that it exists)."""
    path = layout.parent_path + "/" + name
    memory_dir = os.path.join(layout.memory_parent, name)
    if layout.version == 2:
        return V2Group(memory_dir, path)
    freezer_dir = None
    if layout.freezer_parent is not None:
        candidate = os.path.join(layout.freezer_parent, name)
        freezer_dir = candidate if os.path.isdir(candidate) else None
    return V1Group(memory_dir, path, freezer_dir)
