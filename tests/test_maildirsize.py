"""The ``maildirsize`` parser and the "distrust an over verdict" rule (docs/maildir-and-mta-facts.md §1.1, §1.2).

Expected values are written by hand (or computed here from the lines the test itself
builds), never taken from the code under test.
"""

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ldapquota.maildirsize import (
    MAX_FILE_SIZE,
    STALE_SECONDS,
    MaildirsizeFile,
    distrust_over_verdict,
    parse_maildirsize,
)
from ldapquota.quota import Limit, Usage


def good(parsed: MaildirsizeFile, header: Limit, usage: Usage, lines: int) -> None:
    """The file was read and trusted: exact header, exact sums, no problem."""
    assert parsed.problem is None, parsed.problem
    assert parsed.header_limit == header
    assert parsed.usage == usage
    assert parsed.usage_lines == lines


def refused(parsed: MaildirsizeFile) -> None:
    """The usage lines cannot be trusted: no usage, and a sentence saying why."""
    assert parsed.usage is None
    assert isinstance(parsed.problem, str) and parsed.problem


# --------------------------------------------------------------------------- constants


def test_constants_are_the_maildirpp_ones():
    assert MAX_FILE_SIZE == 5120
    assert STALE_SECONDS == 900


# --------------------------------------------------------------------------- what writers write


def test_exim_rebuilt_file_with_zero_header_is_unlimited():
    # Exim always writes both items, even 0: "0S,0C" means no quota at all.
    parsed = parse_maildirsize(b"0S,0C\n12345 7\n")
    good(parsed, Limit(None, None), Usage(12345, 7), 1)
    assert parsed.header_limit.unlimited


def test_exim_appended_delivery_lines_are_summed():
    parsed = parse_maildirsize(b"5000000S,0C\n1000 3\n250 1\n4096 1\n")
    good(parsed, Limit(5000000, None), Usage(1000 + 250 + 4096, 5), 3)


def test_dovecot_verified_file():
    # docs/maildir-and-mta-facts.md §1.7: with quota_rule = *:storage=1M Dovecot wrote exactly this.
    good(parse_maildirsize(b"1048576S\n5320 3\n"), Limit(1048576, None), Usage(5320, 3), 1)


def test_courier_fourteen_byte_padded_lines():
    lines = [b"12345 1", b"678 2", b"-678 -2"]
    padded = b"".join(line.ljust(13) + b"\n" for line in lines)
    assert all(len(line.ljust(13) + b"\n") == 14 for line in lines)
    good(parse_maildirsize(b"10000000S,1000C\n" + padded), Limit(10000000, 1000), Usage(12345, 1), 3)


def test_header_with_both_items_in_either_order():
    assert parse_maildirsize(b"1000C,10000000S\n1 1\n").header_limit == Limit(10000000, 1000)


def test_count_only_header():
    good(parse_maildirsize(b"1000C\n10 1\n"), Limit(None, 1000), Usage(10, 1), 1)


@pytest.mark.parametrize(
    "line",
    [b"  100 2", b"100 2  ", b"\t100\t2\t", b" \t 100 \t 2 \t ", b"100     2"],
    ids=["leading-spaces", "trailing-spaces", "tabs", "mixed", "wide-separator"],
)
def test_leading_and_trailing_whitespace_is_allowed(line):
    good(parse_maildirsize(b"1000S\n" + line + b"\n"), Limit(1000, None), Usage(100, 2), 1)


def test_header_surrounded_by_whitespace_is_read():
    assert parse_maildirsize(b"  1000S,5C \t\n1 1\n").header_limit == Limit(1000, 5)


def test_negative_lines_are_deletions_and_sum_fine():
    parsed = parse_maildirsize(b"1000S\n500 3\n-200 -1\n-100 -1\n")
    good(parsed, Limit(1000, None), Usage(200, 1), 3)


def test_total_exactly_zero_is_fine():
    good(parse_maildirsize(b"1000S\n500 3\n-500 -3\n"), Limit(1000, None), Usage(0, 0), 2)


@pytest.mark.parametrize(
    "body",
    [b"100 1\n-200 -1\n", b"100 1\n0 -2\n", b"-1 0\n"],
    ids=["negative-bytes", "negative-count", "single-negative-line"],
)
def test_negative_total_is_a_problem(body):
    parsed = parse_maildirsize(b"1000S\n" + body)
    refused(parsed)
    assert "negative" in parsed.problem
    assert parsed.header_limit == Limit(1000, None)


def test_missing_final_newline_is_a_problem():
    # Every line ends in \n; an unterminated last line may be a write in progress.
    refused(parse_maildirsize(b"1000S\n100 1\n200 1"))


