"""Sizes, durations and change limits as operators write them in the config (docs/contract.md §7)."""

import math
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ldapquota.units import ChangeLimit, parse_change_limit, parse_duration, parse_size

# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("50MiB", 50 * 1024 * 1024),
        ("50mib", 50 * 1024 * 1024),
        ("50 MiB", 50 * 1024 * 1024),
        ("1GB", 1_000_000_000),
        ("1GiB", 1024**3),
        ("1.5KiB", 1536),
        ("2kB", 2000),
        ("1TiB", 1024**4),
        ("0", 0),
        ("0MiB", 0),
        ("12345", 12345),
        ("12345B", 12345),
        (" 7 ", 7),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "MiB", "-1", "-1MiB", "1XB", "1.5.5", "1e3", "50 Mi B", "lots", "1,5MiB", -1, True, False, None, 1.5, [50], {}],
)
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([("", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("kB", 1000), ("MB", 10**6), ("GB", 10**9)]))
def test_property_integer_sizes_multiply_exactly(number, unit):
    suffix, factor = unit
    assert parse_size(f"{number}{suffix}") == number * factor


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, expected",
    [("1h", 3600.0), ("90s", 90.0), ("5m", 300.0), ("60", 60.0), ("1.5h", 5400.0), (" 2m ", 120.0), (30, 30.0), (0.5, 0.5)],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "bad", ["0", "0s", 0, 0.0, "-5s", "-1", -1, "", "abc", "1y", "h", "1 hour", True, None, [1]]
)
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "inf"], ids=["float-nan", "float-inf", "text-nan", "text-inf"])
def test_parse_duration_rejects_nan_and_infinity(bad):
    # YAML's .nan / .inf arrive as floats; a daemon cannot sleep NaN seconds.
    with pytest.raises(ValueError):
        parse_duration(bad)


# --------------------------------------------------------------------------- change limits


def test_percent_change_limit():
    limit = parse_change_limit("10%")
    assert limit == ChangeLimit(percent=10.0)
    assert limit.allowed(100) == 10
    assert limit.allowed(1000) == 100
    assert limit.allowed(5) == 0  # 10 % of 5 accounts is half a flip: none


def test_count_change_limit():
    assert parse_change_limit(25) == ChangeLimit(count=25)
    assert parse_change_limit("25") == ChangeLimit(count=25)
    assert parse_change_limit(25).allowed(10) == 25
    assert parse_change_limit(25).allowed(100000) == 25


def test_zero_change_limit_allows_nothing():
    for value in (0, "0", "0%"):
        assert parse_change_limit(value).allowed(1000) == 0


def test_hundred_percent_allows_everything():
    assert parse_change_limit("100%").allowed(12345) == 12345


def test_change_limit_str():
    assert str(parse_change_limit("10%")) == "10%"
    assert str(parse_change_limit(25)) == "25"


@pytest.mark.parametrize("bad", ["150%", "100.5%", "-5%", "-1", -1, "abc", "%", "ten%", "10 percent", "", "1.5", True, None, 2.5, "nan%", "inf%"])
def test_parse_change_limit_rejects(bad):
    with pytest.raises(ValueError):
        parse_change_limit(bad)


@settings(max_examples=400, deadline=None)
@example(625, 3248)  # 32.48 % of 625 accounts is exactly 203 flips
@given(st.integers(0, 100000), st.integers(0, 10000))
def test_property_percent_allowed_is_the_exact_floor(accounts, hundredths):
    text = f"{hundredths // 100}.{hundredths % 100:02d}"
    limit = parse_change_limit(text + "%")
    assert limit.allowed(accounts) == math.floor(accounts * Fraction(text) / 100)
