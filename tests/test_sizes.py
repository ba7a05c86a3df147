"""Size and fraction parsing: a table of inputs, and properties over all inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmrun.errors import PmrunError, SizeError
from pmrun.sizes import MAX_SIZE, format_size, parse_fraction, parse_optional_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1G", 1 << 30),
        ("500M", 500 << 20),
        ("50MB", 50 << 20),
        ("1.5GiB", 3 << 29),
        ("4096", 4096),
        ("4096b", 4096),
        ("1k", 1024),
        (" 2 gb ", 2 << 30),
        ("1T", 1 << 40),
        ("0", 0),
        ("1_000", 1000),
        (512, 512),
        (1.5, 1),
    ],
)
def test_sizes(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "G", "12Q", "1.2.3M", "-5M", "nan", "inf", "1e30G", "M5", "five", True, "1 0M"]
)
def test_bad_sizes_say_what_is_accepted(text) -> None:
    with pytest.raises(SizeError) as e:
        parse_size(text)
    assert "invalid size" in str(e.value)


def test_optional_sizes() -> None:
    assert parse_optional_size("off") is None
    assert parse_optional_size("Unlimited") is None
    assert parse_optional_size("2G") == 2 << 30


@pytest.mark.parametrize(
    ("text", "expected"), [("80%", 0.8), ("0.75", 0.75), (1, 1.0), ("0%", 0.0)]
)
def test_fractions(text, expected) -> None:
    assert parse_fraction(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["120%", "-1", "abc", "%", True])
def test_bad_fractions(text) -> None:
    with pytest.raises(SizeError):
        parse_fraction(text)


@given(st.text(max_size=30))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        value = parse_size(text)
    except PmrunError:
        return
    assert 0 <= value <= MAX_SIZE


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_integers_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n


@given(st.integers(min_value=0, max_value=1 << 50))
def test_formatted_sizes_parse_back_close(n: int) -> None:
    assert abs(parse_size(format_size(n)) - n) <= max(n * 0.05, 1)
