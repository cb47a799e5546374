"""When the daemon stops trusting its cache (docs/contract.md §5, "Daemon cache").

The account table caches, for every account, what the store holds: an event writes only
where a new measurement differs from it, and the account refresh reads only entries
modified since its last look. Both are right only while the directory moves forward. Two
things break that, and each is answered by a full sync soon (:mod:`.fullsync`: every
account read and measured, every safety rule, only the entries that differ written; not
a rewrite of every flag):

* **the connection was lost and is back**: what happened meanwhile is unknown (a restart
  onto a restored database, a failover to a replica that lags behind);
* **the directory went back in time** while we stayed connected: an entry we wrote (the
  status entry after each full sync; the last entry an event or a sync wrote) shows an
  older modification time than it had after our write, or lacks our write and was
  modified well before it; or the DN listing finds accounts that no refresh reported
  although they were modified before what the refresh asked for (added with old times:
  ``slapadd``, ``ldapadd -e relax`` of a backup, a replica catching up out of order).

A probe (:data:`PROBE_EVERY`, or ``daemon.account_refresh`` if shorter) reads those
entries on the loop's own connection: a few base-scope reads. An idle connection the
server dropped fails it, and the reconnection counts as the first case; while the store
is down the probe is what reconnects, at the link's backoff.
"""

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Tuple

from ldapquota.entry import ATTR_FREE, ATTR_OVER
from ldapquota.errors import DirectoryUnavailable, PermissionDenied
from ldapquota.flagstore import FlagStore
from ldapquota.quota import QuotaState
from ldapquota.schedule import Periodic
from ldapquota.service.link import breaks_connection

if TYPE_CHECKING:
    from ldapquota.service.loop import Service

log = logging.getLogger(__name__)

#: Longest time between two probes (seconds): with the full sync that follows, the flags
#: agree with the mailboxes again well within the minute §5 allows.
PROBE_EVERY = 10.0
#: An entry lacking our write counts as restored only if it was modified this much before
#: the write (store clock): the same skew the account refresh allows for. Less than that
#: and someone else may have written it after us (the refresh then reads it).
WRITE_MARGIN = 300.0
#: Accounts of the DN listing unknown to the table that are read to see when they were
#: modified (the others wait for the next refresh or listing).
LISTING_SAMPLE = 10


@dataclass
class Canary:
    """An entry we wrote, and what that write must have left on it."""

    dn: str
    expected: Optional[QuotaState]  # the state we wrote (None: the status entry, time only)
    written_at: float  # our wall clock, just after the write
    baseline: Optional[float] = None  # its modification time once seen holding our write

    def look(self, state: Optional[QuotaState], stamp: Optional[float], server_offset: float) -> Tuple[bool, Optional[str]]:
        """(keep watching it, evidence that the directory went back in time or None)."""
        if stamp is None:
            return True, None  # not there now (deleted; or between the delete and the add of a restore)
        if self.baseline is not None:
            if stamp < self.baseline:
                return False, (f"{self.dn} was last modified at {_iso(stamp)}, before {_iso(self.baseline)} "
                               "when it held ldapquota's write")
            self.baseline = stamp
            return True, None
        if stamp < self.written_at + server_offset - WRITE_MARGIN:
            return False, (f"{self.dn} was last modified at {_iso(stamp)}, long before ldapquota wrote it at "
                           f"{_iso(self.written_at + server_offset)}")
        if self.expected is None or state == self.expected:
            self.baseline = stamp
            return True, None
        return False, None  # someone else wrote it after us: the account refresh reads it


