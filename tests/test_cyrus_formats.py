"""Cyrus's formats, read without Cyrus (ldapquota/cyrus_formats.py): the JSON quota report,
imapd.conf, event notifications and quota root names. The samples are what Cyrus 3.6.1
printed and sent in the integration tests (tests/test_cyrus.py checks them against the real
thing)."""

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ldapquota.cyrus_formats import (
    ReportError,
    RootQuota,
    encode_mutf7,
    event_settings,
    governing_roots,
    mailbox_from_uri,
    notification_mailbox,
    parse_imapd_conf,
    parse_report,
    quota_root,
)
from ldapquota.paths import PathTemplate
from ldapquota.quota import Limit, Usage

# `quota -J` of Cyrus 3.6.1: a 100 KiB limit shows as 102400 (bytes); no MESSAGE limit, no "limit".
REPORT = """{
  "user.jane": {
    "STORAGE": {"used": 5357, "limit": 102400},
    "MESSAGE": {"used": 1, "limit": 3},
    "X-ANNOTATION-STORAGE": {"used": 0},
    "X-NUM-FOLDERS": {"used": 1}
  },
  "user/x&AOk-y@example.org": {
    "STORAGE": {"used": 0, "limit": 102400},
    "MESSAGE": {"used": 0},
    "X-ANNOTATION-STORAGE": {"used": 0},
    "X-NUM-FOLDERS": {"used": 1}
  }
}
"""


def test_the_report_gives_bytes_and_counts_per_root():
    report = parse_report(REPORT)
    assert report["user.jane"] == RootQuota(Usage(5357, 1), Limit(102400, 3))
    assert report["user/x&AOk-y@example.org"] == RootQuota(Usage(0, 0), Limit(102400, None))


def test_an_empty_report_has_no_roots():
    assert parse_report("{}\n") == {}


@pytest.mark.parametrize("text", [
    "", "garbage", "[]", '"x"', '{"user.a": 1}', '{"user.a": {}}', '{"user.a": {"STORAGE": {"used": 1}}}',
    '{"user.a": {"STORAGE": {"used": -1}, "MESSAGE": {"used": 0}}}',
    '{"user.a": {"STORAGE": {"used": true}, "MESSAGE": {"used": 0}}}',
    '{"user.a": {"STORAGE": {"used": 1.5}, "MESSAGE": {"used": 0}}}',
    '{"user.a": {"STORAGE": {"used": 1, "limit": "x"}, "MESSAGE": {"used": 0}}}',
    '{"user.a": {"STORAGE": {"used": 1, "limit": null}, "MESSAGE": {"used": 0}}}',
    '{"": {"STORAGE": {"used": 1}, "MESSAGE": {"used": 0}}}',
])
def test_anything_but_the_report_is_refused(text):
    with pytest.raises(ReportError):
        parse_report(text)


counts = st.integers(min_value=0, max_value=2**63)


@given(st.dictionaries(st.text(min_size=1), st.tuples(counts, counts, st.none() | counts, st.none() | counts)))
def test_any_report_cyrus_could_print_reads_back(roots):
    document = {}
    for root, (used, messages, limit, message_limit) in roots.items():
        storage = {"used": used} if limit is None else {"used": used, "limit": limit}
        count = {"used": messages} if message_limit is None else {"used": messages, "limit": message_limit}
        document[root] = {"STORAGE": storage, "MESSAGE": count, "X-NUM-FOLDERS": {"used": 1}}
    report = parse_report(json.dumps(document, indent=2))
    assert set(report) == set(roots)
    for root, (used, messages, limit, message_limit) in roots.items():
        assert report[root] == RootQuota(Usage(used, messages), Limit(limit, message_limit))


@given(st.text())
def test_any_text_is_a_report_or_a_report_error(text):
    try:
        parse_report(text)
    except ReportError:
        pass


# --------------------------------------------------------------------------- imapd.conf

def test_imapd_conf_is_read_as_cyrus_reads_it():
    options = parse_imapd_conf("# comment\n\nconfigdirectory: /var/lib/cyrus \n  Event_Notifier:ldapquota\n"
                               "event_notifier: second\nbroken line\n")
    assert options == {"configdirectory": "/var/lib/cyrus", "event_notifier": "ldapquota"}


def test_events_need_a_notifier_and_the_message_group():
    assert event_settings({}).problem and event_settings({}).socket is None
    settings = event_settings({"event_notifier": "ldapquota", "configdirectory": "/c"})
    assert settings == ("/c/socket/notify", None, None, "/c")  # event_groups defaults to "message mailbox"
    assert event_settings({"event_notifier": "x", "event_groups": "mailbox"}).socket is None
    settings = event_settings({"event_notifier": "x", "event_groups": "message", "notifysocket": "{configdirectory}/n",
                               "configdirectory": "/var/lib/cyrus"})
    assert settings.socket == "/var/lib/cyrus/n"
    assert event_settings({"event_notifier": "x", "notifysocket": "dlist:/s"}).socket is None
    assert event_settings({"event_notifier": "x", "notifysocket": "relative"}).socket is None


def test_the_quota_event_group_is_warned_about():
    settings = event_settings({"event_notifier": "x", "event_groups": "message quota", "notifysocket": "/s"})
    assert settings.socket == "/s" and "3.6.1" in (settings.warning or "")


# --------------------------------------------------------------------------- notifications

def datagram(message: str, klass: str = "EVENT", options=()) -> bytes:
    fields = ["ldapquota", klass, "", "", "", str(len(options)), *options, message]
    return "\0".join(fields).encode() + b"\0"


