"""What holds an agent's memory: per-process figures of its tree, and its Python heaps.

Any agent gets a per-process breakdown from ``/proc/PID/smaps_rollup`` (RSS, PSS, USS and
swap): PSS splits a shared page among its sharers, USS is what only that process holds and
would free on exit. Python services in the agent (``pmrun.client``) also answer a ``heap``
request with their biggest object types (:func:`count_types`) and, under
``pmrun --trace-heap``, their biggest allocation sites; :func:`answer_lines` turns those
answers into text.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .. import _procfs
from ..sizes import format_size


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory, in bytes."""

    pid: int
    name: str
    rss_bytes: int  # resident, shared pages counted in full
    pss_bytes: int  # proportional: a page shared by N processes counts 1/N
    uss_bytes: int  # unique: private pages, freed if the process exits
    swap_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Breakdown:
    """The processes that could be read, biggest PSS first, and those that could not."""

    processes: tuple[ProcessMemory, ...]
    unreadable: tuple[int, ...]  # pids we may not read (another user's, without root)

    @property
    def total(self) -> ProcessMemory:
        p = self.processes
        return ProcessMemory(
            0,
            "total",
            sum(x.rss_bytes for x in p),
            sum(x.pss_bytes for x in p),
            sum(x.uss_bytes for x in p),
            sum(x.swap_bytes for x in p),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "processes": [p.to_dict() for p in self.processes],
            "total": {k: v for k, v in self.total.to_dict().items() if k.endswith("_bytes")},
            "unreadable": list(self.unreadable),
        }


def process_memory(pid: int, proc: str = _procfs.PROC) -> ProcessMemory:
    """One process's figures; raises :class:`~pmrun._procfs.ProcessGone` if it exited."""
    rollup = _procfs.smaps_rollup(pid, proc)
    uss = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return ProcessMemory(
        pid=pid,
        name=_procfs.comm(pid, proc),
        rss_bytes=rollup.get("Rss", 0),
        pss_bytes=rollup.get("Pss", 0),
        uss_bytes=uss,
        swap_bytes=rollup.get("Swap", 0),
    )


def breakdown(pids: list[int], proc: str = _procfs.PROC) -> Breakdown:
    """The figures of ``pids``; processes that exit meanwhile are left out."""
    rows: list[ProcessMemory] = []
    unreadable: list[int] = []
    for pid in dict.fromkeys(pids):
        try:
            rows.append(process_memory(pid, proc))
        except _procfs.ProcessGone:
            continue
        except PermissionError:
            unreadable.append(pid)
    rows.sort(key=lambda r: (r.pss_bytes, r.rss_bytes), reverse=True)
    return Breakdown(tuple(rows), tuple(unreadable))


def tree_breakdown(root_pid: int, proc: str = _procfs.PROC) -> Breakdown:
    """The figures of ``root_pid`` and all its descendants."""
    return breakdown(_procfs.descendants([root_pid], proc), proc)


def breakdown_table(b: Breakdown) -> list[list[str]]:
    """Rows for a table: header, one row per process, the total."""
    rows = [["PID", "NAME", "RSS", "PSS", "USS", "SWAP"]]
    for p in (*b.processes, b.total):
        rows.append(
            [
                str(p.pid) if p.pid else "",
                p.name,
                format_size(p.rss_bytes),
                format_size(p.pss_bytes),
                format_size(p.uss_bytes),
                format_size(p.swap_bytes),
            ]
        )
    return rows


def agent_pids(launcher_pid: int, proc: str = _procfs.PROC) -> list[int]:
    """The processes of the agent whose launcher is ``launcher_pid``, pmrun's own left out.

    The launcher forks a keeper (same command line, no exec) that is the command's parent
    and the subreaper of everything below; the agent's tree is what is below the keeper.
    """
    try:
        launcher_cmd = _procfs.cmdline(launcher_pid, proc)
        kids = _procfs.children(launcher_pid, proc)
    except _procfs.ProcessGone:
        return []
    roots: list[int] = []
    for kid in kids:
        try:
            if _procfs.cmdline(kid, proc) == launcher_cmd:
                roots.extend(_procfs.children(kid, proc))  # the keeper
            else:
                roots.append(kid)
        except _procfs.ProcessGone:
            continue
    return _procfs.descendants(roots, proc)


def table_lines(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text: the second column (a name) left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i != 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


COUNTED = "gc+referents"  # what count_types counts, as a heap answer says in "counted"


_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})  # where caches keep their atoms
_ATOM_HOLDERS = (tuple, dict, frozenset)  # untracked only while holding nothing but atoms