class DirectoryTrust:
    """The probe, the canaries and the reconnection count of one Service."""

    def __init__(self, account_refresh: float, now: float, wall: Callable[[], float] = time.time):
        self.wall = wall
        self.probe = Periodic(min(account_refresh, PROBE_EVERY), now)
        self.seen_recoveries = 0
        self.status: Optional[Canary] = None
        self.event: Optional[Canary] = None  # a write seen holding (has a baseline)
        self.latest: Optional[Canary] = None  # the newest write, not yet seen
        #: Why the full sync now due was asked for (for a loud refusal), until one passes.
        self.why: Optional[str] = None

    def change_interval(self, account_refresh: float, now: float) -> None:
        self.probe.change_interval(min(account_refresh, PROBE_EVERY), now)

    def wrote(self, dn: str, state: QuotaState) -> None:
        self.latest = Canary(dn, state, self.wall())

    def full_sync_began(self) -> None:
        """A full sync reads everything again: what we expected of earlier writes is void."""
        self.event = self.latest = None

    def status_written(self, dn: str, stamp: Optional[float]) -> None:
        self.status = Canary(dn, None, self.wall(), stamp) if stamp is not None else None

    def check(self, service: "Service", now: float) -> None:
        """Once per loop turn while the store may be tried: reconnection, probe."""
        link = service.link
        reasons = []
        if (self.probe.is_due(now) or not link.up) and not service.in_sync:
            self.probe.done(now)
            evidence = self._probe(service)
            if evidence is not None:
                reasons.append(f"the directory went back in time ({evidence}; restored from a backup?)")
        if link.recoveries != self.seen_recoveries:
            self.seen_recoveries = link.recoveries
            if service.ready:
                reasons.insert(0, "the LDAP connection was lost and is back (restarted, restored, failed over?)")
        if reasons:
            self.distrust(service, "; and ".join(reasons), now)

    def distrust(self, service: "Service", why: str, now: float) -> None:
        self.why = why
        self.full_sync_began()
        if service.sync_retry.failures:
            # The last full sync failed and backs off (a store that answers but fails the
            # search must not be read in full every second); it is owed anyway.
            when = f"the full sync owed since one failed, in {max(0.0, service.full_sync.due_at - now):.0f}s"
        else:
            service.full_sync.soon(now)
            when = "a full sync now"
        log.warning("%s: the cache of what LDAP holds cannot be trusted; running %s, which compares every "
                    "account's flag with its mailbox (docs/contract.md §5)", why, when)

    def _probe(self, service: "Service") -> Optional[str]:
        store = service.link.get(service.stop.abandonable, len(service.pending))
        if store is None:
            return None
        offset = service.window.server_offset
        try:
            with service.stop.abandonable():
                evidence = None
                for name in ("status", "event", "latest"):
                    canary = getattr(self, name)
                    if canary is None:
                        continue
                    keep, found = canary.look(*_state_and_time(store, canary), offset)
                    setattr(self, name, canary if keep else None)
                    evidence = evidence or found
                if self.latest is not None and self.latest.baseline is not None:
                    self.event, self.latest = self.latest, None
                if self.status is None and self.event is None and self.latest is None:
                    store.modified_at(service.config.ldap.base_dn)  # still answering?
        except (DirectoryUnavailable, PermissionDenied) as exc:
            if breaks_connection(exc):
                service.link.failed(exc, len(service.pending))
            else:
                # The server answered (an ACL hiding these entries, say): not a lost
                # connection, which would mean a full sync each time; this check is blind.
                log.debug("directory probe: %s", exc)
            return None
        return evidence


def appeared_before(store: FlagStore, unknown: Iterable[str], since: Optional[float]) -> Optional[str]:
    """Evidence that accounts appeared in the past: of the listed DNs the table does not
    know, one modified before ``since`` (what the last refresh asked for, store clock),
    which that refresh would have reported had it been there."""
    if since is None:
        return None
    for count, dn in enumerate(unknown):
        if count >= LISTING_SAMPLE:
            break
        try:
            stamp = store.modified_at(dn)
        except PermissionDenied:
            return None  # modification times hidden by an ACL: nothing to tell from
        if stamp is not None and stamp < since:
            return (f"{dn} is an account no refresh reported, last modified at {_iso(stamp)}, before the "
                    f"refresh's {_iso(since)}")
    return None


def _state_and_time(store: FlagStore, canary: Canary) -> Tuple[Optional[QuotaState], Optional[float]]:
    if canary.expected is None:
        return None, store.modified_at(canary.dn)
    entry = store.read_entry(canary.dn, [ATTR_OVER, ATTR_FREE])
    if entry is None:
        return None, None
    return entry.quota_state, store.modified_at(canary.dn)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))