def test_nul_byte_is_a_problem():
    # Dovecot recalculates when the file holds a NUL byte.
    parsed = parse_maildirsize(b"1000S\n100 1\n\x00\x00\n")
    refused(parsed)
    parsed = parse_maildirsize(b"1000S\n10\x000 1\n")
    refused(parsed)


def test_crlf_line_endings_never_give_a_wrong_usage():
    parsed = parse_maildirsize(b"1000S\r\n100 1\r\n50 2\r\n")
    assert parsed.header_limit == Limit(1000, None)
    # Either read right, or refused (a walk is always right); never misread.
    if parsed.usage is not None:
        assert parsed.usage == Usage(150, 3) and parsed.problem is None
    else:
        refused(parsed)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe\x00binary\x01\x02",
        b"hello world\nthis is not a maildirsize\n",
        b"1000S\nabc def\n",
        b"1000S\n100\n",  # one number only
        b"1000S\n100 1 7\n",  # three numbers
        b"1000S\n1e3 1\n",
        b"1000S\n0x10 1\n",
        b"1000S\n1.5 1\n",
        b"1000S\n\xc3\xa9 1\n",
        b"1000S\n\xd9\xa1 1\n",  # ARABIC-INDIC DIGIT ONE in UTF-8 is not a digit here
    ],
)
def test_garbage_is_a_problem(data):
    refused(parse_maildirsize(data))


def test_empty_file_is_a_problem_without_header():
    parsed = parse_maildirsize(b"")
    refused(parsed)
    assert parsed.header_limit is None


def test_header_only_is_a_problem_but_keeps_the_header():
    # Courier: the file has two or more lines.
    parsed = parse_maildirsize(b"1000S,10C\n")
    refused(parsed)
    assert parsed.header_limit == Limit(1000, 10)


@pytest.mark.parametrize("header", [b"garbage", b"1000", b"1000K", b"1000S,1000S", b"-5S", b"\xff"])
def test_unreadable_header_has_no_limit_and_file_is_not_trusted(header):
    parsed = parse_maildirsize(header + b"\n100 1\n")
    assert parsed.header_limit is None
    refused(parsed)


def _file_of_length(length: int) -> "tuple[bytes, Usage, int]":
    """A well-formed file of exactly ``length`` bytes, with its usage computed here."""
    header = b"1000000S\n"
    rest = length - len(header)
    full = (rest - 4) // 4  # lines "1 1\n", then one padded last line
    pad = rest - 4 * full - 4
    data = header + b"1 1\n" * full + b"1 1" + b" " * pad + b"\n"
    assert len(data) == length
    return data, Usage(full + 1, full + 1), full + 1


def test_file_of_5119_bytes_is_read():
    data, usage, lines = _file_of_length(5119)
    good(parse_maildirsize(data), Limit(1000000, None), usage, lines)


@pytest.mark.parametrize("length", [5120, 5121, 9000])
def test_file_of_5120_bytes_or_more_is_a_problem(length):
    data, _, _ = _file_of_length(length)
    parsed = parse_maildirsize(data)
    refused(parsed)
    assert parsed.header_limit == Limit(1000000, None)


def test_huge_numbers_above_2_63_are_summed_exactly():
    big = 2**63 + 12345
    data = b"%dS\n%d 1\n%d 2\n" % (2**64, big, big)
    good(parse_maildirsize(data), Limit(2**64, None), Usage(2 * big, 3), 2)


def test_usage_line_with_more_than_4300_digits_does_not_raise():
    # Python refuses int() of more than 4300 digits (ValueError) unless told otherwise;
    # a file that is well under 5120 bytes must still be handled: read exactly or refused.
    digits = b"1" * 4400
    data = b"1000S\n" + digits + b" 1\n"
    assert len(data) < MAX_FILE_SIZE
    parsed = parse_maildirsize(data)  # must not raise
    if parsed.usage is not None:
        repunit = (10**4400 - 1) // 9  # 4400 ones, built without a string conversion
        assert parsed.usage == Usage(repunit, 1) and parsed.problem is None
    else:
        refused(parsed)


def test_header_with_more_than_4300_digits_does_not_raise():
    parsed = parse_maildirsize(b"1" * 4400 + b"S\n100 1\n")
    assert parsed.usage is None or parsed.usage == Usage(100, 1)


# --------------------------------------------------------------------------- properties

line_values = st.tuples(st.integers(-(10**6), 10**15), st.integers(-100, 10**6))


