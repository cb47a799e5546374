"""From an LDAP entry to address, limit and mailbox (docs/contract.md §4); entry state; filter escaping."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ldapquota.accounts import Account, account_from_entry, wanted_attributes
from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError
from ldapquota.ldap.syntax import account_filter, escape_value
from ldapquota.paths import PathTemplate
from ldapquota.quota import UNLIMITED, Limit, QuotaState
from ldapquota.settings import (
    AccountsConfig,
    Config,
    DaemonConfig,
    LdapConfig,
    LoggingConfig,
    MailboxesConfig,
    MtaConfig,
    PolicyConfig,
)
from ldapquota.sources.maildir import Source

DN = "uid=bob,ou=people,dc=example,dc=org"
ACCOUNTS = AccountsConfig(address_attribute="mail", quota_attribute="mailQuota", quota_unit=1)
MAILBOXES = MailboxesConfig(root="/var/vmail")


def entry(**attributes) -> AccountEntry:
    """An entry as directory.py builds it: attribute names in lower case."""
    return AccountEntry(DN, {name.lower(): list(values) for name, values in attributes.items()})


def maildir_source(accounts: AccountsConfig, mailboxes: MailboxesConfig) -> Source:
    ldap = LdapConfig(("ldap://127.0.0.1",), "dc=example,dc=org")
    return Source(Config("<test>", ldap, accounts, mailboxes, PolicyConfig(), DaemonConfig(), LoggingConfig(), MtaConfig()))


def account(attrs: AccountEntry, accounts: AccountsConfig = ACCOUNTS, mailboxes: MailboxesConfig = MAILBOXES) -> Account:
    return account_from_entry(attrs, accounts, maildir_source(accounts, mailboxes))


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "unit, value, expected",
    [
        (1, "5000000", Limit(5000000, None)),
        (1024, "100", Limit(102400, None)),
        (1024**2, "2", Limit(2 * 1024**2, None)),
        (1024, "0", UNLIMITED),
        (None, "5000000", Limit(5000000, None)),  # maildir++ unit: a bare integer is bytes
    ],
)
def test_integer_quota_attribute_times_unit(unit, value, expected):
    accounts = AccountsConfig(quota_attribute="mailQuota", quota_unit=unit)
    result = account(entry(mail=["bob@example.org"], mailQuota=[value]), accounts)
    assert result.limit == expected


@pytest.mark.parametrize("unit", [1, 1024, None])
@pytest.mark.parametrize(
    "value, expected",
    [("10000000S,1000C", Limit(10000000, 1000)), ("10000000S", Limit(10000000, None)), ("1000C", Limit(None, 1000))],
)
def test_maildirpp_quota_attribute_whatever_the_unit(unit, value, expected):
    accounts = AccountsConfig(quota_attribute="quota", quota_unit=unit)
    assert account(entry(mail=["bob@example.org"], quota=[value]), accounts).limit == expected


def test_quota_attribute_wins_over_default():
    accounts = AccountsConfig(quota_attribute="mailQuota", default_quota=Limit(999, None))
    assert account(entry(mail=["bob@example.org"], mailQuota=["5000"]), accounts).limit == Limit(5000, None)


def test_zero_quota_attribute_is_unlimited_even_with_a_default():
    accounts = AccountsConfig(quota_attribute="mailQuota", default_quota=Limit(999, None))
    assert account(entry(mail=["bob@example.org"], mailQuota=["0"]), accounts).limit == UNLIMITED


def test_default_when_attribute_absent():
    accounts = AccountsConfig(quota_attribute="mailQuota", default_quota=Limit(1024**3, None))
    result = account(entry(mail=["bob@example.org"]), accounts)
    assert result.limit == Limit(1024**3, None)
    assert "default_quota" in result.limit_source


def test_default_when_quota_attribute_not_configured():
    accounts = AccountsConfig(quota_attribute=None, default_quota=Limit(None, 50))
    assert account(entry(mail=["bob@example.org"], mailQuota=["1"]), accounts).limit == Limit(None, 50)


def test_none_when_neither_attribute_nor_default():
    # None: the maildirsize header decides (measure()).
    result = account(entry(mail=["bob@example.org"]))
    assert result.limit is None


@pytest.mark.parametrize("values", [["100", "200"], ["100", "100"]])
def test_multi_valued_quota_is_an_error(values):
    with pytest.raises(AccountError):
        account(entry(mail=["bob@example.org"], mailQuota=values))


@pytest.mark.parametrize("value", ["lots", "", "  ", "-5", "1.5", "100KiB", "10S,10S", "1e9"])
def test_garbage_quota_is_an_error(value):
    with pytest.raises(AccountError):
        account(entry(mail=["bob@example.org"], mailQuota=[value]))


def test_quota_attribute_name_is_case_insensitive():
    accounts = AccountsConfig(quota_attribute="MailQuota")
    assert account(entry(mail=["bob@example.org"], mailquota=["77"]), accounts).limit == Limit(77, None)


# --------------------------------------------------------------------------- mailbox


def test_template_gives_the_mailbox():
    result = account(entry(mail=["bob@example.org"]))
    assert result.mailbox == "example.org/bob/Maildir"
    assert result.address == "bob@example.org"
    assert result.dn == DN


def test_template_with_attr_and_lower():
    mailboxes = MailboxesConfig(root="/var/vmail", path=PathTemplate.parse("{attr:mailHost:lower}/{localpart:lower}"))
    result = account(entry(mail=["Bob@Example.org"], mailHost=["STORE1"]), ACCOUNTS, mailboxes)
    assert result.mailbox == "store1/bob"


def test_mailbox_attribute_used_when_present():
    accounts = AccountsConfig(mailbox_attribute="mailMessageStore")
    result = account(entry(mail=["bob@example.org"], mailMessageStore=["/var/vmail/x/bob/"]), accounts)
    assert result.mailbox == "/var/vmail/x/bob/"


def test_mailbox_attribute_maildir_prefix_stripped():
    accounts = AccountsConfig(mailbox_attribute="mailbox")
    result = account(entry(mail=["bob@example.org"], mailbox=["maildir:/var/vmail/bob/Maildir:INDEX=/var/idx/bob"]), accounts)
    assert result.mailbox == "/var/vmail/bob/Maildir"


def test_mailbox_attribute_absent_falls_back_to_template():
    accounts = AccountsConfig(mailbox_attribute="mailbox")
    assert account(entry(mail=["bob@example.org"]), accounts).mailbox == "example.org/bob/Maildir"


def test_mailbox_attribute_name_is_case_insensitive():
    accounts = AccountsConfig(mailbox_attribute="MailBox")
    assert account(entry(mail=["bob@example.org"], mailbox=["a/b"]), accounts).mailbox == "a/b"


@pytest.mark.parametrize("value", ["maildir:", "   "])
def test_mailbox_attribute_without_a_path_is_an_error(value):
    accounts = AccountsConfig(mailbox_attribute="mailbox")
    with pytest.raises(AccountError):
        account(entry(mail=["bob@example.org"], mailbox=[value]), accounts)


def test_missing_address_with_address_template_is_an_error():
    with pytest.raises(AccountError):
        account(entry(uid=["bob"]))


def test_address_without_at_is_an_error():
    with pytest.raises(AccountError):
        account(entry(mail=["bob"]))


@pytest.mark.parametrize("address", ["../../etc@example.org", "bob@..", "a/b@example.org"])
def test_address_that_would_leave_its_directory_is_an_error(address):
    with pytest.raises(AccountError):
        account(entry(mail=[address]))


def test_missing_address_is_fine_with_attr_template():
    mailboxes = MailboxesConfig(root="/var/vmail", path=PathTemplate.parse("{attr:uid}/Maildir"))
    result = account(entry(uid=["bob"]), ACCOUNTS, mailboxes)
    assert result.mailbox == "bob/Maildir"
    assert result.address == DN  # the DN stands in for messages


def test_address_attribute_name_is_case_insensitive():
    accounts = AccountsConfig(address_attribute="MAIL")
    assert account(entry(mail=["bob@example.org"]), accounts).address == "bob@example.org"


def test_wanted_attributes():
    accounts = AccountsConfig(address_attribute="mail", quota_attribute="mailQuota", mailbox_attribute="mailbox")
    mailboxes = MailboxesConfig(root="/v", path=PathTemplate.parse("{attr:mailHost}/{attr:MAIL}/{attr:uid}"))
    names = wanted_attributes(accounts, maildir_source(accounts, mailboxes).attributes)
    lowered = [name.lower() for name in names]
    assert set(lowered) == {"mail", "isoverquota", "quotafreebytes", "mailquota", "mailbox", "mailhost", "uid"}
    assert len(lowered) == len(set(lowered))  # no duplicates, whatever the case


def test_wanted_attributes_without_optional_ones():
    accounts = AccountsConfig(quota_attribute=None, mailbox_attribute=None)
    names = [name.lower() for name in wanted_attributes(accounts, maildir_source(accounts, MAILBOXES).attributes)]
    assert sorted(names) == ["isoverquota", "mail", "quotafreebytes"]


# --------------------------------------------------------------------------- AccountEntry


@pytest.mark.parametrize(
    "values, over",
    [(["TRUE"], True), (["FALSE"], False), ([], False), (["true"], True), (["false"], False)],
    ids=["TRUE", "FALSE", "absent", "lowercase-true", "lowercase-false"],
)
def test_quota_state_over(values, over):
    attrs = {"isOverQuota": values} if values else {}
    assert entry(**attrs).quota_state.over is over


def test_quota_state_free_bytes():
    assert entry(isOverQuota=["FALSE"], quotaFreeBytes=["12345"]).quota_state == QuotaState(False, 12345)
    assert entry(isOverQuota=["TRUE"], quotaFreeBytes=["0"]).quota_state == QuotaState(True, 0)
    assert entry().quota_state == QuotaState(False, None)
    assert entry(quotaFreeBytes=["junk"]).quota_state.free_bytes is None


def test_has_quota_class():
    assert entry(objectClass=["inetOrgPerson", "ldapQuotaStatus"]).has_quota_class
    assert entry(objectClass=["inetOrgPerson", "LDAPQUOTASTATUS"]).has_quota_class
    assert entry(objectClass=["inetOrgPerson"], isOverQuota=["FALSE"]).has_quota_class
    assert entry(objectClass=["inetOrgPerson"], quotaFreeBytes=["5"]).has_quota_class
    assert not entry(objectClass=["inetOrgPerson"]).has_quota_class
    assert not entry().has_quota_class


def test_entry_values_by_any_case():
    e = entry(mail=["a@b", "c@d"])
    assert e.values("MAIL") == ["a@b", "c@d"]
    assert e.first("Mail") == "a@b"
    assert e.first("uid") is None and e.values("uid") == []


# --------------------------------------------------------------------------- filter escaping (RFC 4515)

BASE = "(objectClass=inetOrgPerson)"


def test_filter_without_address_is_the_base():
    assert account_filter(BASE) == BASE


def test_filter_plain_address():
    assert account_filter(BASE, "mail", "bob@example.org") == "(&(objectClass=inetOrgPerson)(mail=bob@example.org))"


def test_filter_star_cannot_widen():
    # "*" is 0x2a
    assert account_filter(BASE, "mail", "b*@x") == "(&(objectClass=inetOrgPerson)(mail=b\\2a@x))"


def test_filter_injection_cannot_widen():
    # ")" is 0x29, "(" is 0x28, "*" is 0x2a
    assert account_filter(BASE, "mail", "x)(mail=*@y") == "(&(objectClass=inetOrgPerson)(mail=x\\29\\28mail=\\2a@y))"


def test_filter_backslash_and_nul():
    # "\" is 0x5c, NUL is 0x00; the backslash is escaped once, not again after "*" is escaped.
    assert escape_value("a\\b") == "a\\5cb"
    assert escape_value("a\x00b") == "a\\00b"
    assert escape_value("\\*") == "\\5c\\2a"
    assert escape_value("\\2a") == "\\5c2a"
    assert account_filter(BASE, "mail", "*)(|(mail=*") == "(&(objectClass=inetOrgPerson)(mail=\\2a\\29\\28|\\28mail=\\2a))"


def test_filter_leaves_ordinary_characters():
    assert escape_value("Bob.O'Neil+tag@exämple.org") == "Bob.O'Neil+tag@exämple.org"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_property_escaped_values_hold_no_filter_syntax(value):
    escaped = escape_value(value)
    assert not any(char in escaped for char in "()*\x00")
    # every backslash starts a two-hex-digit escape
    assert re.fullmatch(r"(?:[^\\]|\\[0-9a-fA-F]{2})*", escaped)
    # and unescaping gives the value back
    assert re.sub(r"\\([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), escaped) == value
    narrowed = account_filter(BASE, "mail", value)
    assert narrowed == f"(&{BASE}(mail={escaped}))"
