"""The daemon's loop: keep every account's flag following its mailbox, within a second.

One thread, one loop. Each turn it

1. takes what the change feed saw (inotify events, or a slice of polling) and notes the
   accounts of those mailboxes in a debouncer: the first change of a quiet mailbox is
   measured at once, the changes that follow within ``daemon.debounce`` once more at its
   end;
2. measures the accounts that are due (only those), with the same Evaluator as
   ``--sync``, and keeps a pending write for each one whose state differs from the store's;
3. writes the pending changes (:mod:`.pending`), unless the store is down: then they
   wait, and are written once it answers again (:mod:`.link`);
4. runs, when due, the full sync (:mod:`.fullsync`: ``daemon.interval``, SIGUSR1, a lost
   notification, a config reload, a reconnect) or the account refresh (:mod:`.refresher`);
   and re-measures the mailboxes that are over quota (``daemon.over_recheck``), so a
   mailbox freed where inotify cannot see (NFS) is unblocked soon anyway;
5. sleeps in ``select()`` until the next event, signal or deadline.

While a full sync runs (minutes on a big directory) the loop keeps handling events from
inside the sync's progress callback, and re-measures afterwards whatever changed
meanwhile, so the sync's older measurements never win. Signals only set flags (and wake
the loop): see :mod:`.control`.
"""

import logging
import os
import select
import time
from typing import Callable, Optional, Sequence, Set, Tuple

from ldapquota.accounts import account_from_entry
from ldapquota.entry import STATE_ATTRIBUTES, AccountEntry
from ldapquota.errors import AccountError, DirectoryUnavailable, PermissionDenied, SafetyRefusal, SourceUnavailable
from ldapquota.evaluation import Evaluator
from ldapquota.flagstore import FlagStore, open_store
from ldapquota.metrics import MetricsServer
from ldapquota.quota import QuotaState
from ldapquota.schedule import Backoff, Debouncer, Periodic
from ldapquota.service.control import Stopping, StopSwitch
from ldapquota.service.fullsync import REFUSED_RETRY, DaemonFullSync, SyncHooks
from ldapquota.service.health import Health
from ldapquota.service.link import ReconnectingStore
from ldapquota.service.pending import PendingWrites
from ldapquota.service.refresher import DaemonRefresh, ListingPace, RefreshWindow
from ldapquota.service.table import AccountTable, dn_key
from ldapquota.service.trust import DirectoryTrust
from ldapquota.settings import Config
from ldapquota.sources import open_source
from ldapquota.sources.base import ChangeFeed, UsageSource
from ldapquota.sync import Change

log = logging.getLogger(__name__)

#: Seconds to wait for any one store answer. Short: a hung directory must not hold up
#: the loop (nor a shutdown) for long; a healthy one answers a modify or a page in far less.
RECEIVE_TIMEOUT = 5
#: While a full sync or refresh runs, events are handled this often (seconds).
TICK_EVERY = 0.1
#: Measurements per loop turn before signals and writes get a look in.
BATCH = 500
#: While the mail store looks unmounted, due measurements wait this long.
ROOT_RETRY = 5.0
#: Longest sleep of the loop (it has nothing to do, but stays lively).
MAX_SLEEP = 60.0


