"""The sampling loop's pure pieces, as tables: samples in, figures out; facts in, reason and words out."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from pmrun import policy, supervision
from pmrun.backends.base import ProcSample, Sample
from pmrun.report import FIELDS, REASONS, Limits, TopProcess
from pmrun.supervision import TreeStats, end_reason

M = 1 << 20
G = 1 << 30
LIM = Limits(max_rss=100 * M, warn_rss=80 * M, max_as=None, grace_s=2.0)
LIM_AS = Limits(max_rss=100 * M, warn_rss=80 * M, max_as=1 * G, grace_s=2.0)
NAMES = {1: "node", 2: "python", 3: "rg"}


def exited(code: int) -> int:
    """The wait status of a command that exited with ``code``."""
    return code << 8


def killed(sig: int, *, core: bool = False) -> int:
    """The wait status of a command killed by ``sig``."""
    return sig | (0x80 if core else 0)


def sample(rss: int, *procs: tuple[int, int, int], usage: int | None = None) -> Sample:
    """A sample of ``rss`` bytes with processes given as (pid, rss, vsz)."""
    return Sample(rss, tuple(ProcSample(*p) for p in procs), usage)


def feed(
    samples: list[Sample], limits: Limits = LIM, step_s: float = 0.01
) -> tuple[TreeStats, list[str], list[int]]:
    """Feed ``samples`` step_s apart; returns the stats, each sample's crossing, and whose name was read."""
    asked: list[int] = []

    def name_of(pid: int) -> str:
        asked.append(pid)
        return NAMES.get(pid, "?")

    stats = TreeStats(limits, 100.0, name_of)
    crossings = [stats.observe(s, 100.0 + step_s * (i + 1)) for i, s in enumerate(samples)]
    return stats, crossings, asked


# -- TreeStats.observe ----------------------------------------------------------------

NONE, WARN, MAX = policy.Crossing.NONE, policy.Crossing.WARN, policy.Crossing.MAX

# samples -> samples, peak, peak vsz, biggest at peak (pid, name, rss), usage at peak, crossings, names read
OBSERVE_ROWS: list[tuple[str, list[Sample], tuple[Any, ...]]] = [
    ("nothing yet", [], (0, 0, 0, None, None, [], [])),
    (
        "one process",
        [sample(10 * M, (1, 10 * M, 50 * M), usage=12 * M)],
        (1, 10 * M, 50 * M, (1, "node", 10 * M), 12 * M, [NONE], [1]),
    ),
    (
        "an empty tree has no biggest, yet its usage is the peak's",
        [sample(0, usage=4096)],
        (1, 0, 0, None, 4096, [NONE], []),
    ),
    (
        "the biggest at the peak, not the last biggest",
        [
            sample(30 * M, (1, 10 * M, 10 * M), (2, 20 * M, 20 * M), usage=31 * M),
            sample(20 * M, (1, 15 * M, 10 * M), (3, 5 * M, 90 * M), usage=40 * M),
        ],
        (2, 30 * M, 90 * M, (2, "python", 20 * M), 31 * M, [NONE, NONE], [2]),
    ),
    (
        "the same leader at a new peak: its figure follows, its name is read once",
        [sample(20 * M, (1, 20 * M, 0)), sample(25 * M, (1, 25 * M, 0))],
        (2, 25 * M, 0, (1, "node", 25 * M), None, [NONE, NONE], [1]),
    ),
    (
        "the peak seen again counts as the peak (>=): a new leader there",
        [sample(20 * M, (1, 20 * M, 0)), sample(20 * M, (2, 20 * M, 0), usage=7)],
        (2, 20 * M, 0, (2, "python", 20 * M), 7, [NONE, NONE], [1, 2]),
    ),
    (
        "warn once, then stop once",
        [sample(81 * M), sample(90 * M), sample(101 * M), sample(120 * M)],
        (4, 120 * M, 0, None, None, [WARN, NONE, MAX, NONE], []),
    ),
    (
        "exactly at --warn-rss, then exactly at --max-rss: only the warning",
        [sample(80 * M), sample(100 * M)],
        (2, 100 * M, 0, None, None, [NONE, WARN], []),
    ),
    (
        "past both at once: the stop comes first, the warning after",
        [sample(150 * M), sample(150 * M)],
        (2, 150 * M, 0, None, None, [MAX, WARN], []),
    ),
]


