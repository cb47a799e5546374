"""Limits, the over-quota decision, hysteresis and quotaFreeBytes (docs/contract.md §3, §4, §5)."""

from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ldapquota.quota import (
    UNLIMITED,
    Decision,
    Limit,
    Policy,
    QuotaState,
    Usage,
    below_clear_threshold,
    decide,
    exceeds_over_threshold,
    free_bytes,
    parse_limit_value,
    parse_maildirpp_limit,
)

MiB = 1024 * 1024
STRICT = Policy(over_percent=100, clear_percent=100, free_margin=50 * MiB)


# --------------------------------------------------------------------------- Limit


def test_zero_limits_mean_unlimited():
    assert Limit(0, 0) == Limit(None, None) == UNLIMITED
    assert Limit(0, 0).unlimited
    assert Limit(0, 5) == Limit(None, 5) and not Limit(0, 5).unlimited
    assert Limit(5, 0) == Limit(5, None)


def test_limit_str_is_maildirpp_form():
    assert str(Limit(10000000, 1000)) == "10000000S,1000C"
    assert str(Limit(None, 1000)) == "1000C"
    assert str(Limit(10, None)) == "10S"
    assert str(UNLIMITED) == "unlimited"


# --------------------------------------------------------------------------- Maildir++ limits


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10000000S,1000C", Limit(10000000, 1000)),
        ("1000C,10000000S", Limit(10000000, 1000)),
        ("10000000S", Limit(10000000, None)),
        ("1000C", Limit(None, 1000)),
        ("  10S , 5C  ", Limit(10, 5)),
        ("0S,0C", UNLIMITED),
        ("0S", UNLIMITED),
        ("0S,7C", Limit(None, 7)),
        ("18446744073709551616S", Limit(2**64, None)),
    ],
)
def test_parse_maildirpp_limit(text, expected):
    assert parse_maildirpp_limit(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "10S,20S", "5C,6C", "abc", "100", "100K", "S", "C", "100S,", ",100S", "100S;5C", "-5S", "1.5S", "100s", "100 S", "100SC"],
)
def test_parse_maildirpp_limit_rejects(text):
    with pytest.raises(ValueError):
        parse_maildirpp_limit(text)


@pytest.mark.parametrize(
    "value, unit, expected",
    [
        ("100", 1, Limit(100, None)),
        ("100", 1024, Limit(102400, None)),
        ("100", 1000**2, Limit(100000000, None)),
        (" 42 ", 1, Limit(42, None)),
        ("100", None, Limit(100, None)),  # maildir++ unit: a bare integer is bytes
        ("0", 1024, UNLIMITED),
        ("0", None, UNLIMITED),
        ("10000000S,1000C", 1024, Limit(10000000, 1000)),  # Maildir++ form whatever the unit
        ("10000000S", 1024, Limit(10000000, None)),
        ("1000C", 1024, Limit(None, 1000)),
        ("1000C", None, Limit(None, 1000)),
        ("0S,0C", 1024, UNLIMITED),
    ],
)
def test_parse_limit_value(value, unit, expected):
    assert parse_limit_value(value, unit) == expected


@pytest.mark.parametrize("value", ["-1", "-100", " -5 ", "-0", "abc", "", "1e6", "1.5", "100KiB", "10S,10S", "0x10"])
@pytest.mark.parametrize("unit", [1, 1024, None])
def test_parse_limit_value_rejects(value, unit):
    with pytest.raises(ValueError):
        parse_limit_value(value, unit)


# --------------------------------------------------------------------------- decisions


def test_exactly_at_the_byte_limit_is_over():
    for flagged in (False, True):
        assert decide(Usage(1000, 1), Limit(1000, None), flagged, STRICT).state.over is True


def test_one_byte_below_the_byte_limit_is_not_over():
    for flagged in (False, True):
        assert decide(Usage(999, 1), Limit(1000, None), flagged, STRICT).state.over is False


def test_count_limit_reached_is_over():
    assert decide(Usage(0, 100), Limit(None, 100), False, STRICT).state.over is True
    assert decide(Usage(0, 101), Limit(None, 100), False, STRICT).state.over is True
    assert decide(Usage(10, 100), Limit(10**9, 100), False, STRICT).state.over is True


