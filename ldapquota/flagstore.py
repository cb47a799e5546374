"""Where accounts are read and their state is written: the flag-store interface.

The sync, the daemon, ``--check-config`` and ``--show`` talk only to a :class:`FlagStore`;
the LDAP one (:mod:`ldapquota.ldap.store`) is the only implementation today, and a new
store (SQL, say) is one module implementing this class plus a line in :func:`open_store`.

The rules every store keeps (docs/contract.md §4, §5):

* a listing of accounts is complete or raises (SearchIncomplete, DirectoryUnavailable):
  a store never lets "I could not see them" read as "they do not exist";
* a write changes one account's state in one operation and only what changed; the
  failure of one entry is :class:`~ldapquota.errors.EntryWriteError` (the run goes on),
  anything that concerns every entry raises DirectoryUnavailable/PermissionDenied/SchemaMissing;
* times (modification, server clock) are seconds since the epoch in the store's clock.
"""

import abc
from types import TracebackType
from typing import Iterator, List, Optional, Sequence, Tuple, Type, TypeVar

from ldapquota.entry import AccountEntry
from ldapquota.quota import QuotaState
from ldapquota.settings import Config

S = TypeVar("S", bound="FlagStore")


class FlagStore(abc.ABC):
    """One connection to the accounts' store."""

    #: Where the store is, for messages (the URI connected to).
    server: Optional[str] = None

    @abc.abstractmethod
    def connect(self: S) -> S:
        """Connect (and authenticate). Raises DirectoryUnavailable or PermissionDenied."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self: S) -> S:
        return self.connect()

    def __exit__(self, kind: Optional[Type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    @abc.abstractmethod
    def search_accounts(self, attributes: Sequence[str]) -> Iterator[AccountEntry]:
        """Every account, as a stream; raises as soon as the answer is known to be partial.
        The caller consumes it to the end."""

    @abc.abstractmethod
    def find_accounts(self, address: str, attributes: Sequence[str]) -> List[AccountEntry]:
        """The accounts whose address is ``address``."""

    @abc.abstractmethod
    def changed_accounts(self, attributes: Sequence[str], since: float) -> Iterator[Tuple[AccountEntry, Optional[float]]]:
        """Accounts modified at or after ``since`` (store time), with their modification time."""

    @abc.abstractmethod
    def departed_accounts(self, since: float) -> Iterator[str]:
        """DNs modified at or after ``since`` that are no longer accounts (disabled, moved out)."""

    @abc.abstractmethod
    def account_dns(self) -> Iterator[str]:
        """The DN of every account (a cheap listing, to notice deleted ones)."""

    @abc.abstractmethod
    def read_entry(self, dn: str, attributes: Sequence[str]) -> Optional[AccountEntry]:
        """One entry by DN, or None when it does not exist."""

    @abc.abstractmethod
    def modified_at(self, dn: str) -> Optional[float]:
        """When ``dn`` was last modified, in the store's clock (None: unknown or no entry)."""

    @abc.abstractmethod
    def missing_schema(self) -> List[str]:
        """Which of ldapquota's attribute types and object class the store does not know."""

    # ------------------------------------------------------------------ writing

    @abc.abstractmethod
    def write_state(self, dn: str, old: QuotaState, new: QuotaState, has_class: bool, *, noop: bool = False,
                    if_unchanged: bool = False) -> None:
        """Set what changed between ``old`` and ``new`` in one modify (``noop``: only check
        that it would be allowed). Raises EntryWriteError for this entry alone.

        ``if_unchanged``: only if the entry still holds ``old``, in the same operation;
        otherwise raise WriteSuperseded and change nothing (a run that read the entry
        earlier must not undo a newer write, docs/contract.md §5)."""

    @abc.abstractmethod
    def write_sync_time(self, dn: str, epoch: float, *, noop: bool = False) -> None:
        """Record the end of a complete sync on the status entry ``dn``."""


def open_store(config: Config, *, receive_timeout: Optional[float] = None) -> FlagStore:
    """The configured store, not yet connected."""
    from ldapquota.ldap.store import LdapStore  # imports ldap3: only when a store is used

    if receive_timeout is None:
        return LdapStore(config.ldap, config.accounts.address_attribute)
    return LdapStore(config.ldap, config.accounts.address_attribute, receive_timeout=receive_timeout)
