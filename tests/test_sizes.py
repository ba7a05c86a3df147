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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12Q", "invalid size '12Q': expected a number with a unit, e.g. 500M or 1.5G"),
        ("1.2.3M", "invalid size '1.2.3M': expected a number with a unit, e.g. 500M or 1.5G"),
        ("-5M", "invalid size '-5M': must be zero or more"),
        (float("inf"), "invalid size inf: must be finite"),
        ("2000P", "invalid size '2000P': expected a number with a unit, e.g. 500M or 1.5G"),
        ("2e6T", "invalid size '2e6T': larger than 1048576.0T"),
        (10**400, f"invalid size {repr(10**400)[:40]}: larger than 1048576.0T"),
        (MAX_SIZE + 1, f"invalid size {MAX_SIZE + 1}: larger than 1048576.0T"),
    ],
)
def test_bad_sizes_say_exactly_what_is_wrong(text, message) -> None:
    with pytest.raises(SizeError) as e:
        parse_size(text)
    assert str(e.value) == message


def test_the_largest_size_is_accepted_and_one_more_is_not() -> None:
    assert parse_size(MAX_SIZE) == MAX_SIZE
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    with pytest.raises(SizeError):
        parse_size(str(MAX_SIZE + 1))


@pytest.mark.parametrize("word", ["off", "none", "None", "unlimited", "infinity", " OFF "])
def test_every_word_for_no_limit(word: str) -> None:
    assert parse_optional_size(word) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "invalid fraction 'abc': expected e.g. 80% or 0.8"),
        ("x" * 50, f"invalid fraction {repr('x' * 50)[:40]}: expected e.g. 80% or 0.8"),
        ("120%", "invalid fraction '120%': must be between 0% and 100%"),
        (-0.5, "invalid fraction -0.5: must be between 0% and 100%"),
    ],
)
def test_bad_fractions_say_exactly_what_is_wrong(text, message) -> None:
    with pytest.raises(SizeError) as e:
        parse_fraction(text)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("n", "shown"),
    [(None, "off"), (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (1536 << 10, "1.5M"),
     (1 << 30, "1.0G"), (3 << 40, "3.0T"), (5 << 50, "5120.0T")],
)  # fmt: skip
def test_format_size_table(n, shown) -> None:
    assert format_size(n) == shown


def test_digit_groups_stay_exact() -> None:
    """Underscores group digits ("1_000"); a grouped whole number is as exact as one without."""
    assert parse_size("1_152_921_504_606_846_975") == (1 << 60) - 1
