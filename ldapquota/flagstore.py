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

Many writes at once (a cold sync writes thousands) go through :meth:`FlagStore.write_states`:
one :meth:`~FlagStore.write_state` after the other unless the store can keep many in
flight (the LDAP one does), with the same rules and the same errors per entry.
"""

import abc
from types import TracebackType
from typing import Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple, Type, TypeVar

from ldapquota.entry import AccountEntry
from ldapquota.errors import EntryWriteError, WriteSuperseded
from ldapquota.quota import QuotaState
from ldapquota.settings import Config

S = TypeVar("S", bound="FlagStore")


class StateWrite(Protocol):
    """One planned write of :meth:`FlagStore.write_states` (sync.Change is one)."""

    @property
    def dn(self) -> str: ...

    @property
    def old(self) -> QuotaState: ...

    @property
    def new(self) -> QuotaState: ...

    @property
    def has_class(self) -> bool: ...


W = TypeVar("W", bound=StateWrite)
#: A write and how it ended: None (written), or its EntryWriteError or WriteSuperseded.
Outcome = Tuple[W, Optional[Exception]]


class FlagStore(abc.ABC):
    """One connection to the accounts' store."""

    #: Where the store is, for messages (the URI connected to).
    server: Optional[str] = None
    #: How accounts are read (the client library), for --check-config.
    reader: Optional[str] = None
    #: Why that is not the library the configuration asks for (None: it is).
    reader_note: Optional[str] = None

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

    def write_states(self, writes: Iterable[W], *, if_unchanged: bool = False) -> Iterator[Outcome[W]]:
        """Each of ``writes`` as :meth:`write_state` writes it, yielding every write with
        how it ended (None: written; its EntryWriteError or WriteSuperseded otherwise).
        ``writes`` is read lazily, each just before it is sent, and outcomes come in that
        order. What concerns every entry (DirectoryUnavailable, PermissionDenied,
        SchemaMissing) is raised after the outcomes of the writes before it. This one
        writes one after the other; a store that can keep many in flight overrides it."""
        for write in writes:
            try:
                self.write_state(write.dn, write.old, write.new, write.has_class, if_unchanged=if_unchanged)
            except (EntryWriteError, WriteSuperseded) as exc:
                yield write, exc
            else:
                yield write, None

    @abc.abstractmethod
    def write_sync_time(self, dn: str, epoch: float, *, noop: bool = False) -> None:
        """Record the end of a complete sync on the status entry ``dn``."""


def open_store(config: Config, *, receive_timeout: Optional[float] = None) -> FlagStore:
    """The configured store, not yet connected."""
    from ldapquota.ldap.store import LdapStore  # imports ldap3: only when a store is used

    if receive_timeout is None:
        return LdapStore(config.ldap, config.accounts.address_attribute)
    return LdapStore(config.ldap, config.accounts.address_attribute, receive_timeout=receive_timeout)
