"""New, changed and removed accounts between full syncs (``daemon.account_refresh``).

Accounts modified since the last look are read again (by modification time, in the
store's clock); accounts that no longer match the filter are forgotten; a DN-only listing,
paced so it stays cheap, notices deleted accounts (which leave no modification time).

:class:`RefreshWindow` is the pure part: from which moment to ask, in the server's time;
:class:`DaemonRefresh` runs one refresh for the daemon's loop.
"""

import logging
import math
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Set, Tuple

from ldapquota.entry import AccountEntry
from ldapquota.errors import DirectoryUnavailable, PermissionDenied, SchemaMissing
from ldapquota.flagstore import FlagStore
from ldapquota.service.link import breaks_connection
from ldapquota.service.table import AccountTable, dn_key
from ldapquota.service.trust import LISTING_SAMPLE, appeared_before

if TYPE_CHECKING:
    from ldapquota.service.loop import Service

log = logging.getLogger(__name__)

#: Before the first refresh after a full sync, ask from its start less this much, for
#: clock skew between this host and the server and for replication lag.
MODIFY_MARGIN = 300.0
#: A modification-time second older than this (server clock) is taken as closed.
SECOND_CLOSED = 60.0
#: A DN-only listing runs at most every this many times its own duration: ~0.2 % of a core
#: however big the directory is.
LISTING_COST_FACTOR = 500


class RefreshWindow:
    """From when the next refresh asks (pure; times are seconds since the epoch)."""

    def __init__(self) -> None:
        self.last_look: Optional[float] = None  # our wall clock when the last sync began
        self.newest: Optional[float] = None  # newest modification time a refresh has seen
        self.asked: Optional[float] = None  # the "since" the last refresh asked with
        # Server time minus ours, learnt from the status entry after each full sync: the
        # modification times are the server's, and a host clock ahead of it would make every
        # refresh ask for changes "from the future".
        self.server_offset = 0.0

    def since(self, wall: float) -> float:
        """The newest modification time seen so far (inclusive, as a second holds many
        changes), or past that second once it was a minute old when the last look read it
        (no change could land in it any more, so a bulk change of many entries in one
        second is not read again and again; a second that was still open then is read once
        more, for the changes that landed in it after that look). Before the first
        refresh: the last full sync's start, less a margin."""
        newest = self.newest
        look = self.last_look if self.last_look is not None else wall
        if newest is None:
            return look + self.server_offset - MODIFY_MARGIN
        if newest < look + self.server_offset - SECOND_CLOSED:
            return newest + 1
        return newest

    def observe(self, stamp: Optional[float]) -> None:
        if stamp is not None and (self.newest is None or stamp > self.newest):
            self.newest = stamp

    def full_sync_began(self, wall: float) -> None:
        """A full sync read every account: the next refresh starts from its start (this also
        drops a newest time from a server clock since stepped back)."""
        self.last_look = wall
        self.newest = None

    def learn_offset(self, server_time: Optional[float], asked: float) -> None:
        if server_time is None:
            return
        offset = server_time - asked
        if abs(offset - self.server_offset) > 2:
            log.info("the LDAP server's clock is %+.0f s from ours; account refreshes use the server's", offset)
        self.server_offset = offset


class ListingPace:
    """When the next DN-only listing is due."""

    def __init__(self, every: float):
        self.every = every
        self.due = float("inf")  # set after the first full sync

    def is_due(self, now: float) -> bool:
        return now >= self.due

    def schedule(self, now: float) -> None:
        self.due = now + self.every

    def took(self, seconds: float, minimum: float, now: float) -> None:
        self.every = max(minimum, LISTING_COST_FACTOR * seconds)
        self.due = now + self.every


def refresh(store: FlagStore, window: RefreshWindow, attributes: Sequence[str], wall: float, *,
            changed: Callable[[AccountEntry], None], departed: Callable[[str], None],
            tick: Callable[[], None]) -> None:
    """One refresh over ``store``: ``changed`` for each account modified since the window's
    start, ``departed`` for each DN modified so that it no longer is an account."""
    since = window.since(wall)
    window.asked = since
    newest = window.newest
    # Nothing is modified later than the server's "now": a time past it (an entry imported,
    # or replicated from a server whose clock is ahead) would have the next refreshes ask
    # from the future, missing every change until then. Counted as now, it is read again.
    ceiling = float(math.floor(wall + window.server_offset))
    for entry, stamp in store.changed_accounts(attributes, since):
        changed(entry)
        if stamp is not None:
            stamp = min(stamp, ceiling)
            if newest is None or stamp > newest:
                newest = stamp
        tick()
    for dn in store.departed_accounts(since):
        departed(dn)
        tick()
    window.newest = newest
    window.last_look = wall


