"""The Cyrus source's bookkeeping, with the report's runs recorded instead of started:
which runs a measurement costs, what polling calls changed, and that a reading taken
while a polling report ran is never replaced by that older report. (The real report,
notifications and daemon: tests/test_cyrus.py.)"""

import pytest

from ldapquota.config import parse_config
from ldapquota.cyrus_formats import RootQuota
from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError, MeasureError
from ldapquota.quota import Limit, Usage
from ldapquota.sources import cyrus
from ldapquota.sources.base import MailboxRequest

CONFIG = "ldap:\n  uri: ldap://h\n  base_dn: dc=x\nmailboxes:\n  source: cyrus\n"


def quota(used: int, limit: int = 1000) -> RootQuota:
    return RootQuota(Usage(used, 1), Limit(limit, None))


class Recorded(cyrus.Source):
    """A source whose report is a dict, and which notes each run's arguments."""

    def __init__(self, report):
        super().__init__(parse_config(CONFIG))
        self.report = report
        self.runs = []

    def run(self, roots):
        self.runs.append(list(roots))
        if not roots:
            return dict(self.report)
        wanted = roots[1:]  # after "--"
        return {root: value for root, value in self.report.items() if any(root.startswith(w) for w in wanted)}


def never_over(usage, limit):
    return False


def test_named_roots_are_asked_for_by_name_and_a_crowd_reads_the_whole_report():
    source = Recorded({"user.jane": quota(10), "user.janet": quota(20)})
    results = source.measure_many([MailboxRequest("user.jane", None), MailboxRequest("user.jane", None)], never_over, 0)
    assert [result.usage.bytes for result in results] == [10, 10]
    assert source.runs == [["--", "user.jane"]]
    many = [MailboxRequest(f"user.u{number}", None) for number in range(cyrus.NAMED_ROOTS + 1)]
    assert all(isinstance(result, MeasureError) for result in source.measure_many(many, never_over, 0))
    assert source.runs[-1] == []


def test_the_configured_limit_wins_over_cyrus_own():
    source = Recorded({"user.jane": quota(10, limit=1000)})
    assert source.measure(MailboxRequest("user.jane", Limit(5, None)), never_over, 0).limit == Limit(5, None)
    assert source.measure(MailboxRequest("user.jane", None), never_over, 0).limit == Limit(1000, None)


def test_a_full_pass_reads_the_report_once():
    source = Recorded({"user.a": quota(1), "user.b": quota(2)})
    with source.full_pass() as measuring:
        for _ in range(3):
            measuring.measure_many([MailboxRequest("user.a", None), MailboxRequest("user.b", None)], never_over, 0)
    assert source.runs == [[]]


def test_polling_reports_what_changed_and_measuring_it_costs_no_other_run():
    source = Recorded({"user.a": quota(1), "user.b": quota(2)})
    source.measure_many([MailboxRequest("user.a", None), MailboxRequest("user.b", None)], never_over, 0)
    source.runs.clear()
    source.poll_started()
    changed = source.changed_since_seen({"user.a": quota(1), "user.b": quota(5), "user.c": quota(3)})
    assert sorted(changed) == ["user.b", "user.c"]
    assert source.measure(MailboxRequest("user.b", None), never_over, 0).usage.bytes == 5
    assert source.runs == []
    source.poll_started()
    assert source.changed_since_seen({"user.a": quota(1), "user.c": quota(3)}) == ["user.b"]  # gone
    assert isinstance(source.measure_many([MailboxRequest("user.b", None)], never_over, 0)[0], MeasureError)


def test_a_root_read_while_the_polling_report_ran_keeps_the_newer_reading():
    source = Recorded({"user.a": quota(1)})
    source.measure(MailboxRequest("user.a", None), never_over, 0)
    source.poll_started()  # the report runs in its thread, and sees usage 1...
    source.report = {"user.a": quota(9)}
    source.measure(MailboxRequest("user.a", None), never_over, 0)  # ...while an event reads 9
    assert source.changed_since_seen({"user.a": quota(1)}) == []
    assert source.seen["user.a"] == quota(9)


def test_what_was_read_ahead_is_not_used_after_a_change_or_when_stale(monkeypatch):
    source = Recorded({"user.a": quota(1), "user.b": quota(2)})
    source.prefetch(["user.a", "user.b"])
    assert source.runs == [["--", "user.a", "user.b"]]
    source.measure(MailboxRequest("user.a", None), never_over, 0)
    assert len(source.runs) == 1
    source.forget_fresh(["user.b"])  # a notification came for it
    source.measure(MailboxRequest("user.b", None), never_over, 0)
    assert len(source.runs) == 2
    source.prefetch(["user.a", "user.b"])
    now = cyrus.time.monotonic()
    monkeypatch.setattr(cyrus.time, "monotonic", lambda: now + cyrus.FRESH_FOR + 1)
    source.measure(MailboxRequest("user.a", None), never_over, 0)
    assert len(source.runs) == 4


def test_locate_names_the_root_and_refuses_a_name_that_is_not_one():
    source = Recorded({})
    assert source.locate(AccountEntry("uid=jane", {}), "jane@example.org") == "user.jane"
    with pytest.raises(AccountError, match="hierarchy separator"):
        source.locate(AccountEntry("uid=jd", {}), "john.doe@example.org")