@pytest.mark.parametrize(
    ("samples", "want"), [r[1:] for r in OBSERVE_ROWS], ids=[r[0] for r in OBSERVE_ROWS]
)
def test_observe_keeps_the_trees_figures(samples: list[Sample], want: tuple[Any, ...]) -> None:
    stats, crossings, asked = feed(samples)
    big = stats.biggest
    got = (
        stats.samples,
        stats.peak_bytes,
        stats.peak_vsz_bytes,
        (big.pid, big.name, big.rss_bytes) if big else None,
        stats.usage_at_peak_bytes,
        crossings,
        asked,
    )
    assert got == want


# (rss, seconds since the sample before) each -> growth (bytes/s) after the last
GROWTH_ROWS = [
    ([(10 * M, 0.5)], 20 * M),  # from nothing at the start
    ([(10 * M, 1.0), (30 * M, 2.0)], 10 * M),
    ([(30 * M, 1.0), (10 * M, 0.5)], -40 * M),  # shrinking
    ([(10 * M, 1.0), (30 * M, 0.0)], 0.0),  # no time between two samples: no rate
]


@pytest.mark.parametrize(("steps", "want_bps"), GROWTH_ROWS)
def test_growth_is_per_second_since_the_sample_before(
    steps: list[tuple[int, float]], want_bps: float
) -> None:
    stats, now = TreeStats(LIM, 0.0, NAMES.__getitem__), 0.0
    for rss, dt in steps:
        now += dt
        stats.observe(sample(rss), now)
    assert stats.growth_bps == want_bps


# (rss, at s) each -> seconds still after the last
FLAT_ROWS = [
    ([(10 * M, 1.0)], 0.0),
    ([(10 * M, 1.0), (10 * M, 3.0)], 2.0),
    ([(10 * M, 1.0), (10 * M + (1 << 19), 2.0)], 1.0),  # within the slack: still
    ([(10 * M, 1.0), (12 * M, 2.0)], 0.0),  # grew: still since now
    ([(10 * M, 1.0), (5 * M, 2.0), (6 * M, 4.0)], 3.0),  # shrinking is still
]


@pytest.mark.parametrize(("steps", "want_s"), FLAT_ROWS)
def test_flatness_is_how_long_the_tree_held_still(
    steps: list[tuple[int, float]], want_s: float
) -> None:
    stats = TreeStats(LIM, 0.0, NAMES.__getitem__)
    for rss, at in steps:
        stats.observe(sample(rss), at)
    assert stats.flat_s == want_s


# -- TreeStats.next_interval_s ----------------------------------------------------------

# limits, samples (rss, vsz or None for no process, at s), kernel_wakes -> interval
INTERVAL_ROWS: list[tuple[str, Limits, list[tuple[int, int | None, float]], bool, float]] = [
    ("a young tree: a quarter of its age", LIM, [(0, 0, 0.02)], False, 0.005),
    ("never below the minimum", LIM, [(0, 0, 0.000001)], False, policy.MIN_INTERVAL_S),
    (
        "an old tree: the headroom's",
        LIM,
        [(0, 0, 10.0)],
        False,
        policy.next_interval_s(0, 100 * M, 0.0),
    ),
    ("near the limit: the minimum", LIM, [(99 * M, 0, 10.0)], False, policy.MIN_INTERVAL_S),
    (
        "a still tree the kernel watches",
        LIM,
        [(50 * M, 0, 10.0), (50 * M, 0, 20.0)],
        True,
        policy.next_interval_s(50 * M, 100 * M, 0.0, flat_s=10.0, kernel_wakes=True),
    ),
    (
        "the address space near --max-as is watched too",
        LIM_AS,
        [(0, G - M, 10.0)],
        False,
        policy.next_interval_s(G - M, G),
    ),
    (
        "no --max-as: the address space does not count",
        LIM,
        [(0, G - M, 10.0)],
        False,
        policy.next_interval_s(0, 100 * M),
    ),
    (
        "no process in the last sample: no address space to watch",
        LIM_AS,
        [(0, G - M, 10.0), (0, None, 20.0)],
        False,
        policy.next_interval_s(0, 100 * M),
    ),
]


