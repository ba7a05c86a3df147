"""The simulated small machine: one memory cgroup with a fixed limit around a whole session.

Everything the session starts inherits the group, so when the group reaches its limit the
kernel's OOM killer acts inside it exactly as it would on a machine of that size, and the
host is never at risk. cgroup v1 (``/sys/fs/cgroup/memory``) is used where it is mounted,
else cgroup v2 with the memory controller. All sizes are bytes.

The machine group is created under the cgroup the harness itself runs in (read from
``/proc/self/cgroup``), so it works inside containers and delegated hierarchies.
``close()`` kills every process of the group and of every group nested under it, then
removes them bottom-up: nothing outlives an arm.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

V1_ROOT = "/sys/fs/cgroup/memory"
V2_ROOT_CANDIDATES = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-aligned number


class SimMachineError(Exception):
    """The simulated machine cannot be created here; the message says why."""


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path for ``controller`` (v1), or the v2 path (``None``)."""
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if controller is None and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    raise SimMachineError(f"no {controller or 'cgroup2'} line in /proc/self/cgroup")


def detect() -> tuple[str, str]:
    """Return (version, parent directory) where a machine group can be made.

    Raises :class:`SimMachineError` with the reason when neither v1 memory nor v2 with
    the memory controller is writable.
    """
    if os.path.isfile(os.path.join(V1_ROOT, "memory.limit_in_bytes")):
        parent = V1_ROOT + _own_cgroup("memory")
        if os.access(parent, os.W_OK):
            return "v1", parent.rstrip("/")
        raise SimMachineError(f"{parent} is not writable (run as root)")
    for root in V2_ROOT_CANDIDATES:
        controllers = os.path.join(root, "cgroup.controllers")
        if os.path.isfile(controllers) and "memory" in _read(controllers).split():
            parent = root + _own_cgroup(None)
            if os.access(parent, os.W_OK):
                return "v2", parent.rstrip("/")
            raise SimMachineError(f"{parent} is not writable (run as root)")
    raise SimMachineError("no cgroup v1 memory hierarchy and no cgroup v2 memory controller")


@dataclass(frozen=True)
class MemoryReading:
    """The machine group at one instant (bytes)."""

    usage_bytes: int  # charged memory: anon + page cache (+ kernel memory on v2)
    anon_bytes: int  # anonymous memory of the whole hierarchy (v1 total_rss, v2 anon)


