"""The daemon's full sync: ``--sync``'s pass, with all its safety rules, run on a
connection of its own while the loop keeps handling events.

:class:`SyncTee` is what the sync talks to: the sync's own store, with every account the
search returns noted in the daemon's table (so the table is rebuilt by the same search),
the loop's events handled before each write, and a write skipped when an event measured
that account after the sync did (the older measurement must not win).
"""

import logging
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Iterator, List, Optional, Sequence, Tuple

from ldapquota.entry import AccountEntry
from ldapquota.errors import (
    DirectoryUnavailable,
    PermissionDenied,
    SafetyRefusal,
    SchemaMissing,
    SourceUnavailable,
    SyncBusy,
    WriteSuperseded,
)
from ldapquota.flagstore import FlagStore, Outcome, W
from ldapquota.quota import QuotaState
from ldapquota.service.link import breaks_connection
from ldapquota.sync import SyncReport, run_sync
from ldapquota.synclock import FullSyncLock

if TYPE_CHECKING:
    from ldapquota.service.loop import Service

log = logging.getLogger(__name__)

#: After a full sync was refused by a safety rule, try again after at most this long.
REFUSED_RETRY = 600.0
#: A full sync refused before reading any account (mail store missing or empty: not
#: mounted yet at boot) is tried again this soon.
SOURCE_SYNC_RETRY = 30.0
#: Another full sync of the store (a cron --sync) holds the full-sync lock: try again this soon.
BUSY_RETRY = 30.0
#: Why a sync's write is skipped when an event measured the account after the sync did.
SUPERSEDED_BY_EVENT = "measured again by an event since this sync measured it; that newer result decides"


class SyncHooks:
    """What the daemon does at each step of its full sync."""

    def __init__(self, seen: Callable[[AccountEntry], None], superseded: Callable[[str], bool],
                 written: Callable[[str, QuotaState], None], tick: Callable[[], None],
                 shielded: Callable[[], ContextManager[None]]):
        self.seen = seen  # an account the search returned
        self.superseded = superseded  # measured again by an event since the sync did?
        self.written = written  # the sync wrote this state
        self.tick = tick  # keep events flowing (and stop if asked)
        self.shielded = shielded  # a write in flight: SIGTERM waits for it


class SyncTee(FlagStore):
    def __init__(self, store: FlagStore, hooks: SyncHooks):
        self.store = store
        self.hooks = hooks
        self.server = store.server
        self.complete = False  # the account search ran to its end
        self.accounts = 0  # accounts it returned
        self.sync_time_written = False  # quotaSyncTime was set on the status entry

    def connect(self) -> "SyncTee":
        self.store.connect()
        self.server = self.store.server
        return self

    def close(self) -> None:
        self.store.close()

    def search_accounts(self, attributes: Sequence[str]) -> Iterator[AccountEntry]:
        for entry in self.store.search_accounts(attributes):
            self.accounts += 1
            self.hooks.seen(entry)
            yield entry
        self.complete = True

    def write_state(self, dn: str, old: QuotaState, new: QuotaState, has_class: bool, *, noop: bool = False,
                    if_unchanged: bool = False) -> None:
        self.hooks.tick()
        if self.hooks.superseded(dn):
            # An event measured this account after the sync did (a sync measures all
            # before it writes). It is measured again right after the sync.
            raise WriteSuperseded(SUPERSEDED_BY_EVENT)
        with self.hooks.shielded():
            self.store.write_state(dn, old, new, has_class, noop=noop, if_unchanged=if_unchanged)
        self.hooks.written(dn, new)

    def write_states(self, writes: Iterable[W], *, if_unchanged: bool = False) -> Iterator[Outcome[W]]:
        """As :meth:`write_state`, many in flight: each write is checked (events handled,
        superseded?) just before the store sends it; a SIGTERM lets the writes in flight
        be answered, then stops."""
        skipped: List[W] = []

        def admitted() -> Iterator[W]:
            for write in writes:
                self.hooks.tick()
                if self.hooks.superseded(write.dn):
                    skipped.append(write)
                else:
                    yield write

        with self.hooks.shielded():
            for write, problem in self.store.write_states(admitted(), if_unchanged=if_unchanged):
                yield from self._skipped(skipped)
                if problem is None:
                    self.hooks.written(write.dn, write.new)
                yield write, problem
            yield from self._skipped(skipped)

    @staticmethod
    def _skipped(skipped: List[W]) -> Iterator[Outcome[W]]:
        while skipped:
            yield skipped.pop(0), WriteSuperseded(SUPERSEDED_BY_EVENT)

    def write_sync_time(self, dn: str, epoch: float, *, noop: bool = False) -> None:
        with self.hooks.shielded():
            self.store.write_sync_time(dn, epoch, noop=noop)
        self.sync_time_written = not noop

    # The rest as the store answers it.

    def find_accounts(self, address: str, attributes: Sequence[str]) -> List[AccountEntry]:
        return self.store.find_accounts(address, attributes)

    def changed_accounts(self, attributes: Sequence[str], since: float) -> Iterator[Tuple[AccountEntry, Optional[float]]]:
        return self.store.changed_accounts(attributes, since)

    def departed_accounts(self, since: float) -> Iterator[str]:
        return self.store.departed_accounts(since)

    def account_dns(self) -> Iterator[str]:
        return self.store.account_dns()

    def read_entry(self, dn: str, attributes: Sequence[str]) -> Optional[AccountEntry]:
        return self.store.read_entry(dn, attributes)

    def modified_at(self, dn: str) -> Optional[float]:
        return self.store.modified_at(dn)

    def missing_schema(self) -> List[str]:
        return self.store.missing_schema()


