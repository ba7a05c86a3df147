"""The launcher's pure decisions at the edges the broader tables leave free.

Each case pins a comparison, a default or a floor that a mutant of ``pmrun.policy``
changed without any other test noticing (scripts/mutation).
"""

from __future__ import annotations

import signal

import pytest

from pmrun import policy

G = 1 << 30
M = 1 << 20


def test_the_default_growth_is_none_at_all() -> None:
    # With no assumed worst case, the interval is the headroom at one byte a second:
    # an omitted growth adds nothing, and a zero rate never divides by zero.
    t = policy.next_interval_s(0, 1000, assumed_growth_bps=0.0, min_s=0.0, max_s=1e9)
    assert t == 1000.0


def test_one_byte_of_headroom_is_still_headroom() -> None:
    assert policy.next_interval_s(G - 1, G, min_s=0.0) == pytest.approx(
        1 / policy.ASSUMED_GROWTH_BPS
    )
    assert policy.next_interval_s(G, G, min_s=0.0) == 0.0


@pytest.mark.parametrize(
    ("kernel_wakes", "floor"),
    [(False, policy.PARKED_GROWTH_BPS), (True, policy.KERNEL_PARKED_GROWTH_BPS)],
)
def test_a_long_still_tree_keeps_its_parked_worst_case(kernel_wakes: bool, floor: int) -> None:
    # Still for minutes, the worst case decays no further than the parked rate: 4 MiB of
    # headroom lasts 4 ms at 1 GiB/s (31 ms at 128 MiB/s), under either cap.
    headroom = 4 * M
    t = policy.next_interval_s(G - headroom, G, flat_s=100.0, kernel_wakes=kernel_wakes)
    assert t == pytest.approx(headroom / floor)


def test_a_first_sample_is_still_for_no_time_at_all() -> None:
    for rss in (0, 1, M, 100 * M):
        assert policy.Flatness(slack_bytes=M).observe(rss, 5.0) == 0.0


def test_an_empty_tree_holding_still_is_still() -> None:
    f = policy.Flatness(slack_bytes=M)
    assert f.observe(0, 0.0) == 0.0
    assert f.observe(0, 1.0) == 1.0
    assert f.observe(M, 2.0) == 2.0  # up by exactly the slack: still


def test_growth_of_exactly_the_slack_is_still_and_one_byte_more_is_not() -> None:
    f = policy.Flatness(slack_bytes=M)
    f.observe(100 * M, 0.0)
    assert f.observe(101 * M, 1.0) == 1.0
    assert f.observe(101 * M + 1, 2.0) == 0.0


@pytest.mark.parametrize(
    ("status", "vsz", "expected"),
    [
        (66 << 8, 1, True),  # the sanitizers' exit code, address space small
        (67 << 8, 1, False),
        ((128 + signal.SIGSEGV) << 8, 1, True),  # a shell reporting a crash
        ((128 + signal.SIGILL) << 8, 1, True),
        ((128 + signal.SIGUSR2) << 8, 1, False),  # a shell reporting another signal
        ((128 + signal.SIGTERM) << 8, 1, False),
        (1 << 8, 75, True),  # exactly at `near` of the limit
        (1 << 8, 74, False),
    ],
)
def test_max_as_from_exit_codes_alone(status: int, vsz: int, expected: bool) -> None:
    got = policy.looks_like_max_as(wait_status=status, peak_vsz_bytes=vsz, max_as_bytes=100)
    assert got is expected