def count_types(
    limit: int = 20, budget_s: float = 4.0, clock: Callable[[], float] = time.monotonic
) -> dict[str, Any]:
    """The biggest object types of this process: count and bytes (``sys.getsizeof`` of each
    object alone), ``limit`` types, walking for at most ``budget_s``.

    The garbage collector tracks only containers, so ``gc.get_objects()`` alone misses
    every ``str``, ``bytes``, ``int`` and ``float`` (and tuples and dicts of only those,
    which it stops tracking): a prompt cache holding 50 MB of strings was invisible. So
    after the tracked objects, the untracked objects they refer to are counted too, each
    once (by identity): first those held by dicts, lists, tuples and sets, then by
    everything else, for as long as the budget lasts (``untracked_complete`` says whether it
    did). Memory outside Python objects is not seen: ``--trace-heap`` and RSS show it.
    """
    t0 = clock()
    counts: dict[type, int] = {}
    sizes: dict[type, int] = {}
    getsizeof = sys.getsizeof

    def add(obj: object) -> None:
        t = type(obj)
        counts[t] = counts.get(t, 0) + 1
        try:
            sizes[t] = sizes.get(t, 0) + getsizeof(obj)
        except Exception:  # a broken __sizeof__
            pass

    objects = gc.get_objects()
    walked, truncated = 0, False
    for i, obj in enumerate(objects):
        add(obj)
        walked = i + 1
        if not i & 0x3FFF and clock() - t0 > budget_s:
            truncated = walked < len(objects)
            break
    complete = not truncated and _count_untracked(objects, add, t0, budget_s, clock)
    del objects
    top = sorted(counts, key=lambda t: (sizes.get(t, 0), counts[t]), reverse=True)[:limit]
    types = [
        {
            "type": f"{t.__module__}.{t.__qualname__}"[:200],
            "count": counts[t],
            "bytes": sizes.get(t, 0),
        }
        for t in top
    ]
    return {
        "objects": walked,
        "types": types,
        "truncated": truncated,
        "counted": COUNTED,
        "untracked_complete": complete,
    }


def _count_untracked(
    objects: list[Any],
    add: Callable[[object], None],
    t0: float,
    budget_s: float,
    clock: Callable[[], float],
) -> bool:
    """Count the untracked referents of ``objects``; False if the budget ran out first."""
    get_referents, is_tracked = gc.get_referents, gc.is_tracked
    seen: set[int] = set()
    n = 0
    for containers_first in (True, False):
        for obj in objects:
            if (type(obj) in _CONTAINERS) is not containers_first:
                continue
            stack = list(get_referents(obj))
            while stack:
                ref = stack.pop()
                if is_tracked(ref) or id(ref) in seen or isinstance(ref, type):
                    continue
                seen.add(id(ref))
                add(ref)
                if isinstance(ref, _ATOM_HOLDERS):
                    stack.extend(get_referents(ref))
                n += 1
                if not n & 0xFFF and clock() - t0 > budget_s:
                    return False  # one huge list of strings stops here too
            n += 1
            if not n & 0x3FF and clock() - t0 > budget_s:
                return False
    return True


def answer_lines(answer: dict[str, Any]) -> list[str]:
    """A Python service process's ``heap`` answer (see ``pmrun.client.heap_summary``) as text."""
    services = ", ".join(str(s) for s in answer.get("services") or []) or "?"
    head = f"pid {answer.get('pid', '?')} (services: {services}"
    head += f"; agent {answer['agent']})" if answer.get("agent") else ")"
    if answer.get("error"):
        return [f"{head}: {answer['error']}"]
    walked = f"{answer.get('objects', 0):,} objects walked in {answer.get('seconds', 0):.2f}s"
    if answer.get("truncated"):
        walked += " (stopped early: time budget)"
    lines = [f"{head}: RSS {format_size(answer.get('rss_bytes'))}, {walked}"]
    types = answer.get("types") or []
    if types:
        rows = [["SIZE", "TYPE", "COUNT"]]
        rows += [
            [format_size(t.get("bytes", 0)), str(t.get("type", "?")), f"{t.get('count', 0):,}"]
            for t in types
        ]
        if answer.get("counted") == COUNTED:
            what = "each object alone; str, bytes and numbers in containers included"
            if answer.get("untracked_complete") is False:
                what += ", in part: time budget"
        else:  # a service of an older pmrun walked gc-tracked objects only
            what = "gc-tracked containers only: str, bytes and numbers NOT counted"
        lines += [f"  biggest object types ({what}):"]
        lines += ["    " + line for line in table_lines(rows)]
    sites = answer.get("sites") or []
    if sites:
        rows = [["SIZE", "WHERE", "BLOCKS"]]
        rows += [
            [format_size(s.get("bytes", 0)), str(s.get("where", "?")), f"{s.get('count', 0):,}"]
            for s in sites
        ]
        lines += ["  biggest allocation sites (tracemalloc):"]
        lines += ["    " + line for line in table_lines(rows)]
    elif not answer.get("tracemalloc"):
        lines.append(
            "  allocation sites: tracemalloc is off (run the agent with `pmrun --trace-heap`)"
        )
    return lines
