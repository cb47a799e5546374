"""Reading doveadm's quota report (ldapquota/sources/doveadm_report.py): pure, no Dovecot.

The sample texts are what Dovecot 2.3.19 printed in experiments (docs/maildir-and-mta-facts.md
§8); the properties check that any report doveadm could print reads back to what it says,
and that anything else is refused, never read as an empty mailbox.
"""

import json
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ldapquota.errors import SourceUnavailable
from ldapquota.quota import Limit, Policy, Usage, exceeds_over_threshold
from ldapquota.sources.doveadm_report import (
    KIB,
    ReportError,
    RootQuota,
    choose_root,
    errors_by_user,
    fullness,
    http_outcomes,
    local_outcomes,
    read_rows,
    roots_of,
)

BATCH = (
    '[{"username":"u1@example.org","root":"User quota","type":"STORAGE","value":"60","limit":"98","percent":"61"},'
    '{"username":"u1@example.org","root":"User quota","type":"MESSAGE","value":"2","limit":"-","percent":"0"},'
    '{"username":"u2@example.org","root":"User quota","type":"STORAGE","value":"error","limit":"error","percent":"error"},'
    '{"username":"u2@example.org","root":"User quota","type":"MESSAGE","value":"error","limit":"error","percent":"error"}]'
)
STDERR = (
    "Error: net_connect_unix(/run/dovecot/stats-writer) failed: Permission denied\n"
    "doveadm(u2@example.org)<17144><JMR8Aj7EFGv4QgAAg+zDdQ>: Error: quota: Quota STORAGE lookup failed\n"
    "doveadm(u2@example.org): Error: Failed to get quota resource STORAGE: open(maildirsize) failed: Permission denied\n"
    "doveadm(nobody@example.org): Info: User no longer exists, skipping\n"
)
over = Policy()


def says_over(usage: Usage, limit: Limit) -> bool:
    return exceeds_over_threshold(usage, limit, over)


def test_a_batch_reads_per_user_kib_times_1024_and_a_dash_is_no_limit():
    outcomes = local_outcomes(BATCH, STDERR, 75, ["u1@example.org", "u2@example.org", "nobody@example.org"])
    assert outcomes["u1@example.org"] == [RootQuota("User quota", Usage(60 * KIB, 2), Limit(bytes=98 * KIB))]
    assert "Failed to get quota resource STORAGE" in outcomes["u2@example.org"]
    # doveadm's exit code says something failed; nobody has no rows: its error says which
    assert outcomes["nobody@example.org"].startswith("doveadm failed (exit 75)")


def test_an_unknown_user_has_no_rows_and_exit_0():
    outcomes = local_outcomes("[]", "doveadm(x@y): Info: User no longer exists, skipping\n", 0, ["x@y"])
    assert outcomes == {"x@y": "Dovecot does not know this user (check dovecot.user and Dovecot's userdb)"}


def test_errors_on_stderr_beat_rows_that_look_fine():
    """A mail directory Dovecot may not enter reads as an empty mailbox, exit 0; only
    stderr tells. That must be an error, not 0 bytes (which would clear a flag)."""
    rows = '[{"username":"u3","root":"User quota","type":"STORAGE","value":"0","limit":"98","percent":"0"}]'
    stderr = "doveadm(u3): Error: stat(/vmail/u3/Maildir) failed: Permission denied (euid=8(mail))\n"
    outcome = local_outcomes(rows, stderr, 0, ["u3"])["u3"]
    assert isinstance(outcome, str) and "Permission denied" in outcome


@pytest.mark.parametrize(
    "stdout, code",
    [("", 75), ("", 134), ("[]", 75), ("[]", 89)],
)
def test_nobody_answered_and_doveadm_failed_is_the_source_unavailable(stdout, code):
    stderr = "doveadm(a)<1><>: Error: auth-master: userdb lookup(a): connect(auth-userdb) failed\n" \
             "doveadm: Error: Failed to iterate through some users\n"
    with pytest.raises(SourceUnavailable, match=rf"exit {code}.*Failed to iterate"):
        local_outcomes(stdout, stderr, code, ["a", "b"])


@pytest.mark.parametrize(
    "stdout",
    ['[{"username":"a","root":"R","type":"STORAGE","value":"1', "garbage", "{}", '[["a"]]', "[1]",
     '[{"username":"a","root":"R","type":"STORAGE","value":1,"limit":"-"}]', '[{"root":"R"}]',
     '[{"root":"R","type":"STORAGE","value":"1","limit":"-"}]'],
    ids=["truncated", "garbage", "object", "nested", "number", "not-a-string", "short-row", "no-username"],
)
def test_output_that_is_not_the_report_is_an_error_for_every_user(stdout):
    outcomes = local_outcomes(stdout, "", 0, ["a", "b"])
    assert set(outcomes) == {"a", "b"}
    assert all(isinstance(o, str) and "not its quota report" in o for o in outcomes.values())