class SimMachine:
    """A memory cgroup of ``limit_bytes`` standing for a small machine.

    ``join_path`` is where a process must be placed (``preexec``) to run "on" the machine.
    On v2 that is a leaf ``session`` group, because a v2 group with children may not hold
    processes itself.
    """

    def __init__(self, limit_bytes: int, name: str | None = None) -> None:
        self.version, parent = detect()
        self.limit_bytes = limit_bytes
        self.path = os.path.join(parent, name or f"fleet-bench-{os.getpid()}")
        if os.path.exists(self.path):
            kill_tree(self.path)
            remove_tree(self.path)
        root = (
            V1_ROOT
            if self.version == "v1"
            else max((r for r in V2_ROOT_CANDIDATES if self.path.startswith(r + "/")), key=len)
        )
        # The group's name as the kernel prints it in OOM messages (oom_memcg=/...).
        self.kernel_name = self.path[len(root) :]
        os.mkdir(self.path)
        try:
            if self.version == "v1":
                _write(os.path.join(self.path, "memory.limit_in_bytes"), str(limit_bytes))
                memsw = os.path.join(self.path, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _write(memsw, str(limit_bytes))  # no swap beyond the machine's memory
                self.join_path = self.path
            else:
                _write(os.path.join(self.path, "memory.max"), str(limit_bytes))
                swap = os.path.join(self.path, "memory.swap.max")
                if os.path.exists(swap):
                    _write(swap, "0")
                _write(os.path.join(self.path, "cgroup.subtree_control"), "+memory")
                self.join_path = os.path.join(self.path, "session")
                os.mkdir(self.join_path)
        except OSError:
            remove_tree(self.path)
            raise
        self.oom_kills_at_start = self.oom_kills()

    # -- placing processes --------------------------------------------------------

    def preexec(self) -> None:
        """For ``subprocess.Popen(preexec_fn=...)``: move the child into the machine."""
        join(self.join_path)

    def child_group(self, name: str, limit_bytes: int | None) -> str:
        """Make a group under the machine (a per-agent kernel limit); returns its path."""
        path = os.path.join(self.path, name)
        make_group(path, self.version, limit_bytes)
        return path

    # -- reading ------------------------------------------------------------------

    def reading(self) -> MemoryReading:
        if self.version == "v1":
            usage = int(_read(os.path.join(self.path, "memory.usage_in_bytes")))
            stat = _stat(os.path.join(self.path, "memory.stat"))
            return MemoryReading(usage, stat.get("total_rss", 0))  # rss includes rss_huge
        usage = int(_read(os.path.join(self.path, "memory.current")))
        stat = _stat(os.path.join(self.path, "memory.stat"))
        return MemoryReading(usage, stat.get("anon", 0))

    def peak_bytes(self) -> int | None:
        """The kernel's own high-water mark of the group (v1; v2 from kernel 5.19)."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        try:
            return int(_read(os.path.join(self.path, name)))
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """Kernel OOM kills in the machine and every group under it (hierarchical)."""
        return oom_kills(self.path, self.version)

    def pids(self) -> list[int]:
        """Every process in the machine, nested groups included."""
        return list(tree_pids(self.path))

    # -- the end ------------------------------------------------------------------

    def close(self) -> None:
        """Kill everything in the machine and remove its groups."""
        kill_tree(self.path)
        remove_tree(self.path)


# -- module-level helpers, usable from inside the session too ------------------------


def join(path: str) -> None:
    """Move the calling process into the group at ``path`` (safe in a preexec_fn)."""
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def make_group(path: str, version: str, limit_bytes: int | None) -> None:
    os.mkdir(path)
    if limit_bytes is None:
        return
    if version == "v1":
        _write(os.path.join(path, "memory.limit_in_bytes"), str(limit_bytes))
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            _write(memsw, str(limit_bytes))
    else:
        _write(os.path.join(path, "memory.max"), str(limit_bytes))


def oom_kills(path: str, version: str) -> int:
    """The group's OOM-kill counter. v1 ``oom_control`` counts kills of the group's own
    tasks only, so nested groups are added; v2 ``memory.events`` is already hierarchical."""
    if version == "v2":
        try:
            return _stat(os.path.join(path, "memory.events")).get("oom_kill", 0)
        except OSError:
            return 0
    total = 0
    for group in _walk(path):
        try:
            total += _stat(os.path.join(group, "memory.oom_control")).get("oom_kill", 0)
        except OSError:
            continue
    return total


def tree_pids(path: str) -> Iterator[int]:
    for group in _walk(path):
        try:
            text = _read(os.path.join(group, "cgroup.procs"))
        except OSError:
            continue
        for line in text.split():
            yield int(line)


def kill_tree(path: str, timeout_s: float = 10.0) -> int:
    """SIGKILL every process in ``path`` and its nested groups until none is left.

    Returns how many kills were sent. Loops because a process may fork between the read
    of ``cgroup.procs`` and the kill; ``cgroup.kill`` (v2, 5.14+) is used where present.
    """
    if not os.path.isdir(path):
        return 0
    kill_file = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill_file):
        try:
            _write(kill_file, "1")
        except OSError:
            pass
    sent = 0
    deadline = time.monotonic() + timeout_s
    while True:
        pids = list(tree_pids(path))
        if not pids:
            return sent
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                sent += 1
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise SimMachineError(f"processes still in {path} after {timeout_s}s: {pids}")
        time.sleep(0.02)  # zombies leave cgroup.procs once reaped (by their parent or init)


def remove_tree(path: str, timeout_s: float = 10.0) -> None:
    """rmdir ``path`` and its nested groups, deepest first (they must be empty)."""
    if not os.path.isdir(path):
        return
    groups = sorted(_walk(path), key=lambda p: p.count("/"), reverse=True)
    deadline = time.monotonic() + timeout_s
    for group in groups:
        while True:
            try:
                os.rmdir(group)
                break
            except FileNotFoundError:
                break
            except OSError:
                # EBUSY while the last task's exit is still being accounted.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def _walk(path: str) -> Iterator[str]:
    """``path`` and every group below it (cgroup directories hold no regular subdirs)."""
    stack = [path]
    while stack:
        p = stack.pop()
        yield p
        try:
            entries = os.scandir(p)
        except OSError:
            continue
        with entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)


def _stat(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out
