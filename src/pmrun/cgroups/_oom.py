"""Which process the kernel's OOM killer chose in a group, from the kernel log.

The group's counter (v1 ``memory.oom_control``, v2 ``memory.events``) says how many
processes were killed, not which. The kernel names each victim in its log
(``oom-kill:...,task_memcg=/x/pmrun/a@1.2,task=python3,pid=5829,uid=0``), which
/dev/kmsg serves to root (and to anyone where ``kernel.dmesg_restrict=0``). The log is
opened at the end when the group is created and read only when the counter moved,
so an agent that never meets the OOM killer costs nothing.
"""

from __future__ import annotations

import errno
import os

from ._parse import kmsg_text, parse_killed_process, parse_oom_group_kill, parse_oom_kill

KMSG = "/dev/kmsg"


class OomKill:
    """One kernel OOM kill in the group; fields are None where the log could not tell."""

    __slots__ = ("pid", "comm", "anon_rss_bytes")

    def __init__(self, pid: int | None, comm: str | None, anon_rss_bytes: int | None) -> None:
        self.pid = pid  # as the kernel numbers it (the host's pid namespace)
        self.comm = comm  # the process's name (comm, at most 15 characters)
        self.anon_rss_bytes = anon_rss_bytes  # its anonymous RSS when killed

    def __repr__(self) -> str:
        return f"OomKill(pid={self.pid}, comm={self.comm!r}, anon_rss_bytes={self.anon_rss_bytes})"

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "comm": self.comm, "anon_rss_bytes": self.anon_rss_bytes}


def in_group(memcg: str, group_path: str) -> bool:
    """Whether the kernel's ``memcg`` path is the group or below it.

    The kernel prints paths from the hierarchy's root, /proc/self/cgroup from our cgroup
    namespace's; the group's own name (with its launcher pid and start time) is unique,
    so the kernel's path is matched on its tail.
    """
    if memcg == group_path or (group_path + "/") in memcg:
        return True
    return group_path.startswith("/") and memcg.endswith(group_path)


class OomLog:
    """Reads the kernel log for OOM kills in one group."""

    def __init__(self, group_path: str, kmsg: str = KMSG) -> None:
        self.group_path = group_path
        self._victims: dict[int, OomKill] = {}  # by pid, in the order the kernel chose them
        self._group_kill = False  # the log is in a memory.oom.group kill of this group
        try:
            self._fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = -1  # not root and dmesg_restrict=1, or no /dev/kmsg in a container

    @property
    def readable(self) -> bool:
        return self._fd >= 0

    def _read_new(self) -> list[str]:
        out: list[str] = []
        while self._fd >= 0:
            try:
                record = os.read(self._fd, 8192)  # one record per read
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them
                    continue
                break
            if not record:
                break
            # One record per read from /dev/kmsg; continuation lines (" KEY=value")
            # are dropped. Splitting lines also reads a saved log (tests).
            out.extend(
                kmsg_text(line)
                for line in record.split(b"\n")
                if line and not line.startswith(b" ")
            )
        return out

    def update(self, count: int) -> list[OomKill]:
        """The group's kills, given the kernel's ``count`` of them: one entry per kill."""
        if count > 0 and (
            count > len(self._victims)
            or any(v.anon_rss_bytes is None for v in self._victims.values())
        ):
            # The counter moves before the "Killed process" line is logged: a victim's
            # RSS may come in a later read.
            for message in self._read_new():
                oom = parse_oom_kill(message)
                if oom is not None:
                    self._group_kill = False
                    if in_group(oom[1], self.group_path):
                        self._victims.setdefault(oom[2], OomKill(oom[2], oom[3], None))
                    continue
                tasks = parse_oom_group_kill(message)
                if tasks is not None:
                    # memory.oom.group: the kernel kills every task of the group next.
                    self._group_kill = in_group(tasks, self.group_path)
                    continue
                killed = parse_killed_process(message)
                if killed is None:
                    continue
                pid, comm, anon = killed
                if pid in self._victims:
                    self._victims[pid].anon_rss_bytes = anon
                elif self._group_kill:
                    self._victims[pid] = OomKill(pid, comm, anon)
        kills = list(self._victims.values())
        while len(kills) < count:
            kills.append(OomKill(None, None, None))
        return kills

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
