"""An account as a flag store hands it over: a DN and its attributes (pure, no I/O).

Also the names of what ldapquota keeps on an entry (docs/contract.md §3): every module
that reads or writes the state uses these constants, whatever the store behind them.
"""

from typing import List, Mapping, Optional, Sequence

from ldapquota.paths import attribute_values
from ldapquota.quota import QuotaState

OBJECT_CLASS = "ldapQuotaStatus"
ATTR_OVER = "isOverQuota"
ATTR_FREE = "quotaFreeBytes"
ATTR_SYNC_TIME = "quotaSyncTime"
STATE_ATTRIBUTES = (ATTR_OVER, ATTR_FREE)
#: The schema to load when the store does not know these names.
SCHEMA_FILE = "schema/ldapquota.ldif"


class AccountEntry:
    """An account's DN and attributes, looked up case-insensitively (LDAP names are).

    The attributes mapping is kept as the store gave it (ldap3's case-insensitive dict,
    say): copying it for every entry of a 100,000-account sync costs more than everything
    else done with it.
    """

    __slots__ = ("dn", "attributes")

    def __init__(self, dn: str, attributes: Mapping[str, Sequence[object]]):
        self.dn = dn
        self.attributes = attributes

    def __repr__(self) -> str:
        return f"AccountEntry({self.dn!r}, {dict(self.attributes)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccountEntry) and (self.dn, dict(self.attributes)) == (other.dn, dict(other.attributes))

    __hash__ = None  # type: ignore[assignment]  # mutable mapping inside: not hashable

    def values(self, name: str) -> List[str]:
        found = attribute_values(self.attributes, name)
        if not found:
            return []
        if isinstance(found, list) and all(type(value) is str for value in found):
            return found  # as the store gave it: no copy on the hot path
        return as_strings(found)

    def first(self, name: str) -> Optional[str]:
        values = self.values(name)
        return values[0] if values else None

    @property
    def has_quota_class(self) -> bool:
        """Does the entry already hold our class? Any of our attributes implies it."""
        return bool(self.values(ATTR_OVER) or self.values(ATTR_FREE)) or any(
            value.lower() == OBJECT_CLASS.lower() for value in self.values("objectClass")
        )

    @property
    def quota_state(self) -> QuotaState:
        """The state as stored; an absent isOverQuota reads as FALSE, as every MTA reads it."""
        over = (self.first(ATTR_OVER) or "").upper() == "TRUE"
        free = self.first(ATTR_FREE)
        return QuotaState(over, int(free) if free is not None and free.lstrip("-").isdigit() else None)


def as_strings(values: object) -> List[str]:
    """Attribute values as text (bytes are decoded as UTF-8, leniently)."""
    if isinstance(values, (list, tuple)):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    if isinstance(values, bytes):
        return [values.decode("utf-8", "replace")]
    return [str(values)]