@pytest.mark.parametrize(
    ("limits", "steps", "kernel_wakes", "want_s"),
    [r[1:] for r in INTERVAL_ROWS],
    ids=[r[0] for r in INTERVAL_ROWS],
)
def test_next_interval(
    limits: Limits, steps: list[tuple[int, int | None, float]], kernel_wakes: bool, want_s: float
) -> None:
    stats = TreeStats(limits, 0.0, NAMES.__getitem__)
    for rss, vsz, at in steps:
        stats.observe(sample(rss, *([(1, rss, vsz)] if vsz is not None else [])), at)
    assert stats.next_interval_s(kernel_wakes=kernel_wakes) == pytest.approx(want_s)


# -- TreeStats.during_grace ---------------------------------------------------------------

# peak before, grace sample -> peak after, killed now
GRACE_ROWS = [
    (50 * M, 40 * M, 50 * M, False),  # shrinking while it shuts down
    (101 * M, 105 * M, 105 * M, False),  # a little over: the grace goes on
    (101 * M, 110 * M, 110 * M, False),  # exactly 10% over: still
    (101 * M, 110 * M + 1, 110 * M + 1, True),  # past 10% over: killed
]


@pytest.mark.parametrize(("peak", "rss", "want_peak", "want_kill"), GRACE_ROWS)
def test_grace_samples_raise_the_peak_only(
    peak: int, rss: int, want_peak: int, want_kill: bool
) -> None:
    stats, _, _ = feed([sample(peak)])
    assert stats.during_grace(rss) is want_kill
    assert (stats.peak_bytes, stats.samples) == (want_peak, 1)


# -- end_reason and exit_status ---------------------------------------------------------------

SIGKILL, SIGTERM, SIGSEGV, SIGABRT, SIGILL = (
    signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGABRT, signal.SIGILL,
)  # fmt: skip

