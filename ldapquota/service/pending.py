"""Writes the store has not had yet, and the flip budget of the event path.

A change found by an event waits here until it is written (at once while the store
answers; after an outage, when it is back). ``policy.max_changes`` holds for events too:
the flips written since the last full sync passed may not exceed it, so that a bulk
change (every quota lowered in LDAP, a store remounted empty) cannot flip every account
one event at a time where ``--sync`` would refuse. Beyond the budget flips wait for a
full sync, which applies the rule to all of them.
"""

import logging
from typing import Callable, ContextManager, Dict, Iterator, Optional, Set

from ldapquota.errors import DirectoryUnavailable, EntryWriteError, PermissionDenied, SchemaMissing
from ldapquota.flagstore import FlagStore
from ldapquota.quota import QuotaState
from ldapquota.service.table import AccountTable
from ldapquota.sync import Change
from ldapquota.units import ChangeLimit

log = logging.getLogger(__name__)


class PendingWrites:
    def __init__(self, max_changes: ChangeLimit):
        self.max_changes = max_changes
        self._changes: Dict[str, Change] = {}  # account key → the write it waits for
        self.flips_since_sync = 0
        self.budget_spent = False
        #: Accounts written since the full sync or refresh under way began reading: what it
        #: read of them may be older than the write. (Emptied as each one begins.)
        self.written: Set[str] = set()
        #: Told of every write that landed (the daemon keeps the newest as a canary).
        self.on_written: Optional[Callable[[str, QuotaState], None]] = None
        #: For the metrics (docs/contract.md §12): each change written (by account key), each write that failed.
        self.on_change_written: Callable[[str, Change], None] = lambda key, change: None
        self.on_write_failed: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._changes)

    def __bool__(self) -> bool:
        return bool(self._changes)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._changes))

    def get(self, key: str) -> Optional[Change]:
        return self._changes.get(key)

    def put(self, key: str, change: Change) -> None:
        self._changes[key] = change

    def drop(self, key: str) -> None:
        self._changes.pop(key, None)

    def clear(self) -> None:
        self._changes.clear()

    def sync_passed(self) -> None:
        """A full sync passed the safety rules: the budget starts again."""
        self.flips_since_sync = 0
        self.budget_spent = False

    def flip_allowed(self, accounts: int) -> bool:
        """May one more flip be written now? The first refusal is logged (the caller then
        asks for a full sync: :attr:`budget_spent` turns True)."""
        allowed = self.max_changes.allowed(accounts)
        if self.flips_since_sync < allowed:
            return True
        if not self.budget_spent:
            self.budget_spent = True
            log.warning(
                "%d isOverQuota flips since the last full sync reach policy.max_changes (%s of %d accounts); "
                "further flips wait for a full sync, starting now", self.flips_since_sync, self.max_changes, accounts)
        return False

    def flush(self, store: FlagStore, table: AccountTable, *, stopping: Callable[[], bool],
              shielded: Callable[[], ContextManager[None]]) -> Optional[Exception]:
        """Write what waits, one modify each. Returns the error that shows the store is
        unusable (the rest waits), else None."""
        for key in list(self._changes):
            if stopping():
                return None
            change = self._changes.get(key)
            record = table.get(key)
            if change is None:
                continue
            if record is None:
                del self._changes[key]
                continue
            if change.flip and not self.flip_allowed(len(table)):
                continue  # held: a full sync decides (and refuses if this is a mass flip)
            try:
                with shielded():
                    store.write_state(change.dn, change.old, change.new, change.has_class)
            except EntryWriteError as exc:
                del self._changes[key]
                self.on_write_failed()
                _write_failed(store, table, key, exc)
                continue
            except (DirectoryUnavailable, PermissionDenied, SchemaMissing) as exc:
                return exc
            del self._changes[key]
            table.set_state(key, change.new, written=True)
            self.written.add(key)
            if self.on_written is not None:
                self.on_written(change.dn, change.new)
            if change.flip:
                self.flips_since_sync += 1
            self.on_change_written(key, change)
            log.info("%s", change.describe())
        return None


def _write_failed(store: FlagStore, table: AccountTable, key: str, exc: Exception) -> None:
    record = table.get(key)
    if record is None:
        return
    try:
        exists = store.read_entry(record.dn, ["1.1"]) is not None
    except (DirectoryUnavailable, PermissionDenied):
        exists = True
    if exists:
        log.error("%s: %s", record.address, exc)
    else:
        log.info("%s: %s is gone from LDAP; no longer watched", record.address, record.dn)
        table.forget(key)