def list_accounts(store: FlagStore, tick: Callable[[], None]) -> Set[str]:
    """Every account's DN, in lower case."""
    present: Set[str] = set()
    for dn in store.account_dns():
        present.add(dn.lower())
        tick()
    return present


def list_against(store: FlagStore, table: AccountTable, tick: Callable[[], None],
                 keep: int) -> Tuple[int, Set[str], List[str]]:
    """The DN listing held against the table: how many accounts it lists, which of the
    table's keys it lists (the table's own key objects: a million-account listing keeps
    no string of its own, ~150 MB less at its peak), and up to ``keep`` listed DNs (lower
    case) the table does not know."""
    count = 0
    known: Set[str] = set()
    unknown: List[str] = []
    for dn in store.account_dns():
        count += 1
        record = table.get(dn_key(dn))
        if record is not None:
            known.add(record.key)
        elif len(unknown) < keep:
            unknown.append(dn.lower())
        tick()
    return count, known, unknown


class DaemonRefresh:
    """One account refresh of the daemon: new, changed and removed accounts since the last
    look, on a connection of its own, so that events keep being handled (and written on
    the loop's) meanwhile."""

    def __init__(self, service: "Service"):
        self.service = service

    def run(self) -> None:
        service = self.service
        if service.link.get(service.stop.abandonable, len(service.pending)) is None:
            return
        wall = service.wall()
        store = service.new_store()
        service.last_tick = service.clock()
        service.pending.written.clear()
        attributes = list(service.evaluator.attributes)

        def departed(dn: str) -> None:
            if dn_key(dn) in service.table.records:
                service.forget(dn_key(dn), "no longer matches ldap.filter")

        try:
            with service.stop.abandonable():
                store.connect()
                refresh(store, service.window, attributes, wall, changed=service.refreshed, departed=departed,
                        tick=service.background_tick)
                if service.listing.is_due(service.clock()):
                    self._list_accounts(store)
        except (DirectoryUnavailable, PermissionDenied, SchemaMissing) as exc:
            # Backing off, as the full sync does; the window stays, so nothing is missed.
            delay = min(service.refresh_retry.next_delay(), service.config.daemon.account_refresh)
            log.error("account refresh failed: %s; next try in %.0fs", exc, delay)
            service.refresh.retry(service.clock(), delay)
            if breaks_connection(exc):
                service.link.failed(exc, len(service.pending))
            return
        finally:
            store.close()
        service.refresh_retry.reset()
        service.refresh.done(service.clock())

    def _list_accounts(self, store: FlagStore) -> None:
        """Deleted accounts leave no modification time behind: compare a DN-only listing.
        (Their flags no longer matter to the MTA, whose lookup finds no entry: this only
        stops watching them, so it is paced to stay cheap on big directories.)"""
        service = self.service
        started = service.clock()
        listed, present, unknown = list_against(store, service.table, service.background_tick, LISTING_SAMPLE)
        if not listed and service.table.records:
            # As a full sync refuses a search that matches no account (a filter or ACL
            # problem looks exactly like this), no account is taken for gone.
            log.warning("the account listing found no account at all; forgetting none (ldap.filter, or ACLs?)")
            present = set(service.table.records)
        gone = [key for key in service.table.records if key not in present]
        for key in gone:
            service.forget(key, "is gone from LDAP")
        evidence = appeared_before(store, unknown, service.window.asked)
        if evidence is not None:
            service.trust.distrust(service, f"accounts appeared in the past ({evidence}; restored or slapadd-ed?)",
                                   service.clock())
        took = service.clock() - started
        service.listing.took(took, service.config.daemon.account_refresh, service.clock())
        log.debug("account listing: %d accounts, %d gone, %.2fs; next in %.0fs", listed, len(gone), took,
                  service.listing.every)