class Service:
    """The daemon's state and loop. ``run()`` returns the exit code (0 after SIGTERM)."""

    def __init__(self, config: Config, *, config_path: str, verbosity: int = 0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 source_factory: Callable[[Config], UsageSource] = open_source,
                 store_factory: Optional[Callable[[Config], FlagStore]] = None,
                 metrics_server: Optional[MetricsServer] = None):
        """``source_factory`` and ``store_factory`` make the usage source and the store
        connections from a configuration (the configured ones unless given: tests give fakes)."""
        self.config_path = config_path
        self.verbosity = verbosity
        self.clock = clock
        self.wall = wall
        self.source_factory = source_factory
        self.store_factory = store_factory
        self.stop = StopSwitch()
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.feed: Optional[ChangeFeed] = None
        self.ready = False
        self._apply(config, first=True)
        self.health = Health(self, metrics_server)  # systemd and metrics (docs/contract.md §12)

    def _apply(self, config: Config, *, first: bool = False) -> None:
        """Take ``config`` (at start and on a reload that changed what measuring reads)."""
        self.config = config
        self.evaluator = self.new_evaluator(config)
        now = self.clock()
        daemon = config.daemon
        if first:
            self.table = AccountTable(self.evaluator.attributes, self.clock)
            self.pending = PendingWrites(config.policy.max_changes)
            self.link = ReconnectingStore(self.new_store, self.clock)
            self.trust = DirectoryTrust(daemon.account_refresh, now, self.wall)
            self.pending.on_written = self.trust.wrote
            self.debouncer: Debouncer[str] = Debouncer(daemon.debounce)
            self.full_sync = Periodic(daemon.interval, now, first=now)
            self.refresh = Periodic(daemon.account_refresh, now, first=float("inf"))  # after the first sync
            self.recheck = Periodic(daemon.over_recheck, now)
            self.window = RefreshWindow()
            self.listing = ListingPace(daemon.account_refresh)
            self.sync_retry = Backoff(initial=1.0, maximum=REFUSED_RETRY)  # after a full sync failed
            self.refresh_retry = Backoff(initial=1.0, maximum=REFUSED_RETRY)  # after a refresh failed
            self.refused: Optional[str] = None  # the last full sync was refused by a safety rule
            self.in_sync = False
            self.touched_in_sync: Set[str] = set()  # measured by events while a full sync ran
            self.last_tick = 0.0
            self._source_problem: Optional[str] = None

    def new_store(self) -> FlagStore:
        """A store connection (not yet connected) under the current configuration."""
        if self.store_factory is not None:
            return self.store_factory(self.config)
        return open_store(self.config, receive_timeout=RECEIVE_TIMEOUT)

    def new_evaluator(self, config: Config) -> Evaluator:
        return Evaluator(config, self.source_factory(config))

    # ------------------------------------------------------------------ signals

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: finish the write in flight, then leave."""
        self._wake()
        self.stop.request()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file."""
        self._reload = True
        self._wake()

    def request_full_sync(self) -> None:
        """SIGUSR1: a full sync now."""
        log.info("full sync requested (SIGUSR1)")
        self.full_sync.soon(self.clock())
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: the loop is awake already

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        self.start()
        try:
            while not self.stop.requested:
                self.step()
                if not self.stop.requested:
                    self.health.turned()  # systemd's watchdog: only from here and background_tick()
                    self._wait()
        except Stopping:
            pass
        finally:
            self.health.stopping()  # systemd: STOPPING=1
            self.close()
        left = len(self.pending)
        log.info("stopped%s", f"; {left} pending change(s) left for the next full sync" if left else "")
        return 0

    def start(self) -> None:
        """Open the change feed (before the first :meth:`step`)."""
        daemon = self.config.daemon
        self.feed = self.evaluator.source.feed(daemon)
        self.table.feed = self.feed
        log.info(
            "daemon started (pid %d, config %s): %s source, full sync every %gs, accounts refreshed every %gs, "
            "over-quota mailboxes re-measured every %gs, %s",
            os.getpid(), self.config_path, self.config.mailboxes.source, daemon.interval, daemon.account_refresh,
            daemon.over_recheck, self.feed.description,
        )
        self.health.started()

    def close(self) -> None:
        """Release the store connection, the feed, the source and the wake-up pipe (once)."""
        if self._wake_w < 0:
            return
        self.link.close()
        if self.feed is not None:
            self.feed.close()
        self.evaluator.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1

    def step(self) -> None:
        """One turn of the loop without its wait: whatever is due now."""
        if self._reload:
            self._reload = False
            from ldapquota.service.reload import reload_config

            reload_config(self)
        now = self.clock()
        self._collect(now)
        self._measure_due(now)
        self._flush()
        if self.stop.requested:
            return
        now = self.clock()
        if self.link.may_try(now):
            self.trust.check(self, now)  # reconnected, or the directory went back in time: a full sync
            if self.full_sync.is_due(now):
                self._run_full_sync()
            elif self.refresh.is_due(now):
                DaemonRefresh(self).run()
        now = self.clock()
        if self.recheck.is_due(now):
            if not (self.feed is not None and self.feed.polls_everything):
                for key in self.table.over_to_recheck():
                    self.debouncer.touch(key, now, delay=0.0)
            self.recheck.done(now)

    def _wait(self) -> None:
        assert self.feed is not None
        now = self.clock()
        deadlines = [now + MAX_SLEEP, self.recheck.due_at, self.health.wake_at()]
        due = self.debouncer.next_due()
        if due is not None:
            deadlines.append(due)
        if self.feed.next_poll_at is not None:
            deadlines.append(self.feed.next_poll_at)
        store_due = min(self.full_sync.due_at, self.refresh.due_at, self.trust.probe.due_at)
        if (self.pending and not self.refused) or not self.link.up:
            store_due = now  # the store is down: try again at its backoff
        if not self.link.up:
            store_due = max(store_due, self.link.retry_at)
        deadlines.append(store_due)
        fds = [self._wake_r]
        feed_fd = self.feed.fileno()
        if feed_fd is not None:
            fds.append(feed_fd)
        readable, _, _ = select.select(fds, [], [], max(0.0, min(deadlines) - now))
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    # ------------------------------------------------------------------ events → measurements

    def _collect(self, now: float) -> None:
        """Changed mailboxes (notifications, polling) → their accounts into the debouncer."""
        assert self.feed is not None
        changes = self.feed.collect(now)
        if changes.overflow:
            log.warning("change notifications were lost (the event queue overflowed); running a full sync")
            self.full_sync.soon(now)
        if changes.unmounted:
            self.evaluator.source.reopen()
            log.warning("a file system holding watched mailboxes was unmounted; those mailboxes are polled until they are back")
        for mailbox in changes.keys:
            for key in self.table.keys_for(mailbox):
                self.debouncer.notice(key, now)
                self.health.noticed(key, now)

    def _measure_due(self, now: float) -> None:
        due = self.debouncer.pop_due(now, BATCH)
        if not due:
            return
        source = self.evaluator.source
        # An unmounted store looks like every mailbox vanishing: act on nothing then.
        try:
            source.check_ready()
        except (SafetyRefusal, DirectoryUnavailable, SourceUnavailable) as exc:
            self._source_down(exc, due, now)
            return
        if self._source_problem is not None:
            log.info("the mail store is back; measuring again")
            self._source_problem = None
            source.reopen()  # what it held open may be the directory under the mount
        done = 0
        try:
            # Measuring writes nothing: a SIGTERM may cut it short (a hung doveadm, say).
            with self.stop.abandonable():
                records = [self.table.get(key) for key in due]
                source.prefetch([record.mailbox for record in records if record is not None and record.mailbox is not None])
                for key in due:
                    self._evaluate(key)
                    done += 1
                    if self.pending.get(key) is None:
                        self.health.settled(key)  # nothing to write: no flag latency to count
        except SourceUnavailable as exc:  # the source's command failed or hung (docs/contract.md §10)
            self._source_down(exc, due[done:], now)

    def _source_down(self, exc: Exception, due: Sequence[str], now: float) -> None:
        if self._source_problem is None:
            log.error("%s; measuring paused until it is back", exc)
        self._source_problem = str(exc)
        for key in due:
            self.debouncer.touch(key, now, delay=ROOT_RETRY)

    def _evaluate(self, key: str) -> None:
        record = self.table.get(key)
        if record is None:
            return
        if self.in_sync:
            self.touched_in_sync.add(key)
        if record.layout != self.table.layout:
            return  # read under another config (reload): the full sync under way reads it again
        waiting = self.pending.get(key)
        current = waiting.new if waiting else record.state
        evaluation = self.evaluator.evaluate(self.table.entry_for(record, current))
        if evaluation.error is not None:
            if evaluation.error != record.error:
                log.warning("%s: %s; flag kept (%s)", record.address, evaluation.error, "TRUE" if current.over else "FALSE")
            record.error = evaluation.error
            self.health.measure_failed()
            return
        record.error = None
        if record.mailbox is not None and evaluation.measurement is not None and self.feed is not None:
            self.feed.follow(record.mailbox, self.clock(), evaluation.measurement)
        new = evaluation.new
        self.table.mark_over(key, new.over)
        if new == record.state:
            self.pending.drop(key)
            return
        assert evaluation.decision is not None
        change = Change(record.dn, record.address, record.state, new, record.has_class, evaluation.decision.reason)
        self.pending.put(key, change)
        log.debug("%s: change pending: %s", record.address, change.describe())

    # ------------------------------------------------------------------ the store

    def _flush(self) -> None:
        if not self.pending or self.refused:
            return
        store = self.link.get(self.stop.abandonable, len(self.pending))
        if store is None:
            return
        failure = self.pending.flush(store, self.table, stopping=lambda: self.stop.requested, shielded=self.stop.shielded)
        if failure is not None:
            self.link.failed(failure, len(self.pending))
        if self.pending.budget_spent and not self.refused and not self.in_sync:  # (a running sync decides)
            self.full_sync.soon(self.clock())

    def background_tick(self) -> None:
        """From inside a full sync or a refresh (on connections of their own): stop if
        asked, and keep events flowing."""
        self.stop.check()
        now = self.clock()
        if now - self.last_tick < TICK_EVERY:
            return
        self.last_tick = now
        self.health.turned()  # the loop's own thread: a full sync that makes progress is alive
        self._collect(now)
        self._measure_due(now)
        self._flush()
        self.stop.check()

    def _run_full_sync(self) -> None:
        if self.pending and not self.refused:
            self._flush()
            if self.pending and not self.link.up:
                return  # the store is down: the sync would fail as well
        if self.link.get(self.stop.abandonable, len(self.pending)) is None:
            return  # the loop's own connection is needed for events during the sync
        DaemonFullSync(self).run()

    # ------------------------------------------------------------------ the account table

    def describe(self, entry: AccountEntry) -> Tuple[str, Optional[str]]:
        """(address, mailbox key) of an entry, as the event path needs them."""
        source = self.evaluator.source
        try:
            account = account_from_entry(entry, self.config.accounts, source)
        except AccountError:
            return entry.first(self.config.accounts.address_attribute) or entry.dn, None
        return account.address, source.key(account.mailbox)

    def seen_in_sync(self, entry: AccountEntry) -> None:
        address, mailbox = self.describe(entry)
        key, record, _ = self.table.upsert(entry, address, mailbox)
        record.generation = self.table.generation
        self.table.set_state(key, self.stored_state(key, entry.quota_state))

    def stored_state(self, key: str, read: QuotaState) -> QuotaState:
        """What the store holds, as a full sync or refresh ``read`` it; but an account the
        events wrote since that read began may have been read before the write (a page is
        read ahead): then the loop's connection, which wrote, is asked."""
        record = self.table.get(key)
        if record is None or read == record.state or key not in self.pending.written:
            return read
        try:
            entry = self.link.store.read_entry(record.dn, STATE_ATTRIBUTES) if self.link.store else None
        except (DirectoryUnavailable, PermissionDenied):
            entry = None
        return entry.quota_state if entry is not None else record.state

    def refreshed(self, entry: AccountEntry) -> None:
        is_new = dn_key(entry.dn) not in self.table.records
        address, mailbox = self.describe(entry)
        key, record, changed = self.table.upsert(entry, address, mailbox)
        stored = self.stored_state(key, entry.quota_state)
        if is_new:
            record.generation = self.table.generation
            log.debug("%s: new account %s", record.address, entry.dn)
        if changed or record.state != stored:
            # New, limit or mailbox changed, or someone else wrote the flag: decide again.
            self.table.set_state(key, stored)
            self.pending.drop(key)
            self.debouncer.touch(key, self.clock(), delay=0.0)

    def forget(self, key: str, why: str) -> None:
        record = self.table.forget(key)
        if record is not None:
            log.info("%s: %s %s; no longer watched", record.address, record.dn, why)
        self.pending.drop(key)
        self.debouncer.discard(key)

    def sync_hooks(self) -> SyncHooks:
        def superseded(dn: str) -> bool:
            return dn_key(dn) in self.touched_in_sync

        def written(dn: str, new: QuotaState) -> None:
            self.table.set_state(dn_key(dn), new, written=True)
            self.trust.wrote(dn, new)

        return SyncHooks(self.seen_in_sync, superseded, written, self.background_tick, self.stop.shielded)