class DaemonFullSync:
    """One full sync of the daemon, and what it means for the loop's state."""

    def __init__(self, service: "Service"):
        self.service = service

    def run(self) -> None:
        """One full sync, under the full-sync lock (docs/contract.md §5): while a cron
        ``--sync`` of the same store runs, this one waits for a later turn."""
        try:
            lock = FullSyncLock(self.service.config).acquire()
        except SyncBusy as exc:
            self._busy(exc)
            return
        with lock:
            self._run()

    def _busy(self, exc: SyncBusy) -> None:
        service = self.service
        retry = min(service.config.daemon.interval, BUSY_RETRY)
        # Events are still written meanwhile; held changes wait, as after any sync that did not pass.
        level = log.info if type(exc) is SyncBusy else log.error
        level("full sync postponed: %s. Next try in %gs", exc, retry)
        service.full_sync.retry(service.clock(), retry)

    def _run(self) -> None:
        service = self.service
        config = service.config
        started_wall = service.wall()
        service.table.generation += 1
        assert service.feed is not None
        service.feed.retry_limit()
        service.evaluator.source.reopen()  # follows a remounted store
        service.in_sync = True
        service.touched_in_sync = set()
        service.pending.written.clear()
        service.trust.full_sync_began()
        service.last_tick = service.clock()
        store = service.new_store()
        tee = SyncTee(store, service.sync_hooks())
        succeeded = False
        # A full sync asked for while this one runs (SIGUSR1, lost notifications) runs after
        # it: this one may have measured those mailboxes before. Until then, a request is
        # the only thing that sets a due time.
        full_sync = service.full_sync
        full_sync.due_at = float("inf")
        try:
            with service.stop.abandonable():
                store.connect()
                tee.server = store.server
                # The hourly safety net measures in this process unless the operator asked
                # for workers: time matters little here, memory and a quiet process do.
                report = run_sync(config, tee, source=service.evaluator.source, progress=lambda _: service.background_tick(),
                                  workers=config.mailboxes.workers or 0)
        except SafetyRefusal as exc:
            asked = full_sync.due_at
            service.health.sync_refused()
            self._refused(exc, tee.complete, tee.accounts)
        except (DirectoryUnavailable, PermissionDenied, SchemaMissing, SourceUnavailable) as exc:
            # SourceUnavailable: the usage source cannot be asked (docs/contract.md §10):
            # nothing was written; tried again with the same backoff.
            asked = full_sync.due_at
            service.health.sync_failed(exc)
            self._failed(exc)
        else:
            asked = full_sync.due_at
            succeeded = True
            self._passed(report, started_wall, tee.sync_time_written)
        finally:
            store.close()
            service.in_sync = False
        full_sync.soon(asked)
        self._measure_again(succeeded)
        if not service.ready and (succeeded or tee.complete):
            service.ready = True
            log.info("ready: %d accounts, %d mailboxes followed with notifications, %d polled",
                     len(service.table), service.feed.watched_count, service.feed.polled_count)
            service.health.first_pass_done()  # systemd: READY=1
        service.health.sync_ended()

    def _failed(self, exc: Exception) -> None:
        """Each try reads the whole directory: the next one backs off, even when the store
        is reachable again at once (a server that answers, but cuts the search short or
        times out on it, would otherwise be searched in full every second)."""
        service = self.service
        delay = min(service.sync_retry.next_delay(), service.config.daemon.interval)
        log.error("full sync failed: %s; next try in %.0fs", exc, delay)
        service.full_sync.retry(service.clock(), delay)
        if breaks_connection(exc):
            service.link.failed(exc, len(service.pending))

    def _refused(self, exc: SafetyRefusal, complete: bool, accounts: int) -> None:
        service = self.service
        service.sync_retry.reset()
        first = service.refused is None
        service.refused = str(exc)
        retry = min(service.config.daemon.interval, REFUSED_RETRY)
        level = log.error if first else log.warning
        if not complete:
            # Refused before any account was read: the mail store is missing or empty (not
            # mounted yet at boot). Look again soon, not in ten minutes, and say it once.
            retry = SOURCE_SYNC_RETRY
            level = log.error if first else log.debug
        why = service.trust.why
        if why is not None and complete:
            # A restore can flip many flags; policy.max_changes still holds (it cannot tell a
            # restore from a store mounted empty), so say loudly that LDAP may be stale.
            level = log.error
            exc = SafetyRefusal(f"{exc}. It was run because {why}: the flags in LDAP may not match the mailboxes "
                                "until a full sync passes; check, then run ldapquota --sync --force (or raise "
                                "policy.max_changes)")
        level("full sync refused: %s. Nothing was written, and changes found by events are held "
              "until a full sync passes (next try in %gs, or SIGUSR1)", exc, retry)
        if complete and accounts:
            # (A search that matched no account at all is refused because it is not
            # believed: it does not make every account "gone" either.)
            self._forget_unseen()
        service.full_sync.retry(service.clock(), retry)

    def _passed(self, report: SyncReport, started_wall: float, sync_time_written: bool) -> None:
        service = self.service
        if service.refused:
            log.info("full sync passed the safety rules again; event-driven writes resume")
        service.refused = None
        service.sync_retry.reset()
        service.trust.why = None
        service.pending.sync_passed()
        self._forget_unseen()
        now = service.clock()
        service.full_sync.done(now)
        service.refresh.done(now)
        service.window.full_sync_began(started_wall)
        if sync_time_written:
            self._learn_server_clock()
        service.listing.schedule(now)
        service.health.sync_passed(report)
        log.info("full sync: %s", report.summary())

    def _learn_server_clock(self) -> None:
        """The status entry was just written (quotaSyncTime): its modification time is the
        server's "now". Without a status_dn, our clock is taken as the server's; when that
        write failed, the offset learnt last stays (the entry's time may be days old)."""
        service = self.service
        status_dn = service.config.ldap.status_dn
        store = service.link.store
        if not status_dn or store is None:
            return
        asked = service.wall()
        try:
            with service.stop.abandonable():
                stamp = store.modified_at(status_dn)
        except (DirectoryUnavailable, PermissionDenied):
            return
        service.window.learn_offset(stamp, asked)
        service.trust.status_written(status_dn, stamp)  # from now on it may only move forward

    def _forget_unseen(self) -> None:
        service = self.service
        gone = service.table.unseen()
        for key in gone:
            record = service.table.get(key)
            if record is not None:
                log.debug("%s: no longer an account; no longer watched", record.address)
            service.table.forget(key)
            service.pending.drop(key)
            service.debouncer.discard(key)
        if gone:
            log.info("%d account(s) gone from LDAP since the last full sync; no longer watched", len(gone))

    def _measure_again(self, succeeded: bool) -> None:
        """Whatever events measured during the sync may be newer than what the sync
        measured: measure again. After a sync that passed, held changes are re-decided
        against what the store now holds."""
        service = self.service
        now = service.clock()
        again = set(service.touched_in_sync)
        if succeeded:
            again |= set(service.pending)
            service.pending.clear()
        for key in again:
            service.debouncer.touch(key, now, delay=0.0)
        service.touched_in_sync = set()
