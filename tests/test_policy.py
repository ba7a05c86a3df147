"""The launcher's pure decisions: intervals, crossings, exit statuses."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmrun import policy
from pmrun.policy import Crossing, LimitWatch

G = 1 << 30
M = 1 << 20


@pytest.mark.parametrize(
    ("rss", "limit", "growth", "expected"),
    [
        (0, 8 * G, 0, policy.MAX_INTERVAL_S),  # far: the slowest
        (G - 40 * M, G, 0, 40 * M / policy.ASSUMED_GROWTH_BPS),  # near: the headroom at full speed
        (G - 2 * M, G, 0, policy.MIN_INTERVAL_S),  # nearer than the fastest sample
        (G, G, 0, policy.MIN_INTERVAL_S),  # at the limit
        (2 * G, G, 0, policy.MIN_INTERVAL_S),  # past it
        (G - 400 * M, G, 40 * G, 400 * M / (80 * G)),  # observed growth faster than assumed
    ],
)
def test_next_interval(rss, limit, growth, expected) -> None:
    assert policy.next_interval_s(rss, limit, growth) == pytest.approx(expected)


@given(st.integers(0, 4 * G), st.integers(1, 4 * G), st.floats(0, 1e12))
def test_interval_is_bounded_and_shrinks_with_headroom(rss, limit, growth) -> None:
    t = policy.next_interval_s(rss, limit, growth)
    assert policy.MIN_INTERVAL_S <= t <= policy.MAX_INTERVAL_S
    assert policy.next_interval_s(rss + M, limit, growth) <= t


def test_warn_once_then_stop_once() -> None:
    w = LimitWatch(warn_bytes=100, max_bytes=200)
    seen = [w.observe(x) for x in (50, 101, 150, 90, 120, 201, 250, 300)]
    assert seen == [
        Crossing.NONE,
        Crossing.WARN,
        Crossing.NONE,
        Crossing.NONE,
        Crossing.NONE,
        Crossing.MAX,
        Crossing.NONE,
        Crossing.NONE,
    ]
    assert w.peak_bytes == 300


def test_jump_straight_past_max_stops() -> None:
    w = LimitWatch(warn_bytes=100, max_bytes=200)
    assert w.observe(500) is Crossing.MAX


def test_exit_status() -> None:
    assert policy.exit_status(os.waitstatus_to_exitcode(0) << 8) == 0
    assert policy.exit_status(3 << 8) == 3
    assert policy.exit_status(signal.SIGKILL) == 137
    assert policy.exit_status(signal.SIGTERM) == 143


def test_grace_overrun() -> None:
    assert not policy.grace_exceeded(110, 100)
    assert policy.grace_exceeded(111, 100)


@pytest.mark.parametrize(
    ("status", "vsz", "max_as", "expected"),
    [
        (1 << 8, 90, 100, True),  # exit 1 near the limit (MemoryError)
        (signal.SIGSEGV, 80, 100, True),
        (signal.SIGABRT, 76, 100, True),
        (1 << 8, 10, 100, False),  # failed far from the limit: something else
        (0, 99, 100, False),  # succeeded
        (signal.SIGTERM, 99, 100, False),  # killed by someone
        (1 << 8, 99, None, False),  # no limit set
    ],
)
def test_looks_like_max_as(status, vsz, max_as, expected) -> None:
    assert (
        policy.looks_like_max_as(wait_status=status, peak_vsz_bytes=vsz, max_as_bytes=max_as)
        is expected
    )


# -- a tree parked near its limit (issue: ~800 samples/s at 95-98%) -------------------

PARKED = int(0.97 * 400 * M)


@pytest.mark.parametrize(
    ("flat_s", "growth", "kernel_wakes", "expected"),
    [
        (0.0, 0.0, False, 12 * M / (8 << 30)),  # just grew: the 8 GiB/s worst case
        (1.0, 0.0, False, policy.PARKED_MAX_INTERVAL_S),  # still for 1 s: capped at 10 ms
        (0.25, 0.0, False, 12 * M / (4 << 30)),  # still for a third of the settling time
        (1.0, 2 << 30, False, 12 * M / (4 << 30)),  # still by the tracker, yet growing
        (0.0, 0.0, True, 12 * M / (8 << 30)),  # growing: fast even where the kernel wakes us
        (2.0, 0.0, True, policy.KERNEL_PARKED_MAX_INTERVAL_S),  # still, the kernel watches
    ],
)
def test_parked_interval(flat_s, growth, kernel_wakes, expected) -> None:
    t = policy.next_interval_s(PARKED, 400 * M, growth, flat_s=flat_s, kernel_wakes=kernel_wakes)
    assert t == pytest.approx(expected, rel=1e-6)


@given(
    st.integers(0, 4 << 30),
    st.integers(1 << 20, 4 << 30),
    st.floats(0, 16e9),
    st.floats(0, 100),
)
def test_a_still_tree_is_sampled_at_least_every_10_ms_near_its_limit(rss, limit, g, flat) -> None:
    """Relaxing never costs more than 10 ms between samples where the worst case is faster."""
    strict = policy.next_interval_s(rss, limit, g)
    relaxed = policy.next_interval_s(rss, limit, g, flat_s=flat)
    assert strict <= relaxed <= max(strict, policy.PARKED_MAX_INTERVAL_S)
    kernel = policy.next_interval_s(rss, limit, g, flat_s=flat, kernel_wakes=True)
    assert strict <= kernel <= max(strict, policy.KERNEL_PARKED_MAX_INTERVAL_S)


def test_flatness_counts_from_the_last_growth() -> None:
    f = policy.Flatness(slack_bytes=M)
    assert f.observe(100 * M, 0.0) == 0.0
    assert f.observe(100 * M + M // 2, 1.0) == 1.0  # within the slack: still
    assert f.observe(90 * M, 2.0) == 2.0  # shrinking: still
    assert f.observe(90 * M + 2 * M, 3.0) == 0.0  # grew past the slack from the low
    assert f.observe(92 * M, 3.5) == 0.5
