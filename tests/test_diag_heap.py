"""The per-process breakdown on a fake /proc, and the Python services' answers as text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import FakeClock
from pmrun import _procfs
from pmrun.diagnostics.heap import agent_pids, answer_lines, breakdown, table_lines, tree_breakdown

KIB = 1024


def fake_process(proc: Path, pid: int, *, cmd: str, children: list[int] = (), rss_kib: int = 0,  # type: ignore[assignment]
                 pss_kib: int = 0, private_kib: int = 0, swap_kib: int = 0) -> None:  # fmt: skip
    d = proc / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "task" / str(pid) / "children").write_text(" ".join(map(str, children)))
    (d / "cmdline").write_text(cmd.replace(" ", "\0") + "\0")
    (d / "comm").write_text(cmd.split()[0].rsplit("/", 1)[-1] + "\n")
    (d / "smaps_rollup").write_text(
        "00400000-7fff00000000 ---p 00000000 00:00 0   [rollup]\n"
        f"Rss:            {rss_kib} kB\nPss:            {pss_kib} kB\n"
        f"Private_Clean:  {private_kib // 2} kB\nPrivate_Dirty:  {private_kib - private_kib // 2} kB\n"
        f"Swap:           {swap_kib} kB\n"
    )


@pytest.fixture
def proc(tmp_path: Path) -> str:
    """launcher 100 -> keeper 101 (same command line) -> sh 200 -> sort 201, plus a daemon 300
    reparented to the keeper; our own pid has a children file so the fast path is used."""
    root = tmp_path / "proc"
    me = os.getpid()
    fake_process(root, me, cmd="pytest")
    fake_process(
        root, 100, cmd="python pmrun -- sh", children=[101], rss_kib=20_000, pss_kib=10_000
    )
    fake_process(
        root, 101, cmd="python pmrun -- sh", children=[200, 300], rss_kib=18_000, pss_kib=5_000
    )
    fake_process(
        root, 200, cmd="sh -c x", children=[201], rss_kib=1_000, pss_kib=300, private_kib=200
    )
    fake_process(
        root, 201, cmd="sort", rss_kib=61_000, pss_kib=60_500, private_kib=60_000, swap_kib=8
    )
    fake_process(root, 300, cmd="daemon", rss_kib=5_000, pss_kib=4_000, private_kib=3_000)
    return str(root)


def test_agent_pids_leave_out_the_launcher_and_its_keeper(proc: str) -> None:
    assert sorted(agent_pids(100, proc)) == [200, 201, 300]
    assert agent_pids(999, proc) == []  # a launcher that is gone


def test_breakdown_is_biggest_pss_first_with_a_total(proc: str) -> None:
    b = breakdown([200, 300, 201, 4242, 201], proc)  # a vanished pid and a duplicate
    assert [p.pid for p in b.processes] == [201, 300, 200]
    sort = b.processes[0]
    assert (sort.name, sort.rss_bytes, sort.pss_bytes, sort.uss_bytes, sort.swap_bytes) == (
        "sort", 61_000 * KIB, 60_500 * KIB, 60_000 * KIB, 8 * KIB,
    )  # fmt: skip
    assert b.total.rss_bytes == 67_000 * KIB and b.total.uss_bytes == 63_200 * KIB
    assert b.to_dict()["total"] == {
        "rss_bytes": 67_000 * KIB, "pss_bytes": 64_800 * KIB, "uss_bytes": 63_200 * KIB, "swap_bytes": 8 * KIB,
    }  # fmt: skip


def test_tree_breakdown_includes_the_root(proc: str) -> None:
    assert {p.pid for p in tree_breakdown(200, proc).processes} == {200, 201}


def test_unreadable_processes_are_listed_not_fatal(
    proc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _procfs.smaps_rollup

    def smaps_rollup(pid: int, proc: str = _procfs.PROC) -> dict[str, int]:
        if pid == 201:  # as for another user's process without root, or under ptrace limits
            raise PermissionError(13, "Permission denied")
        return real(pid, proc)

    monkeypatch.setattr(_procfs, "smaps_rollup", smaps_rollup)
    b = breakdown([200, 201], proc)
    assert [p.pid for p in b.processes] == [200] and b.unreadable == (201,)


def test_table_lines_align_names_left_and_figures_right() -> None:
    lines = table_lines([["PID", "NAME", "RSS"], ["7", "sort", "60.0M"], ["12345", "sh", "1.0M"]])
    assert lines == ["  PID  NAME    RSS", "    7  sort  60.0M", "12345  sh     1.0M"]


def test_answer_lines_show_types_sites_and_what_is_missing() -> None:
    answer = {
        "pid": 7, "services": ["cache"], "agent": "a.1", "rss_bytes": 100 << 20, "objects": 1234,
        "seconds": 0.5, "truncated": True, "tracemalloc": False, "sites": [],
        "types": [{"type": "__main__.Payload", "count": 200_000, "bytes": 11_200_000}],
    }  # fmt: skip
    lines = answer_lines(answer)
    assert (
        lines[0]
        == "pid 7 (services: cache; agent a.1): RSS 100.0M, 1,234 objects walked in 0.50s (stopped early: time budget)"
    )
    assert lines[-2].split() == ["10.7M", "__main__.Payload", "200,000"]
    assert lines[-1].endswith("tracemalloc is off (run the agent with `pmrun --trace-heap`)")
    traced = {
        **answer,
        "tracemalloc": True,
        "sites": [{"where": "app.py:12", "bytes": 1 << 30, "count": 3}],
    }
    assert answer_lines(traced)[-1].split() == ["1.0G", "app.py:12", "3"]
    assert answer_lines({"pid": 8, "services": ["x"], "error": "no answer"}) == [
        "pid 8 (services: x): no answer"
    ]


def test_a_cache_of_strings_is_counted() -> None:
    """gc.get_objects() lists containers only: the strings a prompt cache holds must be
    counted through the containers that refer to them (they were invisible before)."""
    import gc

    from pmrun.cache import SharedPromptCache
    from pmrun.client import heap_summary

    cache = SharedPromptCache(100 << 20, max_entries=10_000, auto_attach=False)
    for i in range(2000):
        cache.set(f"prompt:{i}", f"{i} " + "x" * 10_000)
    gc.collect()  # the collector stops tracking the entry tuples: only atoms left inside
    summary = heap_summary(limit=50, budget_s=60)
    by_type = {t["type"]: t for t in summary["types"]}
    assert by_type["builtins.str"]["bytes"] >= 2000 * 10_000
    assert by_type["builtins.str"]["count"] >= 4000  # the values and their keys
    assert summary["counted"] == "gc+referents" and not summary["truncated"]
    assert summary["untracked_complete"] is True
    assert "str, bytes and numbers in containers included" in answer_lines(summary)[1]
    partly = {**summary, "untracked_complete": False}
    assert "included, in part: time budget" in answer_lines(partly)[1]
    old = {**summary, "counted": None}  # a service of an older pmrun
    assert "str, bytes and numbers NOT counted" in answer_lines(old)[1]
    del cache


def test_the_walk_keeps_to_its_budget_and_counts_tracked_objects_first() -> None:
    from pmrun.diagnostics.heap import count_types

    strings = [f"s{i}" * 10 for i in range(50_000)]
    out = count_types(budget_s=0.5, clock=FakeClock(start=0.0, step_s=1.0))  # a second a reading
    assert out["truncated"] is True and out["untracked_complete"] is False
    assert out["objects"] >= 1
    roomy = count_types(budget_s=1e9)
    assert roomy["untracked_complete"] is True and not roomy["truncated"]
    del strings