@pytest.mark.parametrize("value", ["-1", "1.5", "12k", "", " 3", "1e3", "999999999999999999999"])
def test_a_garbage_cell_is_an_error_for_that_user(value):
    rows = [{"username": "a", "root": "R", "type": "STORAGE", "value": value, "limit": "-"},
            {"username": "b", "root": "R", "type": "STORAGE", "value": "1", "limit": "-"}]
    outcomes = local_outcomes(json.dumps(rows), "", 0, ["a", "b"])
    assert isinstance(outcomes["a"], str) and "STORAGE" in outcomes["a"]
    assert outcomes["b"] == [RootQuota("R", Usage(KIB, 0), Limit())]


def test_several_roots_keep_dovecots_order_and_unknown_resources_are_skipped():
    rows = [
        {"root": "User quota", "type": "STORAGE", "value": "10", "limit": "100"},
        {"root": "User quota", "type": "MESSAGE", "value": "3", "limit": "50"},
        {"root": "Archive", "type": "STORAGE", "value": "7", "limit": "-"},
        {"root": "Archive", "type": "X-FOLDERS", "value": "many", "limit": "?"},
    ]
    assert roots_of(rows) == [
        RootQuota("User quota", Usage(10 * KIB, 3), Limit(bytes=100 * KIB, messages=50)),
        RootQuota("Archive", Usage(7 * KIB, 0), Limit()),
    ]
    assert "no STORAGE or MESSAGE" in roots_of([])


def test_a_name_echoed_in_other_case_still_finds_its_user():
    rows = '[{"username":"JANE@EXAMPLE.ORG","root":"R","type":"STORAGE","value":"1","limit":"2"}]'
    assert isinstance(local_outcomes(rows, "", 0, ["jane@example.org"])["jane@example.org"], list)


# --------------------------------------------------------------------------- properties

names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=20).filter(
    lambda s: s == s.strip()
)
cells = st.one_of(st.none(), st.integers(0, 10**15))
roots = st.lists(
    st.tuples(st.sampled_from(["User quota", "Archive", "ns)x", ""]), st.integers(0, 10**12), cells, st.integers(0, 10**9), cells),
    min_size=1, max_size=3, unique_by=lambda r: r[0],
)


def render(report):
    """What doveadm -f json quota get -F prints for ``report`` {user: [(root, kib, kib_limit, n, n_limit)]}."""
    rows = []
    for user, user_roots in report.items():
        for root, kib, kib_limit, count, count_limit in user_roots:
            for kind, value, limit in (("STORAGE", kib, kib_limit), ("MESSAGE", count, count_limit)):
                rows.append({"username": user, "root": root, "type": kind, "value": str(value),
                             "limit": "-" if limit is None else str(limit), "percent": "0"})
    return json.dumps(rows)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, roots, min_size=1, max_size=5))
@example({"a)b": [("User quota", 1, None, 0, None)], "a": [("R", 2, 3, 4, 5)]})
def test_any_report_reads_back_to_what_it_says(report):
    outcomes = local_outcomes(render(report), "", 0, list(report))
    for user, user_roots in report.items():
        assert outcomes[user] == [
            RootQuota(root, Usage(kib * KIB, count), Limit(bytes=None if kl is None else kl * KIB, messages=cl))
            for root, kib, kl, count, cl in user_roots
        ]


