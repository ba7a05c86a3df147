"""Pure decisions of the launcher: numbers in, a decision out. No I/O here.

The coordinator's own decisions (pressure levels, victims) live in
``pmrun.coordinator.policy``.
"""

from __future__ import annotations

# The fastest growth of a single process's RSS measured on this machine
# (benchmarks/bench_launcher.py, `overshoot`): 1.4 GiB/s for Python, 1.8-2.2 GiB/s
# for C touching 4 KiB pages, 5.9-9.5 GiB/s for C with transparent huge pages.
# The next sample comes before the headroom left could be eaten at this speed.
ASSUMED_GROWTH_BPS = 8 << 30
MIN_INTERVAL_S = 0.001  # near the limit: 1 ms between samples
MAX_INTERVAL_S = 0.5  # far from it: still answer a limit crossing within half a second
# A tree seen holding still (RSS up by no more than FLAT_SLACK_BYTES) is assumed to start
# growing at no more than this once it has been still for FLAT_SETTLE_S: the worst case
# halves every FLAT_SETTLE_S / 3. It buys a tree parked at 97% of its limit 10 ms between
# samples instead of 1 ms; one that starts again at 8 GiB/s is seen within those 10 ms
# (at most 80 MiB over), and from its first grown sample on the worst case is back.
PARKED_GROWTH_BPS = 1 << 30
FLAT_SETTLE_S = 0.75
FLAT_SLACK_BYTES = 1 << 20
PARKED_MAX_INTERVAL_S = 0.01
# Where the kernel wakes pmrun the moment usage crosses the limit (cgroup v1 thresholds)
# and holds a hard limit above it, a still tree is watched by the kernel: 50 ms between
# samples. A growing one keeps the fast schedule: usage counts page cache, so the wake-up
# may come a little before the counted crossing, which the next samples must then catch.
KERNEL_PARKED_GROWTH_BPS = 128 << 20
KERNEL_PARKED_MAX_INTERVAL_S = 0.05


def next_interval_s(
    rss_bytes: int,
    limit_bytes: int,
    growth_bps: float = 0.0,
    *,
    flat_s: float = 0.0,
    kernel_wakes: bool = False,
    assumed_growth_bps: float = ASSUMED_GROWTH_BPS,
    min_s: float = MIN_INTERVAL_S,
    max_s: float = MAX_INTERVAL_S,
) -> float:
    """Seconds until the next sample: the time the headroom lasts at the worst growth rate.

    Slow when far from the limit (cheap), fast when close (little overshoot), like
    earlyoom's ``sleep_time_ms``. A tree seen growing is given half the time its own
    rate would allow (the sample itself takes time, and allocators speed up), so a fast
    grower is sampled twice as often as a quiet agent at the same headroom. A tree seen
    still for ``flat_s`` seconds gets a worst case that decays towards
    :data:`PARKED_GROWTH_BPS`, up to :data:`PARKED_MAX_INTERVAL_S` between samples
    (``kernel_wakes``: the kernel's own threshold watches it, 50 ms).
    """
    headroom = limit_bytes - rss_bytes
    if headroom <= 0:
        return min_s
    own = 2.0 * growth_bps
    worst = headroom / max(own, assumed_growth_bps, 1.0)
    if flat_s > 0:
        floor, cap = (
            (KERNEL_PARKED_GROWTH_BPS, KERNEL_PARKED_MAX_INTERVAL_S)
            if kernel_wakes
            else (PARKED_GROWTH_BPS, PARKED_MAX_INTERVAL_S)
        )
        settled = assumed_growth_bps / 2 ** (3 * flat_s / FLAT_SETTLE_S)
        relaxed = headroom / max(own, settled, floor)  # floor > 0: never a division by 0
        worst = max(worst, min(relaxed, cap))
    return min(max(worst, min_s), max_s)


