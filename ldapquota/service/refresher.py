"""New, changed and removed accounts between full syncs (``daemon.account_refresh``).

Accounts modified since the last look are read again (by modification time, in the
store's clock); accounts that no longer match the filter are forgotten; a DN-only listing,
paced so it stays cheap, notices deleted accounts (which leave no modification time).

:class:`RefreshWindow` is the pure part: from which moment to ask, in the server's time.
"""

import logging
from typing import Callable, Optional, Sequence, Set

from ldapquota.entry import AccountEntry
from ldapquota.flagstore import FlagStore

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
        # Server time minus ours, learnt from the status entry after each full sync: the
        # modification times are the server's, and a host clock ahead of it would make every
        # refresh ask for changes "from the future".
        self.server_offset = 0.0

    def since(self, wall: float) -> float:
        """The newest modification time seen so far (inclusive, as a second holds many
        changes), or past that second once it is a minute old (no change can land in it
        any more, so a bulk change of many entries in one second is not read again and
        again). Before the first refresh: the last full sync's start, less a margin."""
        newest = self.newest
        if newest is None:
            look = self.last_look if self.last_look is not None else wall
            return look + self.server_offset - MODIFY_MARGIN
        if newest < wall + self.server_offset - SECOND_CLOSED:
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
    newest = window.newest
    for entry, stamp in store.changed_accounts(attributes, since):
        changed(entry)
        if stamp is not None and (newest is None or stamp > newest):
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
