"""Pure parsers for the files cgroups are found and read through: text in, values out.

No I/O here, so every edge case is a table in ``tests/test_cgroups_parse.py``. Sizes
come out in bytes. Plain classes rather than dataclasses: this module is on the
launch path of every agent (see ``pmrun.backends.base``).
"""

from __future__ import annotations

# cgroup v1 says "no limit" with a page-aligned number just under 2**63; anything this
# big is no limit a machine could reach.
UNLIMITED_V1 = 1 << 62

# Characters an agent id may hold (the launcher sanitises names to them) and its length.
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_AGENT_ID = 200  # leaves room for "@<pid>.<start>" under NAME_MAX (255)


class Mount:
    """One cgroup hierarchy mounted in this mount namespace (a line of mountinfo)."""

    __slots__ = ("mount_point", "root", "version", "options")

    def __init__(self, mount_point: str, root: str, version: int, options: frozenset[str]) -> None:
        self.mount_point = mount_point  # where it is mounted, e.g. /sys/fs/cgroup/memory
        self.root = root  # the hierarchy's directory mounted there: "/" or e.g. /docker/<id>
        self.version = version  # 1 (cgroup) or 2 (cgroup2)
        self.options = options  # super options; v1 controllers are among them ("memory", ...)

    def __repr__(self) -> str:
        return f"Mount({self.mount_point!r}, root={self.root!r}, v{self.version})"


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` is a space) for space, tab, newline, backslash."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        c = field[i]
        code = field[i + 1 : i + 4]
        if c == "\\" and len(code) == 3 and all(d in "01234567" for d in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of ``/proc/self/mountinfo``, in file order.

    A line is ``id parent maj:min root mount-point options [optional...] - fstype source
    super-options``; the optional fields vary in number, so fields after them are found
    from the ``-`` separator.
    """
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 2 or len(fields) < 5:
            continue
        fstype = fields[sep + 1]
        if fstype == "cgroup2":
            version = 2
        elif fstype == "cgroup":
            version = 1
        else:
            continue
        super_opts = fields[sep + 3] if len(fields) > sep + 3 else ""
        mounts.append(
            Mount(
                _unescape(fields[4]),
                _unescape(fields[3]),
                version,
                frozenset(o for o in super_opts.split(",") if o),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """``/proc/PID/cgroup`` as ({v1 controller: path}, v2 path or None).

    v1 lines are ``id:controller,controller:path`` (named hierarchies appear as
    ``name=systemd``); the v2 line is ``0::path``. A path may itself hold colons.
    """
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier_id, controllers, path = parts
        if hier_id == "0" and controllers == "":
            v2 = path
            continue
        for c in controllers.split(","):
            if c:
                v1[c] = path
    return v1, v2


def dir_in_mount(mount: Mount, cgroup_path: str) -> str | None:
    """The directory under ``mount`` of the cgroup at ``cgroup_path`` (as /proc says), or None.

    Without a cgroup namespace a container sees its own group bind-mounted: the mount's
    root is ``/docker/<id>`` and /proc/self/cgroup says ``/docker/<id>/...``, so the
    root is cut off. A path outside the mounted root (``/..`` from a foreign cgroup
    namespace, or another container's) is not reachable here.
    """
    if not cgroup_path.startswith("/"):
        return None
    if mount.root == "/":
        rel = cgroup_path
    elif cgroup_path == mount.root:
        rel = "/"
    elif cgroup_path.startswith(mount.root + "/"):
        rel = cgroup_path[len(mount.root) :]
    else:
        return None
    if "/../" in rel + "/":
        return None
    base = mount.mount_point.rstrip("/") or "/"
    return base if rel == "/" else base.rstrip("/") + rel


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, memory.events, memory.oom_control, cgroup.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key and value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def parse_pressure(text: str) -> dict[str, float]:
    """A PSI file (``memory.pressure``, /proc/pressure/memory) as {"some"/"full": avg10 %}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for pair in rest.split():
            key, _, value = pair.partition("=")
            if key == "avg10":
                try:
                    out[kind] = float(value)
                except ValueError:
                    pass
    return out


def parse_limit(text: str) -> int | None:
    """A limit file (memory.max, memory.high, memory.limit_in_bytes) in bytes; None for no limit."""
    value = text.strip()
    if value == "max" or value == "":
        return None
    n = int(value)
    return None if n >= UNLIMITED_V1 else n


def tightest(limits: list[int | None]) -> int | None:
    """The smallest of some limits, ignoring "no limit"."""
    real = [x for x in limits if x is not None]
    return min(real) if real else None


class MemoryStat:
    """What pmrun reads from a group's memory.stat, the same way for v1 and v2. Bytes."""

    __slots__ = ("anon_bytes", "shmem_bytes", "swap_bytes", "file_bytes", "inactive_file_bytes")

    def __init__(
        self,
        anon_bytes: int,
        shmem_bytes: int,
        swap_bytes: int,
        file_bytes: int,
        inactive_file_bytes: int,
    ) -> None:
        self.anon_bytes = anon_bytes  # anonymous pages, transparent huge pages included
        self.shmem_bytes = shmem_bytes  # tmpfs, /dev/shm, MAP_SHARED|MAP_ANONYMOUS
        self.swap_bytes = swap_bytes  # swapped out
        self.file_bytes = file_bytes  # page cache, shmem excluded
        self.inactive_file_bytes = inactive_file_bytes  # the page cache reclaimed first

    @property
    def counted_bytes(self) -> int:
        """What pmrun checks its limits against: memory the kernel cannot drop.

        Anonymous memory, shared memory and swap. Page cache is left out: the kernel
        reclaims it at the group's limit instead of failing an allocation.
        """
        return self.anon_bytes + self.shmem_bytes + self.swap_bytes

    def __repr__(self) -> str:
        return (
            f"MemoryStat(anon={self.anon_bytes}, shmem={self.shmem_bytes}, swap={self.swap_bytes},"
            f" file={self.file_bytes})"
        )


def memory_stat_v1(text: str) -> MemoryStat:
    """memory.stat of a v1 group, with its descendants (the ``total_`` keys).

    In v1, ``rss`` is anonymous memory including transparent huge pages (``rss_huge`` is
    a part of it, not an addition); ``cache`` includes ``shmem``.
    """
    s = parse_flat_keyed(text)
    shmem = s.get("total_shmem", s.get("shmem", 0))
    return MemoryStat(
        anon_bytes=s.get("total_rss", s.get("rss", 0)),
        shmem_bytes=shmem,
        swap_bytes=s.get("total_swap", s.get("swap", 0)),
        file_bytes=max(0, s.get("total_cache", s.get("cache", 0)) - shmem),
        inactive_file_bytes=s.get("total_inactive_file", s.get("inactive_file", 0)),
    )


def memory_stat_v2(text: str, swap_current: str | None) -> MemoryStat:
    """memory.stat of a v2 group (always hierarchical) and its memory.swap.current.

    In v2, ``file`` includes ``shmem``; ``anon`` includes transparent huge pages.
    """
    s = parse_flat_keyed(text)
    shmem = s.get("shmem", 0)
    swap = int(swap_current) if swap_current and swap_current.strip().isdigit() else 0
    return MemoryStat(
        anon_bytes=s.get("anon", 0),
        shmem_bytes=shmem,
        swap_bytes=swap,
        file_bytes=max(0, s.get("file", 0) - shmem),
        inactive_file_bytes=s.get("inactive_file", 0),
    )


# -- pmrun's group names --------------------------------------------------------------


def valid_agent_id(agent_id: str) -> bool:
    """Whether ``agent_id`` is ``[A-Za-z0-9_.-]{1,200}`` (what the launcher makes of a name)."""
    return 0 < len(agent_id) <= MAX_AGENT_ID and all(c in _ID_CHARS for c in agent_id)


def group_name(agent_id: str, launcher_pid: int, launcher_start: int) -> str:
    """The name of an agent's group: ``<agent-id>@<launcher pid>.<launcher start time>``.

    The launcher's pid and start time (clock ticks after boot, /proc/PID/stat field 22)
    name the process that owns the group: when no live process has both, the group is
    an orphan. ``@`` cannot occur in an agent id, so the name parses back unambiguously.
    """
    if not valid_agent_id(agent_id):
        raise ValueError(f"agent id {agent_id!r} is not [A-Za-z0-9_.-]{{1,{MAX_AGENT_ID}}}")
    return f"{agent_id}@{launcher_pid}.{launcher_start}"


def parse_group_name(name: str) -> tuple[str, int, int] | None:
    """(agent id, launcher pid, launcher start) of a pmrun group name; None for any other name."""
    agent_id, at, owner = name.rpartition("@")
    if not at or not valid_agent_id(agent_id):
        return None
    pid_s, dot, start_s = owner.partition(".")
    if not dot or not pid_s.isdigit() or not start_s.isdigit() or not pid_s.isascii():
        return None
    if not start_s.isascii() or pid_s.startswith("0"):
        return None
    return agent_id, int(pid_s), int(start_s)


# -- the kernel log (/dev/kmsg) ---------------------------------------------------------


def kmsg_text(record: bytes) -> str:
    """The message of one /dev/kmsg record (``prio,seq,usec,flags;message``, then
    continuation lines starting with a space, which are dropped)."""
    text = record.decode("utf-8", "replace")
    head, semi, rest = text.partition(";")
    if not semi or "," not in head:
        return text.rstrip("\n")
    return rest.split("\n", 1)[0]


def parse_oom_kill(message: str) -> tuple[str, str, int, str] | None:
    """(oom memcg, task memcg, pid, comm) of the kernel's ``oom-kill:`` summary line.

    ``oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
    oom_memcg=/a/b,task_memcg=/a/b,task=python3,pid=5829,uid=0``. Cgroup paths and the
    command name may hold commas, so the fields are cut from both ends.
    """
    if not message.startswith("oom-kill:"):
        return None
    head, sep, uid = message.rpartition(",uid=")
    if not sep:
        return None
    head, sep, pid_s = head.rpartition(",pid=")
    if not sep or not pid_s.isdigit():
        return None
    head, sep, comm = head.rpartition(",task=")
    if not sep:
        return None
    head, sep, task_memcg = head.rpartition(",task_memcg=")
    if not sep:
        return None
    _, sep, oom_memcg = head.rpartition(",oom_memcg=")
    return (oom_memcg if sep else "", task_memcg, int(pid_s), comm)


def parse_oom_group_kill(message: str) -> str | None:
    """The group of ``Tasks in /a/b are going to be killed due to memory.oom.group set``."""
    head, tail = "Tasks in ", " are going to be killed due to memory.oom.group set"
    if message.startswith(head) and message.endswith(tail):
        return message[len(head) : -len(tail)]
    return None


def parse_killed_process(message: str) -> tuple[int, str, int] | None:
    """(pid, comm, anon RSS in bytes) of ``...: Killed process 5829 (python3) total-vm:..kB,
    anon-rss:204288kB, ...``."""
    marker = "Killed process "
    at = message.find(marker)
    if at < 0:
        return None
    rest = message[at + len(marker) :]
    pid_s, _, rest = rest.partition(" (")
    if not pid_s.isdigit():
        return None
    comm, sep, rest = rest.rpartition(") total-vm:")
    if not sep:
        comm, _, rest = rest.partition(")")
    anon = 0
    key = "anon-rss:"
    i = rest.find(key)
    if i >= 0:
        digits = rest[i + len(key) :].split("kB", 1)[0]
        if digits.isdigit():
            anon = int(digits) * 1024
    return int(pid_s), comm, anon