def test_a_delivery_names_its_mailbox():
    message = ('{"event":"MessageNew","timestamp":"2026-12-06T02:13:55.463Z","uri":"imap://vm/user.jane;'
               'UIDVALIDITY=1796523236/;UID=1","pid":26122,"user":"jane"}')
    assert notification_mailbox(datagram(message)) == "user.jane"
    assert notification_mailbox(datagram(message, options=["a", "b"])) == "user.jane"


@pytest.mark.parametrize("uri, mailbox", [
    ("imap://vm/user/john.doe%40example.org;UIDVALIDITY=1796523368", "user/john.doe@example.org"),
    ("imap://vm/user/john.doe/Sent.Items%40example.org;UIDVALIDITY=1/;UID=1", "user/john.doe/Sent.Items@example.org"),
    ("imap://vm/user/x%C3%A9y%40example.org;UIDVALIDITY=1/;UID=1", "user/x&AOk-y@example.org"),
    ("imap://someone@vm/user.jane", "user.jane"),
    ("imap://vm/", None),
    ("imap://vm", None),
    ("http://vm/user.jane", None),
    ("imap://vm/user.%FF", None),
    ("imap://vm/user.%0Ajane", None),
])
def test_uris_are_spelt_as_the_report_spells_roots(uri, mailbox):
    assert mailbox_from_uri(uri) == mailbox


@pytest.mark.parametrize("data", [
    b"", b"garbage", datagram('{"uri": "imap://vm/user.jane"}', klass="MAIL"), datagram("not json"),
    datagram('["imap://vm/user.jane"]'), datagram('{"event": "Login"}'), datagram('{"uri": 5}'),
    b"m\0EVENT\0\0\0\0x\0{}\0", b"m\0EVENT\0\0\0\x009\0{}\0", b'm\0EVENT\0\0\0\x000\0{"uri": "imap://vm/user.\xff"}\0',
])
def test_other_notifications_name_no_mailbox(data):
    assert notification_mailbox(data) is None


@given(st.binary())
def test_any_datagram_names_a_mailbox_or_nothing(data):
    mailbox = notification_mailbox(data)
    assert mailbox is None or (mailbox and mailbox.isprintable())


def test_roots_above_a_mailbox_are_candidates():
    assert governing_roots("user.jane.Sent") == ["user", "user.jane", "user.jane.Sent"]
    assert governing_roots("user/john.doe/Sent@example.org") == [
        "user@example.org", "user/john@example.org", "user/john.doe@example.org", "user/john.doe/Sent@example.org"]
    assert governing_roots("user.jane") == ["user", "user.jane"]


@given(st.text(min_size=1))
def test_a_mailbox_is_always_its_own_candidate(mailbox):
    assert mailbox in governing_roots(mailbox)


# --------------------------------------------------------------------------- root names

@pytest.mark.parametrize("template, address, root", [
    ("user.{localpart}", "jane@example.org", "user.jane"),
    ("user/{localpart}", "john.doe@example.org", "user/john.doe"),
    ("user.{localpart}@{domain}", "jane@example.org", "user.jane@example.org"),
    ("user/{localpart:lower}@{domain:lower}", "Jane@Example.ORG", "user/jane@example.org"),
    ("user.{attr:uid}", "jane@example.org", "user.jd"),
    ("user.{localpart}", "x\u00e9y@example.org", "user.x&AOk-y"),
    ("user.{localpart}", "a&b@example.org", "user.a&-b"),
])
def test_the_quota_root_is_named_as_the_report_names_it(template, address, root):
    assert quota_root(PathTemplate.parse(template), address, {"uid": ["jd"]}) == root


@pytest.mark.parametrize("template, address", [
    ("user.{localpart}", "john.doe@example.org"),  # john's folder "doe": someone else's root
    ("user/{localpart}", "a/b@example.org"),
    ("user.{localpart}@{domain}", "john.doe@example.org"),
    ("user.{localpart}", "a\nb@example.org"),
    ("{localpart}", "-x@example.org"),
    ("user.{attr:uid}", "jane@example.org"),  # no uid
    ("user.{localpart}", None),
])
def test_a_root_that_would_name_something_else_is_refused(template, address):
    with pytest.raises(ValueError):
        quota_root(PathTemplate.parse(template), address, {})


def decode_mutf7(text: str) -> str:
    """RFC 3501 §5.1.3, the other way (the oracle for the encoder)."""
    out, index = [], 0
    while index < len(text):
        if text[index] != "&":
            out.append(text[index])
            index += 1
            continue
        end = text.index("-", index)
        chunk = text[index + 1 : end]
        if not chunk:
            out.append("&")
        else:
            packed = chunk.replace(",", "/")
            out.append(base64.b64decode(packed + "=" * (-len(packed) % 4)).decode("utf-16-be"))
        index = end + 1
    return "".join(out)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_modified_utf7_is_printable_ascii_and_decodes_back(text):
    encoded = encode_mutf7(text)
    assert all(" " <= char <= "~" for char in encoded)
    assert decode_mutf7(encoded) == text


def test_modified_utf7_matches_cyrus():
    assert encode_mutf7("x\u00e9y") == "x&AOk-y"  # as Cyrus's report printed it
    assert encode_mutf7("Entw\u00fcrfe") == "Entw&APw-rfe"  # RFC 3501's own kind of example
    assert encode_mutf7("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
