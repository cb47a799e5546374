"""From an LDAP entry to what we need to measure it: address, limit, mailbox path (pure).

SPEC §4: the limit is the quota attribute (integer × quota_unit, or a Maildir++ string),
else ``accounts.default_quota``, else the maildirsize header (``None`` here), else none.
The mailbox is the mailbox attribute if set and present, else the path template.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

from ldapquota.config import AccountsConfig, MailboxesConfig
from ldapquota.directory import ATTR_FREE, ATTR_OVER, AccountEntry
from ldapquota.errors import AccountError
from ldapquota.paths import strip_mail_location
from ldapquota.quota import Limit, parse_limit_value


@dataclass(frozen=True)
class Account:
    dn: str
    address: str  # for messages; the DN stands in when the entry has no address
    limit: Optional[Limit]  # None: take the limit from the maildirsize header
    limit_source: str
    mailbox: str  # relative to mailboxes.root, or absolute (still checked against it)


def wanted_attributes(accounts: AccountsConfig, mailboxes: MailboxesConfig) -> List[str]:
    """The attributes a sync asks LDAP for: only what is used (search cost grows with them)."""
    names = [accounts.address_attribute, ATTR_OVER, ATTR_FREE]
    for optional in (accounts.quota_attribute, accounts.mailbox_attribute):
        if optional:
            names.append(optional)
    names.extend(mailboxes.path.attributes)
    unique: List[str] = []
    for name in names:
        if name.lower() not in (u.lower() for u in unique):
            unique.append(name)
    return unique


def account_from_entry(entry: AccountEntry, accounts: AccountsConfig, mailboxes: MailboxesConfig) -> Account:
    """Raises AccountError when the entry cannot be used (the account keeps its flag)."""
    address = entry.first(accounts.address_attribute)
    limit, source = _limit(entry, accounts)
    location = entry.first(accounts.mailbox_attribute) if accounts.mailbox_attribute else None
    if location:
        mailbox = strip_mail_location(location.strip())
        if not mailbox:
            raise AccountError(f"{accounts.mailbox_attribute} {location!r} is not a path")
    else:
        try:
            mailbox = mailboxes.path.render(address, entry.attributes)
        except ValueError as exc:
            raise AccountError(f"mailbox path: {exc}") from None
    return Account(entry.dn, address or entry.dn, limit, source, mailbox)


def _limit(entry: AccountEntry, accounts: AccountsConfig) -> Tuple[Optional[Limit], str]:
    if accounts.quota_attribute:
        values = entry.values(accounts.quota_attribute)
        if len(values) > 1:
            raise AccountError(f"{accounts.quota_attribute} has {len(values)} values; which one is the limit?")
        if values:
            try:
                return parse_limit_value(values[0], accounts.quota_unit), f"{accounts.quota_attribute}={values[0]}"
            except ValueError as exc:
                raise AccountError(f"{accounts.quota_attribute} {values[0]!r}: {exc}") from None
    if accounts.default_quota is not None:
        return accounts.default_quota, "accounts.default_quota"
    return None, "maildirsize header"