def test_count_one_below_the_limit_is_not_over():
    assert decide(Usage(0, 99), Limit(None, 100), False, STRICT).state.over is False
    assert decide(Usage(0, 99), Limit(None, 100), True, STRICT).state.over is False


def test_either_dimension_is_enough():
    assert decide(Usage(1000, 0), Limit(1000, 100), False, STRICT).state.over is True
    assert decide(Usage(0, 100), Limit(1000, 100), False, STRICT).state.over is True
    assert decide(Usage(999, 99), Limit(1000, 100), False, STRICT).state.over is False


def test_over_percent_below_100():
    policy = Policy(over_percent=90, clear_percent=90, free_margin=0)
    assert decide(Usage(900, 0), Limit(1000, None), False, policy).state.over is True
    assert decide(Usage(899, 0), Limit(1000, None), False, policy).state.over is False


HYST = Policy(over_percent=100, clear_percent=90, free_margin=50 * MiB)


def test_hysteresis_at_95_percent_keeps_a_set_flag():
    assert decide(Usage(950, 0), Limit(1000, None), True, HYST).state.over is True


def test_hysteresis_at_95_percent_does_not_set_a_clear_flag():
    assert decide(Usage(950, 0), Limit(1000, None), False, HYST).state.over is False


def test_hysteresis_exactly_at_clear_percent_stays_over():
    # Cleared only when usage < clear_percent %.
    assert decide(Usage(900, 0), Limit(1000, None), True, HYST).state.over is True


def test_hysteresis_below_clear_percent_clears():
    assert decide(Usage(899, 0), Limit(1000, None), True, HYST).state.over is False


def test_hysteresis_at_100_percent_sets():
    assert decide(Usage(1000, 0), Limit(1000, None), False, HYST).state.over is True


def test_threshold_helpers_agree_with_the_rule():
    limit = Limit(1000, 10)
    assert exceeds_over_threshold(Usage(1000, 0), limit, HYST)
    assert not exceeds_over_threshold(Usage(999, 9), limit, HYST)
    assert exceeds_over_threshold(Usage(0, 10), limit, HYST)
    assert below_clear_threshold(Usage(899, 0), limit, HYST)
    assert not below_clear_threshold(Usage(900, 0), limit, HYST)
    assert not below_clear_threshold(Usage(0, 10), limit, HYST)


@pytest.mark.parametrize("flagged", [False, True])
@pytest.mark.parametrize("usage", [Usage(0, 0), Usage(10**15, 10**9)])
def test_unlimited_is_never_over_and_has_no_free_bytes(flagged, usage):
    decision = decide(usage, UNLIMITED, flagged, STRICT)
    assert isinstance(decision, Decision)
    assert decision.state == QuotaState(False, None)
    assert decide(usage, Limit(0, 0), flagged, STRICT).state == QuotaState(False, None)


def test_count_only_limit_has_no_free_bytes():
    assert decide(Usage(10, 1), Limit(None, 100), False, STRICT).state.free_bytes is None


def test_decision_has_a_reason():
    reason = decide(Usage(1000, 1), Limit(1000, None), False, STRICT).reason
    assert isinstance(reason, str) and "1000" in reason


# --------------------------------------------------------------------------- quotaFreeBytes


def test_free_bytes_absent_when_far_from_full():
    limit = Limit(100 * MiB, None)
    assert free_bytes(Usage(40 * MiB, 1), limit, STRICT) is None  # 60 MiB left > 50 MiB margin
    assert decide(Usage(40 * MiB, 1), limit, False, STRICT).state.free_bytes is None


def test_free_bytes_published_within_the_margin():
    limit = Limit(100 * MiB, None)
    assert free_bytes(Usage(60 * MiB, 1), limit, STRICT) == 40 * MiB
    assert decide(Usage(60 * MiB, 1), limit, False, STRICT).state == QuotaState(False, 40 * MiB)


def test_free_bytes_published_exactly_at_the_margin():
    limit = Limit(100 * MiB, None)
    assert free_bytes(Usage(50 * MiB, 1), limit, STRICT) == 50 * MiB
    assert free_bytes(Usage(50 * MiB - 1, 1), limit, STRICT) is None