# stopped_for, wait status, oom kills, peak vsz, max_as -> reason, pmrun's exit status
END_ROWS: list[tuple[str, str | None, int, int, int, int | None, str, int]] = [
    ("a clean exit", None, exited(0), 0, 0, None, "exit", 0),
    ("the command's own failure", None, exited(3), 0, 0, None, "exit", 3),
    ("a signal", None, killed(SIGTERM), 0, 0, None, "signal", 128 + SIGTERM),
    (
        "a core dump is still the signal",
        None,
        killed(SIGSEGV, core=True),
        0,
        0,
        None,
        "signal",
        139,
    ),
    ("pmrun stopped it at --max-rss", "max-rss", killed(SIGTERM), 0, 0, None, "max-rss", 137),
    ("max-rss, whatever the command exited with", "max-rss", exited(0), 0, 0, None, "max-rss", 137),
    ("the coordinator's pool", "pool", killed(SIGKILL), 0, 0, None, "pool", 137),
    (
        "the coordinator's system pressure",
        "system-pressure",
        exited(1),
        0,
        0,
        None,
        "system-pressure",
        137,
    ),
    (
        "pmrun stopped it after a kernel OOM kill: 137, though SIGTERM ended it",
        "kernel-oom",
        killed(SIGTERM),
        1,
        0,
        None,
        "kernel-oom",
        137,
    ),
    (
        "pmrun's stop wins over any look of --max-as",
        "max-rss",
        killed(SIGSEGV),
        0,
        G,
        G,
        "max-rss",
        137,
    ),
    ("SIGKILL after an OOM kill: the kernel", None, killed(SIGKILL), 2, 0, None, "kernel-oom", 137),
    ("the kernel's SIGKILL under --max-as too", None, killed(SIGKILL), 1, G, G, "kernel-oom", 137),
    ("SIGKILL without an OOM kill: a signal", None, killed(SIGKILL), 0, 0, None, "signal", 137),
    ("an OOM kill elsewhere, the command exits: its exit", None, exited(0), 1, 0, None, "exit", 0),
    ("an OOM kill elsewhere, the command fails: its exit", None, exited(1), 1, 0, None, "exit", 1),
    (
        "an OOM kill, the command is terminated: a signal",
        None,
        killed(SIGTERM),
        1,
        0,
        None,
        "signal",
        143,
    ),
    ("a crash under --max-as", None, killed(SIGSEGV), 0, 0, G, "max-as", 139),
    ("an abort under --max-as (ASan)", None, killed(SIGABRT), 0, 0, G, "max-as", 134),
    ("SIGILL under --max-as (Bun)", None, killed(SIGILL), 0, 0, G, "max-as", 132),
    ("the sanitizers' 66 under --max-as", None, exited(66), 0, 0, G, "max-as", 66),
    ("a wrapper saying 139 under --max-as", None, exited(139), 0, 0, G, "max-as", 139),
    ("a failure near --max-as", None, exited(1), 0, 3 * G // 4, G, "max-as", 1),
    ("a failure far from --max-as", None, exited(1), 0, 3 * G // 4 - 1, G, "exit", 1),
    ("a clean exit near --max-as", None, exited(0), 0, G, G, "exit", 0),
    ("SIGTERM under --max-as: a signal", None, killed(SIGTERM), 0, G, G, "signal", 143),
    ("a crash without --max-as: a signal", None, killed(SIGSEGV), 0, G, None, "signal", 139),
]


@pytest.mark.parametrize(
    ("stopped_for", "status", "oom_kills", "vsz", "max_as", "want", "want_code"),
    [r[1:] for r in END_ROWS],
    ids=[r[0] for r in END_ROWS],
)
def test_end_reason_and_exit_status(
    stopped_for: str | None,
    status: int,
    oom_kills: int,
    vsz: int,
    max_as: int | None,
    want: str,
    want_code: int,
) -> None:
    reason = end_reason(
        stopped_for=stopped_for,
        wait_status=status,
        oom_kills=oom_kills,
        peak_vsz_bytes=vsz,
        max_as_bytes=max_as,
    )
    assert (reason, supervision.exit_status(reason, status)) == (want, want_code)
    assert reason in REASONS


def test_the_wait_statuses_of_the_table_are_the_kernels() -> None:
    assert os.WEXITSTATUS(exited(66)) == 66 and not os.WIFSIGNALED(exited(66))
    assert os.WTERMSIG(killed(SIGSEGV, core=True)) == SIGSEGV and os.WCOREDUMP(
        killed(SIGSEGV, core=True)
    )


# -- message -------------------------------------------------------------------------------

BIG = TopProcess(7, "node", 90 * M)
BIGGEST = "; biggest process: pid 7 node (90.0M)"

# reason, stop, wait status, biggest -> message
MESSAGE_ROWS: list[tuple[str, dict[str, Any] | None, int, TopProcess | None, str]] = [
    (
        "max-rss",
        {"rss": 101 * M, "max_rss": 100 * M},
        killed(SIGTERM),
        BIG,
        "stopped claude (pid 42): memory (anon+shmem+swap) passed --max-rss 100.0M;"
        f" peak 120.0M{BIGGEST}",
    ),
    (
        "max-rss",
        None,
        killed(SIGKILL),
        None,
        "stopped claude (pid 42): memory (anon+shmem+swap) passed --max-rss 100.0M; peak 120.0M",
    ),
    (
        "pool",
        {"message": "the pool is at 9.0G of 8.0G"},
        killed(SIGTERM),
        BIG,
        "stopped claude (pid 42) by the coordinator (pool): the pool is at 9.0G of 8.0G;"
        f" peak 120.0M{BIGGEST}",
    ),
    (
        "pool",
        {"message": ""},
        killed(SIGTERM),
        None,
        "stopped claude (pid 42) by the coordinator (pool): the agents' pool is over its limit;"
        " peak 120.0M",
    ),
    (
        "system-pressure",
        None,
        exited(0),
        None,
        "stopped claude (pid 42) by the coordinator (system-pressure): the system is short of"
        " memory; peak 120.0M",
    ),
    (
        "kernel-oom",
        {"oom_kills": []},
        killed(SIGKILL),
        BIG,
        "claude (pid 42) was killed by the kernel's OOM killer (its cgroup limit); peak 120.0M"
        f"{BIGGEST}",
    ),
    (
        "max-as",
        None,
        killed(SIGSEGV),
        BIG,
        "claude (pid 42) failed under --max-as 1.0G: likely a failed mapping (ENOMEM;"
        " sanitizers, Bun and the JVM reserve more than they use); raise --max-as or set it"
        " to off",
    ),
    ("signal", None, killed(SIGTERM), BIG, "claude (pid 42) was killed by signal 15"),
    ("exit", None, exited(3), BIG, "claude (pid 42) exited with status 3"),
    ("exit", None, exited(0), None, "claude (pid 42) exited with status 0"),
]


@pytest.mark.parametrize(("reason", "stop", "status", "biggest", "want"), MESSAGE_ROWS)
def test_message(
    reason: str, stop: dict[str, Any] | None, status: int, biggest: TopProcess | None, want: str
) -> None:
    got = supervision.message(
        reason,
        name="claude",
        pid=42,
        limits=LIM_AS,
        peak_bytes=120 * M,
        biggest=biggest,
        stop=stop,
        wait_status=status,
    )
    assert got == want


# -- build_report ------------------------------------------------------------------------------


def report_of(
    reason: str,
    status: int,
    *,
    ru_maxrss_kib: int | None = 2048,
    stop: dict[str, Any] | None = None,
) -> Any:
    stats, _, _ = feed(
        [sample(30 * M, (1, 10 * M, 50 * M), (2, 20 * M, 60 * M), usage=33 * M), sample(10 * M)]
    )
    return supervision.build_report(
        stats,
        reason,
        wait_status=status,
        stop=stop,
        command=["claude", "-p"],
        name="claude",
        agent_id="claude.9",
        pid=42,
        launcher_pid=9,
        start_time=1000.0,
        end_time=1002.5,
        ru_maxrss_kib=ru_maxrss_kib,
        backend={"name": "sampling"},
        kernel_peak_bytes=None,
        kernel_oom_kills=0,
        warned_at=None,
        extra={"paused_s": 0.0},
    )


# reason, wait status, ru_maxrss KiB -> exit status, signal, ru_maxrss bytes
REPORT_ROWS = [
    ("exit", exited(0), 2048, 0, None, 2 * M),
    ("exit", exited(5), None, 5, None, None),
    ("signal", killed(SIGTERM), 0, 143, SIGTERM, 0),
    ("max-rss", exited(0), 1, 137, None, 1024),
    ("max-rss", killed(SIGKILL), 1, 137, SIGKILL, 1024),
    ("pool", killed(SIGTERM), 1, 137, SIGTERM, 1024),
    ("max-as", killed(SIGSEGV), 1, 139, SIGSEGV, 1024),
]


@pytest.mark.parametrize(
    ("reason", "status", "kib", "want_code", "want_sig", "want_ru"), REPORT_ROWS
)
def test_build_report_figures(
    reason: str,
    status: int,
    kib: int | None,
    want_code: int,
    want_sig: int | None,
    want_ru: int | None,
) -> None:
    r = report_of(reason, status, ru_maxrss_kib=kib)
    assert (r.exit_status, r.signal, r.ru_maxrss_bytes) == (want_code, want_sig, want_ru)
    assert type(r.exit_status) is int
    assert r.reason == reason


def test_build_report_takes_the_trees_figures_and_the_runs_facts() -> None:
    stop = {"rss": 101 * M, "max_rss": 100 * M}
    d = report_of("max-rss", killed(SIGTERM), stop=stop).to_dict()
    assert list(d) == list(FIELDS)
    assert d == {
        "command": ["claude", "-p"],
        "name": "claude",
        "agent_id": "claude.9",
        "pid": 42,
        "launcher_pid": 9,
        "start_time": 1000.0,
        "end_time": 1002.5,
        "exit_status": 137,
        "reason": "max-rss",
        "message": "stopped claude (pid 42): memory (anon+shmem+swap) passed --max-rss 100.0M;"
        " peak 30.0M; biggest process: pid 2 python (20.0M)",
        "signal": SIGTERM,
        "peak_rss_bytes": 30 * M,
        "limits": LIM.to_dict(),
        "samples": 2,
        "biggest_at_peak": {"pid": 2, "name": "python", "rss_bytes": 20 * M},
        "ru_maxrss_bytes": 2 * M,
        "backend": {"name": "sampling"},
        "kernel_peak_bytes": None,
        "kernel_oom_kills": 0,
        "warned_at": None,
        "stop": stop,
        "extra": {"peak_vsz_bytes": 60 * M, "kernel_usage_at_peak_bytes": 33 * M, "paused_s": 0.0},
    }


# -- pmrun's lines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pid", "rss", "want"),
    [
        (
            "claude",
            42,
            81 * M,
            "warning: claude (pid 42) memory (anon+shmem+swap) 81.0M passed --warn-rss 80.0M (stop at 100.0M)",
        ),
        (
            "my agent",
            7,
            80 * M + 1,
            "warning: my agent (pid 7) memory (anon+shmem+swap) 80.0M passed --warn-rss 80.0M (stop at 100.0M)",
        ),
    ],
)
def test_warn_line(name: str, pid: int, rss: int, want: str) -> None:
    assert supervision.warn_line(name, pid, "anon+shmem+swap", rss, LIM) == want


# reason, deferred lines -> lines said at the end
END_LINE_ROWS = [
    ("exit", [], []),
    ("signal", [], []),
    ("exit", ["warning: kept for the end"], ["warning: kept for the end"]),
    ("max-rss", [], ["MESSAGE"]),
    ("max-as", ["w1", "w2"], ["w1", "w2", "MESSAGE"]),
    ("pool", [], ["MESSAGE"]),
    ("system-pressure", [], ["MESSAGE"]),
    ("kernel-oom", [], ["MESSAGE"]),
]


@pytest.mark.parametrize(("reason", "deferred", "want"), END_LINE_ROWS)
def test_end_lines(reason: str, deferred: list[str], want: list[str]) -> None:
    r = report_of(reason, exited(0))
    want = [r.message if line == "MESSAGE" else line for line in want]
    assert supervision.end_lines(r, deferred) == want


def test_no_coordinator_line() -> None:
    assert (
        supervision.no_coordinator_line("socket dir is not ours")
        == "warning: no coordinator (socket dir is not ours); enforcing this agent's own limits only"
    )


@pytest.mark.parametrize(
    ("pids", "want"),
    [
        (
            [5],
            "cannot stop 1 process(es) of the tree that changed their uid, left running: pid 5 p5 (uid 1005)",
        ),
        (
            list(range(1, 8)),
            "cannot stop 7 process(es) of the tree that changed their uid, left running: "
            + ", ".join(f"pid {p} p{p} (uid {1000 + p})" for p in range(1, 6)),
        ),
    ],
)
def test_refused_line_names_five_and_counts_all(pids: list[int], want: str) -> None:
    assert supervision.refused_line(pids, lambda p: f"p{p}", lambda p: str(1000 + p)) == want


@pytest.mark.parametrize(
    ("name", "pid", "want"),
    [("claude", 42, "claude (pid 42)"), ("my agent", 0, "my agent (pid 0)")],
)
def test_agent_label(name: str, pid: int, want: str) -> None:
    assert supervision.agent_label(name, pid) == want


def test_repr_shows_the_figures_so_far() -> None:
    stats, _, _ = feed([sample(30 * M, (2, 20 * M, 0))])
    assert repr(stats) == f"TreeStats(samples=1, peak_bytes={30 * M}, biggest=pid 2)"