@settings(max_examples=200, deadline=None)
@given(st.lists(names, min_size=1, max_size=6, unique=True), st.data())
def test_stderr_errors_land_on_the_user_they_name_however_odd_the_names(users, data):
    victim = data.draw(st.sampled_from(users))
    session = data.draw(st.sampled_from(["", "<123><abc>", "<9><>"]))
    stderr = f"doveadm({victim}){session}: Error: it broke\ndoveadm({victim}): Info: fine\nError: stats-writer\n"
    mine, other = errors_by_user(stderr, users)
    assert mine == {victim: ["Error: it broke"]}
    assert other == ["Error: stats-writer"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_no_output_ever_reads_as_a_measurement_unless_it_is_a_report(blob):
    text = blob.decode("utf-8", "replace")
    try:
        rows = read_rows(text)
    except ReportError:
        outcomes = local_outcomes(text, "", 0, ["u"])
        assert isinstance(outcomes["u"], str)
        return
    assert isinstance(rows, list)


# --------------------------------------------------------------------------- HTTP


def test_http_answers_map_by_tag_and_the_inbox_probe_catches_an_unopenable_mailbox():
    body = json.dumps([
        ["doveadmResponse", [{"root": "User quota", "type": "STORAGE", "value": "3", "limit": "98", "percent": "3"}], "q0"],
        ["doveadmResponse", [{"mailbox": "INBOX", "messages": "2"}], "s0"],
        ["error", {"type": "exitCode", "exitCode": 67}, "q1"],
        ["error", {"type": "exitCode", "exitCode": 67}, "s1"],
        ["doveadmResponse", [{"root": "User quota", "type": "STORAGE", "value": "0", "limit": "98", "percent": "0"}], "q2"],
        ["error", {"type": "exitCode", "exitCode": 75}, "s2"],
    ])
    outcomes = http_outcomes(body, {"q0": "a", "q1": "b", "q2": "c", "q3": "d"}, {"s0": "a", "s1": "b", "s2": "c"})
    assert outcomes["a"] == [RootQuota("User quota", Usage(3 * KIB, 0), Limit(bytes=98 * KIB))]
    assert "does not know" in outcomes["b"]
    assert "cannot open this user's INBOX" in outcomes["c"] and "75" in outcomes["c"]
    assert outcomes["d"] == "the doveadm API gave no answer for this user"


@pytest.mark.parametrize("body", ["", "<html>", "[1]", '[["doveadmResponse", [], 5]]', '[["x", [], "q0"]]', '[["doveadmResponse"'])
def test_an_http_answer_that_is_not_the_report_is_an_error_for_every_user(body):
    outcomes = http_outcomes(body, {"q0": "a", "q1": "b"}, {})
    assert all(isinstance(o, str) and "not its report" in o for o in outcomes.values())


# --------------------------------------------------------------------------- which root decides


def root(name, kib, kib_limit=None, count=0, count_limit=None):
    return RootQuota(name, Usage(kib * KIB, count), Limit(bytes=None if kib_limit is None else kib_limit * KIB, messages=count_limit))


def test_the_configured_limit_is_the_limit_and_the_fullest_root_decides():
    roots = [root("User", 50, 1000), root("Archive", 90, 100)]
    chosen, limit = choose_root(roots, Limit(bytes=80 * KIB), None, says_over)
    assert (chosen.name, limit) == ("Archive", Limit(bytes=80 * KIB))


def test_without_a_configured_limit_each_root_has_its_own_and_one_over_root_is_enough():
    roots = [root("User", 50, 100), root("Messages", 1, None, 99, 100), root("Archive", 101, 100)]
    chosen, limit = choose_root(roots, None, None, says_over)
    assert (chosen.name, limit) == ("Archive", Limit(bytes=100 * KIB))


def test_an_over_root_wins_over_a_fuller_one_that_is_not_over():
    """90 % over_percent: 95 % of bytes is over; 99 % of messages is not (that limit is 100 %)."""
    policy = Policy(over_percent=90, clear_percent=90)
    roots = [root("Messages", 0, None, 99, 100), root("Bytes", 95, 100)]
    chosen, _ = choose_root(roots, None, None, lambda u, lim: exceeds_over_threshold(u, lim, policy))
    assert chosen.name == "Bytes"


def test_a_named_root_is_the_only_one_and_its_absence_is_an_error():
    roots = [root("User", 50, 100), root("Archive", 101, 100)]
    assert choose_root(roots, None, "User", says_over)[0].name == "User"
    with pytest.raises(ValueError, match="no quota root 'Shared'"):
        choose_root(roots, None, "Shared", says_over)


def test_unlimited_everywhere_is_unlimited():
    chosen, limit = choose_root([root("A", 5), root("B", 7)], None, None, says_over)
    assert (chosen.name, limit.unlimited) == ("A", True)


def test_fullness_is_the_fuller_dimension():
    assert fullness(Usage(50, 9), Limit(bytes=100, messages=10)) == Fraction(9, 10)
    assert fullness(Usage(50, 9), Limit()) == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(1, 10**9))
def test_kib_rounding_agrees_with_dovecots_own_over_check(used_bytes, limit_bytes):
    """Dovecot's quota_over_flag check compares ceil(bytes/1024) with ceil(limit/1024);
    ldapquota compares ceil(bytes/1024)·1024 with the limit in bytes: the same answer."""
    def ceil_kib(n):
        return -(-n // KIB)
    dovecot_says_over = ceil_kib(used_bytes) >= ceil_kib(limit_bytes)
    assert says_over(Usage(ceil_kib(used_bytes) * KIB, 0), Limit(bytes=limit_bytes)) == dovecot_says_over