class Flatness:
    """How long a tree's RSS has held still (up by at most ``slack_bytes``); times in s."""

    __slots__ = ("slack_bytes", "_ref_bytes", "_since")

    def __init__(self, slack_bytes: int = FLAT_SLACK_BYTES) -> None:
        self.slack_bytes = slack_bytes
        self._ref_bytes = -1
        self._since = 0.0

    def observe(self, rss_bytes: int, now: float) -> float:
        """Feed one sample; returns the seconds the tree has been still."""
        if self._ref_bytes < 0 or rss_bytes > self._ref_bytes + self.slack_bytes:
            self._ref_bytes, self._since = rss_bytes, now
        elif rss_bytes < self._ref_bytes:
            self._ref_bytes = rss_bytes  # shrinking is still; growth counts from the low
        return now - self._since


class Crossing:
    """What one sample crossed (plain constants: enum costs every agent start ~2 ms)."""

    NONE = "none"
    WARN = "warn"  # the soft threshold was crossed for the first time
    MAX = "max"  # the hard limit was crossed: stop the tree


class LimitWatch:
    """Tracks one agent's samples against its limits; warns once, stops once."""

    __slots__ = ("warn_bytes", "max_bytes", "peak_bytes", "warned", "stopped")

    def __init__(self, warn_bytes: int, max_bytes: int) -> None:
        self.warn_bytes = warn_bytes
        self.max_bytes = max_bytes
        self.peak_bytes = 0
        self.warned = False
        self.stopped = False

    def observe(self, rss_bytes: int) -> str:
        """Feed one sample; returns what, if anything, was crossed for the first time."""
        self.peak_bytes = max(self.peak_bytes, rss_bytes)
        if not self.stopped and rss_bytes > self.max_bytes:
            self.stopped = True
            return Crossing.MAX
        if not self.warned and rss_bytes > self.warn_bytes:
            self.warned = True
            return Crossing.WARN
        return Crossing.NONE


def exit_status(wait_status: int) -> int:
    """The shell's view of a wait status: the exit code, or 128 + N when killed by signal N."""
    import os

    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 128 + 9  # pragma: no cover - stopped/continued are not reported without WUNTRACED


def grace_exceeded(rss_bytes: int, max_bytes: int, *, overrun: float = 0.10) -> bool:
    """During the SIGTERM grace period, a tree still growing past max by ``overrun`` is killed at once.

    Grace exists for a clean shutdown, not for another gigabyte.
    """
    return rss_bytes > max_bytes * (1.0 + overrun)


def looks_like_max_as(
    *,
    wait_status: int,
    peak_vsz_bytes: int,
    max_as_bytes: int | None,
    near: float = 0.75,
) -> bool:
    """Whether an abnormal end is most likely the address-space limit (RLIMIT_AS).

    The kernel does not say why a process died; a failed mmap shows up as ENOMEM,
    MemoryError, an abort or a crash. Under an RLIMIT_AS we call it ``max-as`` when
    the command ended badly with its address space within ``near`` of the limit, or
    crashed at all: runtimes that reserve address space up front fail that reservation
    before any sample sees it (measured: AddressSanitizer aborts, ThreadSanitizer
    segfaults or exits 66, Bun raises SIGILL), so their address space looks small.
    """
    import _signal as signal  # the C module: signal.py imports enum
    import os

    if max_as_bytes is None:
        return False
    crash_signals = (signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGTRAP)
    if os.WIFSIGNALED(wait_status):
        return os.WTERMSIG(wait_status) in crash_signals
    if not os.WIFEXITED(wait_status) or os.WEXITSTATUS(wait_status) == 0:
        return False
    code = os.WEXITSTATUS(wait_status)
    # 66: the sanitizers' exit code; 128+N: a shell or wrapper reporting a crash signal.
    if code == 66 or code - 128 in crash_signals:
        return True
    return peak_vsz_bytes >= near * max_as_bytes


def meaningful_change(
    last_sent: int, now: int, *, ratio: float = 0.05, floor: int = 8 << 20
) -> bool:
    """Whether a launcher's figure moved enough since the last one it sent to send it now.

    max(8 MiB, 5%): small enough for the pool to follow a growing agent, large enough
    that a tree breathing near its limit (a sample every few ms) is not a message each.
    """
    return abs(now - last_sent) >= max(floor, int(last_sent * ratio))
