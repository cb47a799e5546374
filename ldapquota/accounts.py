"""From an account entry to what we need to measure it: address, limit, mailbox (pure).

docs/contract.md §4: the limit is the quota attribute (integer × quota_unit, or a
Maildir++ string), else ``accounts.default_quota``, else the limit the usage source holds
(``None`` here), else none. Where the mailbox is, is the usage source's business
(``source.locate``).
"""

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

from ldapquota.entry import ATTR_FREE, ATTR_OVER, AccountEntry
from ldapquota.errors import AccountError, excerpt
from ldapquota.quota import Limit, parse_limit_value
from ldapquota.settings import AccountsConfig


class Locator(Protocol):
    """What a usage source tells about accounts before measuring them."""

    #: Where a limit comes from when LDAP and the default give none ("maildirsize header").
    own_limit: str

    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        """The account's mailbox as the source names it. Raises AccountError."""


@dataclass(frozen=True)
class Account:
    dn: str
    address: str  # for messages; the DN stands in when the entry has no address
    limit: Optional[Limit]  # None: the usage source's own limit decides
    limit_source: str
    mailbox: str  # as the usage source names it (a maildir path, a user, a quota root)


def wanted_attributes(accounts: AccountsConfig, source_attributes: Sequence[str]) -> List[str]:
    """The attributes a sync asks for: only what is used (search cost grows with them)."""
    names = [accounts.address_attribute, ATTR_OVER, ATTR_FREE]
    if accounts.quota_attribute:
        names.append(accounts.quota_attribute)
    names.extend(source_attributes)
    unique: List[str] = []
    for name in names:
        if name.lower() not in (u.lower() for u in unique):
            unique.append(name)
    return unique


def account_from_entry(entry: AccountEntry, accounts: AccountsConfig, source: Locator) -> Account:
    """Raises AccountError when the entry cannot be used (the account keeps its flag)."""
    address = entry.first(accounts.address_attribute)
    limit, limit_source = _limit(entry, accounts, source.own_limit)
    return Account(entry.dn, address or entry.dn, limit, limit_source, source.locate(entry, address))


def _limit(entry: AccountEntry, accounts: AccountsConfig, own_limit: str) -> Tuple[Optional[Limit], str]:
    if accounts.quota_attribute:
        values = entry.values(accounts.quota_attribute)
        if len(values) > 1:
            raise AccountError(f"{accounts.quota_attribute} has {len(values)} values; which one is the limit?")
        if values:
            try:
                return parse_limit_value(values[0], accounts.quota_unit), f"{accounts.quota_attribute}={values[0]}"
            except ValueError as exc:
                raise AccountError(f"{accounts.quota_attribute} {excerpt(values[0])}: {exc}") from None
    if accounts.default_quota is not None:
        return accounts.default_quota, "accounts.default_quota"
    return None, own_limit