@settings(max_examples=200, deadline=None)
@given(st.lists(line_values, min_size=1, max_size=40), st.integers(0, 10**12), st.integers(0, 10**6))
def test_property_non_negative_totals_parse_to_the_sums(lines, limit_bytes, limit_count):
    total_bytes = sum(b for b, _ in lines)
    total_count = sum(c for _, c in lines)
    if total_bytes < 0 or total_count < 0:
        lines = lines + [(max(0, -total_bytes), max(0, -total_count))]
        total_bytes = sum(b for b, _ in lines)
        total_count = sum(c for _, c in lines)
    data = b"%dS,%dC\n" % (limit_bytes, limit_count) + b"".join(b"%d %d\n" % line for line in lines)
    expected_limit = Limit(limit_bytes or None, limit_count or None)
    good(parse_maildirsize(data), expected_limit, Usage(total_bytes, total_count), len(lines))


@settings(max_examples=150, deadline=None)
@given(st.lists(line_values, min_size=1, max_size=30))
def test_property_negative_total_is_always_a_problem(lines):
    total_bytes = sum(b for b, _ in lines)
    total_count = sum(c for _, c in lines)
    data = b"0S\n" + b"".join(b"%d %d\n" % line for line in lines)
    parsed = parse_maildirsize(data)
    if total_bytes < 0 or total_count < 0:
        refused(parsed)
    else:
        good(parsed, Limit(), Usage(total_bytes, total_count), len(lines))


whitespace = st.text(alphabet=" \t", max_size=6).map(str.encode)
separator = st.text(alphabet=" \t", min_size=1, max_size=6).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10**9), st.integers(0, 1000), whitespace, separator, whitespace),
        min_size=1,
        max_size=20,
    ),
    whitespace,
    whitespace,
)
def test_property_padding_whitespace_never_changes_the_result(lines, head_left, head_right):
    plain = b"5000S,10C\n" + b"".join(b"%d %d\n" % (b, c) for b, c, _, _, _ in lines)
    padded = head_left + b"5000S,10C" + head_right + b"\n"
    padded += b"".join(left + b"%d" % b + sep + b"%d" % c + right + b"\n" for b, c, left, sep, right in lines)
    assert len(padded) < MAX_FILE_SIZE
    expected = Usage(sum(x[0] for x in lines), sum(x[1] for x in lines))
    assert parse_maildirsize(plain) == parse_maildirsize(padded)
    good(parse_maildirsize(padded), Limit(5000, 10), expected, len(lines))


def _check_any(data: bytes) -> None:
    parsed = parse_maildirsize(data)  # never raises
    assert isinstance(parsed, MaildirsizeFile)
    if parsed.usage is not None:
        assert parsed.problem is None
        assert parsed.usage.bytes >= 0 and parsed.usage.messages >= 0
        assert parsed.usage_lines >= 1
        assert len(data) < MAX_FILE_SIZE
        assert b"\0" not in data and data.endswith(b"\n")
    else:
        assert isinstance(parsed.problem, str) and parsed.problem
    if len(data) >= MAX_FILE_SIZE:
        assert parsed.usage is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_property_any_bytes_never_raise_and_usage_is_never_negative(data):
    _check_any(data)


tokens = st.sampled_from(
    [b"0S", b"1000S", b"5C", b",", b"100 1", b"-100 -1", b"-5", b"7", b"9" * 20, b" ", b"\t", b"\n", b"\r", b"\0", b"S", b"C", b"-", b"\xff"]
)


@settings(max_examples=400, deadline=None)
@example(b"0S\n-1 0\n")
@example(b"0S\n1 -1\n")
@given(st.lists(tokens, max_size=60).map(b"".join))
def test_property_near_miss_files_never_raise_and_usage_is_never_negative(data):
    _check_any(data)


# --------------------------------------------------------------------------- distrust_over_verdict


def _parsed(lines: int) -> MaildirsizeFile:
    parsed = parse_maildirsize(b"1000S\n" + b"600 1\n" * lines)
    assert parsed.usage_lines == lines and parsed.usage is not None
    return parsed


def test_one_line_fresh_file_is_trusted():
    assert distrust_over_verdict(_parsed(1), 0) is None


def test_one_line_file_899_seconds_old_is_trusted():
    assert distrust_over_verdict(_parsed(1), 899) is None
    assert distrust_over_verdict(_parsed(1), 899.999) is None


@pytest.mark.parametrize("age", [900, 900.0, 1200, 86400])
def test_file_900_seconds_old_or_more_is_distrusted(age):
    reason = distrust_over_verdict(_parsed(1), age)
    assert isinstance(reason, str) and reason


@pytest.mark.parametrize("lines", [2, 3, 10])
def test_more_than_one_usage_line_is_distrusted_even_when_fresh(lines):
    reason = distrust_over_verdict(_parsed(lines), 0)
    assert isinstance(reason, str) and reason