def test_free_bytes_is_zero_once_over():
    limit = Limit(100 * MiB, None)
    assert decide(Usage(100 * MiB, 1), limit, False, STRICT).state == QuotaState(True, 0)
    assert decide(Usage(150 * MiB, 1), limit, True, STRICT).state == QuotaState(True, 0)


def test_free_bytes_with_zero_margin_only_when_full():
    policy = Policy(100, 100, 0)
    assert free_bytes(Usage(999, 0), Limit(1000, None), policy) is None
    assert free_bytes(Usage(1000, 0), Limit(1000, None), policy) == 0


# --------------------------------------------------------------------------- exact arithmetic


def test_one_byte_below_a_huge_limit_is_not_over_with_integer_percent():
    limit = 10**18 + 1
    assert decide(Usage(limit - 1, 0), Limit(limit, None), False, STRICT).state.over is False
    assert decide(Usage(limit, 0), Limit(limit, None), False, STRICT).state.over is True


def test_one_byte_below_a_huge_limit_is_not_over_with_float_percent():
    # parse_config() hands percentages over as floats (100.0); quota.py promises that
    # "100 % of a 10**18 limit is exact".
    policy = Policy(over_percent=100.0, clear_percent=100.0, free_margin=50 * MiB)
    limit = 10**18 + 1
    assert decide(Usage(limit - 1, 0), Limit(limit, None), False, policy).state.over is False


# --------------------------------------------------------------------------- properties

percents = st.integers(1, 200)
usages = st.builds(Usage, st.integers(0, 10**13), st.integers(0, 10**6))
limits = st.builds(
    Limit,
    st.one_of(st.none(), st.integers(0, 10**13)),
    st.one_of(st.none(), st.integers(0, 10**6)),
)


@st.composite
def policies(draw):
    over = draw(percents)
    clear = draw(st.integers(1, over))
    margin = draw(st.integers(0, 10**12))
    return Policy(over_percent=over, clear_percent=clear, free_margin=margin)


@settings(max_examples=400, deadline=None)
@given(usages, usages, limits, st.booleans(), policies())
def test_property_decide_is_monotone_in_usage(a, b, limit, flagged, policy):
    low = Usage(min(a.bytes, b.bytes), min(a.messages, b.messages))
    high = Usage(max(a.bytes, b.bytes), max(a.messages, b.messages))
    if decide(low, limit, flagged, policy).state.over:
        assert decide(high, limit, flagged, policy).state.over


@settings(max_examples=400, deadline=None)
@example(Usage(0, 95), Limit(None, 100), 90)  # count between 90 % and 100 % of its limit
@given(usages, limits, percents)
def test_property_with_clear_equal_to_over_the_previous_state_does_not_matter(usage, limit, percent):
    policy = Policy(over_percent=percent, clear_percent=percent, free_margin=50 * MiB)
    assert decide(usage, limit, True, policy).state == decide(usage, limit, False, policy).state


@settings(max_examples=400, deadline=None)
@given(usages, limits, st.booleans(), policies())
def test_property_free_bytes_is_absent_or_between_zero_and_margin(usage, limit, flagged, policy):
    free = decide(usage, limit, flagged, policy).state.free_bytes
    assert free is None or 0 <= free <= policy.free_margin
    if free is not None:
        assert free == max(0, limit.bytes - usage.bytes)
    elif limit.bytes:
        assert limit.bytes - usage.bytes > policy.free_margin


@settings(max_examples=300, deadline=None)
@given(usages, st.booleans(), policies())
def test_property_unlimited_is_never_over(usage, flagged, policy):
    assert decide(usage, UNLIMITED, flagged, policy).state == QuotaState(False, None)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**19), st.integers(0, 10**19), st.integers(1, 200), st.booleans())
def test_property_byte_rule_matches_exact_rational_arithmetic(limit, used, percent, flagged):
    policy = Policy(over_percent=percent, clear_percent=percent, free_margin=0)
    expected = Fraction(used) >= Fraction(percent, 100) * limit
    assert decide(Usage(used, 0), Limit(limit, None), flagged, policy).state.over is expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**13), st.integers(0, 10**13), st.booleans())
def test_property_at_or_above_the_limit_is_over_below_is_not_with_defaults(limit, used, flagged):
    state = decide(Usage(used, 0), Limit(limit, None), flagged, Policy()).state
    assert state.over is (used >= limit)
