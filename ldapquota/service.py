"""The daemon's loop: keep every account's flag following its mailbox, within a second.

One thread, one loop. Each turn it

1. takes what the watcher saw (inotify events, or a slice of ``stat`` polling) and notes
   the accounts of those mailboxes in a debouncer (``daemon.debounce``);
2. measures the accounts that are due (only those), with the same
   :class:`~ldapquota.evaluation.Evaluator` as ``--sync``, and keeps a *pending* change for
   each one whose state differs from what LDAP holds;
3. writes the pending changes (one modify each, only what changed), unless LDAP is
   down: then they wait, and are written once it answers again (reconnect with backoff);
4. runs, when due, the full sync (:func:`~ldapquota.sync.run_sync`, with all its safety
   rules: ``daemon.interval``, SIGUSR1, an inotify queue overflow, a config reload) or the
   account refresh (``daemon.account_refresh``: accounts modified since the last look, by
   ``modifyTimestamp``, plus a DN-only listing for deletions, paced so it stays cheap);
   and re-measures the mailboxes that are over quota (``daemon.over_recheck``), so a
   mailbox freed where inotify cannot see (NFS) is unblocked soon anyway;
5. sleeps in ``select()`` until the next event, signal or deadline.

The account table holds what the events need and nothing more: per account its DN,
address, maildir, the LDAP attributes the path and limit come from, and the state LDAP
holds. While a full sync runs (minutes on a big directory) the loop keeps handling
events from inside the sync's progress callback, on its own connection, and re-measures
afterwards whatever changed meanwhile, so the sync's older measurements never win.

Signals only set flags (and wake the loop): SIGTERM ends the loop after the write in
flight; while the loop waits on LDAP for something else (connecting, searching) it
leaves at once. SIGHUP re-reads the config, SIGUSR1 asks for a full sync.
"""

import calendar
import contextlib
import logging
import os
import select
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

from ldapquota import log as logsetup
from ldapquota.accounts import account_from_entry
from ldapquota.config import Config, LdapConfig, load_config
from ldapquota.directory import (
    ATTR_FREE,
    ATTR_OVER,
    PAGE_SIZE,
    AccountEntry,
    Directory,
    EntryWriteError,
    generalized_time,
)
from ldapquota.errors import (
    AccountError,
    ConfigError,
    DirectoryUnavailable,
    PermissionDenied,
    SafetyRefusal,
    SchemaMissing,
)
from ldapquota.paths import lexically_under_root
from ldapquota.quota import QuotaState
from ldapquota.schedule import Backoff, Debouncer, Periodic
from ldapquota.evaluation import Evaluator
from ldapquota.sync import Change, WriteSuperseded, check_mail_root, run_sync
from ldapquota.watcher import MAILDIRSIZE, Watcher

log = logging.getLogger(__name__)

#: Seconds to wait for any one LDAP answer. Short: a hung directory must not hold up
#: the loop (nor a shutdown) for long; a healthy one answers a modify or a page of
#: 1000 entries in far less.
RECEIVE_TIMEOUT = 5  # ldap3 wants whole seconds
#: The account refresh asks for entries modified since its last look minus this much,
#: to allow for clock skew between this host and the LDAP server and replication lag.
MODIFY_MARGIN = 300.0
#: A modifyTimestamp second older than this (by our clock) is taken as closed.
SECOND_CLOSED = 60.0
MODIFY_TIMESTAMP = "modifyTimestamp"
#: A DN-only listing (to notice deleted accounts) runs at most every this many times
#: its own duration: ~0.2 % of a core however big the directory is.
LISTING_COST_FACTOR = 500
#: After a full sync was refused by a safety rule, try again after at most this long.
REFUSED_RETRY = 600.0
#: While a full sync runs, events are handled this often (seconds).
TICK_EVERY = 0.1
#: Measurements per loop turn before signals and writes get a look in.
BATCH = 500
#: While the mail root looks unmounted, due measurements wait this long.
ROOT_RETRY = 5.0
#: A full sync refused because mailboxes.root is missing or empty is tried again this soon.
ROOT_SYNC_RETRY = 30.0
#: Longest sleep of the loop (it has nothing to do, but stays lively).
MAX_SLEEP = 60.0


class Stopping(Exception):
    """SIGTERM arrived while the loop was waiting on something it may abandon."""


class _Record:
    """One account, as the event path needs it (kept small: there may be 100,000)."""

    __slots__ = ("dn", "address", "path", "layout", "attrs", "state", "has_class", "generation", "error")

    def __init__(self, dn: str, address: str, path: Optional[str], layout: Tuple[str, ...], attrs: Tuple,
                 state: QuotaState, has_class: bool, generation: int):
        self.dn = dn
        self.address = address
        self.path = path  # the maildir (absolute), None if the entry gives none
        self.layout = layout  # the attribute names of ``attrs`` (shared by all records)
        self.attrs = attrs  # per name: None, the value, or a tuple of values
        self.state = _shared_state(state)  # what LDAP holds (as last read or written)
        self.has_class = has_class
        self.generation = generation  # the full sync that last saw it
        self.error: Optional[str] = None  # the last measuring error reported


class _Link:
    """The loop's LDAP connection: reconnects with backoff, says when it is down and back."""

    def __init__(self, config: LdapConfig, clock: Callable[[], float]):
        self.config = config
        self.clock = clock
        self.directory: Optional[Directory] = None
        self.backoff = Backoff()
        self.retry_at = 0.0
        self.down_since: Optional[float] = None
        self._last_error: Optional[str] = None

    @property
    def up(self) -> bool:
        return self.directory is not None

    def may_try(self, now: float) -> bool:
        return self.directory is not None or now >= self.retry_at

    def connect(self) -> Directory:
        directory = Directory(self.config, receive_timeout=RECEIVE_TIMEOUT).connect()
        if self.down_since is not None:
            log.info("LDAP %s reachable again after %.0fs", directory.server_uri, self.clock() - self.down_since)
        self.directory = directory
        self.down_since = None
        self._last_error = None
        self.backoff.reset()
        return directory

    def failed(self, exc: Exception, pending: int) -> None:
        self.close()
        now = self.clock()
        delay = self.backoff.next_delay()
        self.retry_at = now + delay
        message = str(exc)
        if self.down_since is None:
            self.down_since = now
            log.error("LDAP unavailable: %s; %d change(s) pending, retrying in %.1fs (backing off up to %gs)",
                      message, pending, delay, self.backoff.maximum)
        elif message != self._last_error:
            log.warning("LDAP still unavailable: %s; %d change(s) pending", message, pending)
        else:
            log.debug("LDAP still unavailable: %s; next try in %.1fs", message, delay)
        self._last_error = message

    def reset(self, config: LdapConfig) -> None:
        self.close()
        self.config = config
        self.retry_at = 0.0
        self.backoff.reset()

    def close(self) -> None:
        if self.directory is not None:
            self.directory.close()
            self.directory = None


class _SyncDirectory:
    """What :func:`run_sync` talks to during a daemon's full sync: the sync's own
    connection, with every account seen noted in the table (so the table is rebuilt
    by the same search), the loop's events handled before each write, and each write
    recorded. A SIGTERM lets the write in flight finish, then stops the sync."""

    def __init__(self, directory: Directory, service: "Service"):
        self._directory = directory
        self._service = service
        self.complete = False  # the account search ran to its end

    def search_accounts(self, attributes, search_filter=None, page_size=PAGE_SIZE) -> Iterator[AccountEntry]:
        for entry in self._directory.search_accounts(attributes, search_filter, page_size):
            self._service._seen_in_sync(entry)
            yield entry
        self.complete = True

    def write_state(self, dn, old, new, has_class, *, noop=False) -> None:
        self._service._background_tick()
        if dn.lower() in self._service._touched_in_sync:
            # An event measured this account after the sync did (a sync measures all
            # before it writes): the older measurement must not win. The account is
            # measured again right after the sync.
            raise WriteSuperseded(dn)
        with self._service._shielded():
            self._directory.write_state(dn, old, new, has_class, noop=noop)
        self._service._synced(dn, new)

    def write_sync_time(self, dn, epoch, *, noop=False) -> None:
        with self._service._shielded():
            self._directory.write_sync_time(dn, epoch, noop=noop)

    def __getattr__(self, name):
        return getattr(self._directory, name)


class Service:
    """The daemon's state and loop. ``run()`` returns the exit code (0 after SIGTERM)."""

    def __init__(self, config: Config, *, config_path: str, verbosity: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.config_path = config_path
        self.verbosity = verbosity
        self.clock = clock
        self.evaluator = Evaluator(config)
        self.layout = _layout(self.evaluator)
        self.records: Dict[str, _Record] = {}  # dn in lower case → record
        self.by_path: Dict[str, List[str]] = {}  # maildir → record keys
        self.over: Set[str] = set()  # keys whose (wanted) state is over quota
        self.pending: Dict[str, Change] = {}  # key → a write LDAP has not had yet
        self.link = _Link(config.ldap, clock)
        self.debouncer: Debouncer[str] = Debouncer(config.daemon.debounce)
        self.watcher: Optional[Watcher] = None
        now = clock()
        daemon = config.daemon
        self.full_sync = Periodic(daemon.interval, now, first=now)
        self.refresh = Periodic(daemon.account_refresh, now, first=float("inf"))  # after the first sync
        self.recheck = Periodic(daemon.over_recheck, now)
        self.listing_every = daemon.account_refresh
        self.listing_due = float("inf")
        self.last_look: Optional[float] = None  # wall clock when the last sync/refresh began
        self.newest_modify: Optional[float] = None  # newest modifyTimestamp a refresh has seen
        # Server time minus our time, learnt from the status entry after each full sync:
        # modifyTimestamp is the server's clock, and a host clock ahead of it would make
        # every refresh ask for changes "from the future".
        self.server_offset = 0.0
        self.refused: Optional[str] = None  # the last full sync was refused by a safety rule
        self.generation = 0
        self.ready = False
        self._stop = False
        self._reload = False
        self._sync_requested = False
        self._interruptible = 0
        self._in_sync = False
        self._touched_in_sync: Set[str] = set()
        # Flips written by events since the last full sync passed, and whether they have
        # reached policy.max_changes (then event flips wait for a full sync's verdict).
        self.flips_since_sync = 0
        self.flip_budget_spent = False
        self._last_tick = 0.0
        self._root_problem: Optional[str] = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------------ signals

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: finish the write in flight, then leave."""
        self._stop = True
        self._wake()
        if self._interruptible:
            raise Stopping()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file."""
        self._reload = True
        self._wake()

    def request_full_sync(self) -> None:
        """SIGUSR1: a full sync now."""
        self._sync_requested = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake already

    @contextlib.contextmanager
    def _abandonable(self) -> Iterator[None]:
        """A wait on LDAP that a SIGTERM may cut short (connect, search, sync)."""
        if self._stop:
            raise Stopping()
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1

    @contextlib.contextmanager
    def _shielded(self) -> Iterator[None]:
        """A write in flight: a SIGTERM waits for it (then takes effect)."""
        saved, self._interruptible = self._interruptible, 0
        try:
            yield
        finally:
            self._interruptible = saved
        if self._stop and saved:
            raise Stopping()

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        daemon = self.config.daemon
        self.watcher = Watcher(daemon.watch, daemon.poll_interval)
        log.info(
            "daemon started (pid %d, config %s): mail root %s, full sync every %gs, accounts refreshed every %gs, "
            "over-quota mailboxes re-measured every %gs, %s",
            os.getpid(), self.config_path, self.config.mailboxes.root, daemon.interval, daemon.account_refresh,
            daemon.over_recheck,
            "inotify" if self.watcher.uses_inotify else f"stat polling every {daemon.poll_interval:g}s",
        )
        try:
            while not self._stop:
                self._turn()
        except Stopping:
            pass
        finally:
            self.link.close()
            self.watcher.close()
            self.evaluator.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        log.info("stopped%s", f"; {len(self.pending)} pending change(s) left for the next full sync" if self.pending else "")
        return 0

    def _turn(self) -> None:
        if self._reload:
            self._reload = False
            self._do_reload()
        now = self.clock()
        if self._sync_requested:
            self._sync_requested = False
            log.info("full sync requested (SIGUSR1)")
            self.full_sync.soon(now)
        self._collect(now)
        self._measure_due(now)
        self._flush()
        if self._stop:
            return
        now = self.clock()
        if self.link.may_try(now):
            if self.full_sync.is_due(now):
                self._run_full_sync()
            elif self.refresh.is_due(now):
                self._run_refresh()
        now = self.clock()
        if self.recheck.is_due(now):
            for key in self.over:
                self.debouncer.touch(key, now, delay=0.0)
            self.recheck.done(now)
        if not self._stop:
            self._wait()

    def _wait(self) -> None:
        now = self.clock()
        deadlines = [now + MAX_SLEEP, self.recheck.due_at]
        due = self.debouncer.next_due()
        if due is not None:
            deadlines.append(due)
        assert self.watcher is not None
        if self.watcher.next_poll_at is not None:
            deadlines.append(self.watcher.next_poll_at)
        ldap_due = min(self.full_sync.due_at, self.refresh.due_at)
        if self.pending and not self.refused:
            ldap_due = now  # only left when LDAP is down
        if not self.link.up:
            ldap_due = max(ldap_due, self.link.retry_at)
        deadlines.append(ldap_due)
        timeout = max(0.0, min(deadlines) - now)
        fds = [self._wake_r]
        inotify_fd = self.watcher.fileno()
        if inotify_fd is not None:
            fds.append(inotify_fd)
        readable, _, _ = select.select(fds, [], [], timeout)
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    # ------------------------------------------------------------------ events → measurements

    def _collect(self, now: float) -> None:
        """Changed mailboxes (events, polling) → their accounts into the debouncer."""
        watcher = self.watcher
        assert watcher is not None
        changes = watcher.read()
        paths = changes.paths
        if watcher.next_poll_at is not None and now >= watcher.next_poll_at:
            paths |= watcher.poll(now)
        if changes.overflow:
            log.warning("inotify event queue overflowed: changes were lost; running a full sync")
            self.full_sync.soon(now)
        if changes.unmounted:
            self.evaluator.close()  # reopen mailboxes.root: it may be mounted again
            log.warning("a file system holding watched maildirs was unmounted; those mailboxes are polled until they are back")
        for path in paths:
            for key in self.by_path.get(path, ()):
                self.debouncer.touch(key, now)

    def _measure_due(self, now: float) -> None:
        due = self.debouncer.pop_due(now, BATCH)
        if not due:
            return
        # An unmounted store looks like every mailbox vanishing: act on nothing then.
        try:
            check_mail_root(self.config.mailboxes.root)
        except SafetyRefusal as exc:
            if self._root_problem is None:
                log.error("%s; measuring paused until it is back", exc)
            self._root_problem = str(exc)
            for key in due:
                self.debouncer.touch(key, now, delay=ROOT_RETRY)
            return
        if self._root_problem is not None:
            log.info("mailboxes.root %s is back; measuring again", self.config.mailboxes.root)
            self._root_problem = None
            self.evaluator.close()  # what it held open may be the directory under the mount
        for key in due:
            self._evaluate(key)

    def _evaluate(self, key: str) -> None:
        record = self.records.get(key)
        if record is None:
            return
        if self._in_sync:
            self._touched_in_sync.add(key)
        if record.layout != self.layout:
            return  # read under another config (reload): the full sync under way reads it again
        waiting = self.pending.get(key)
        current = waiting.new if waiting else record.state
        evaluation = self.evaluator.evaluate(_entry(record, current))
        if evaluation.error is not None:
            if evaluation.error != record.error:
                log.warning("%s: %s; flag kept (%s)", record.address, evaluation.error, "TRUE" if current.over else "FALSE")
            record.error = evaluation.error
            return
        record.error = None
        measurement = evaluation.measurement
        if record.path is not None and measurement is not None and self.watcher is not None:
            self.watcher.add(record.path, deep=measurement.method.startswith("walk"), now=self.clock())
        new = evaluation.new
        if new.over:
            self.over.add(key)
        else:
            self.over.discard(key)
        if new == record.state:
            self.pending.pop(key, None)
            return
        assert evaluation.decision is not None
        self.pending[key] = Change(record.dn, record.address, record.state, new, record.has_class, evaluation.decision.reason)
        log.debug("%s: change pending: %s", record.address, self.pending[key].describe())

    # ------------------------------------------------------------------ LDAP

    def _directory(self) -> Optional[Directory]:
        """The connected directory, connecting if the backoff allows; None while down."""
        if self.link.directory is not None:
            return self.link.directory
        if not self.link.may_try(self.clock()):
            return None
        try:
            with self._abandonable():
                return self.link.connect()
        except (DirectoryUnavailable, PermissionDenied) as exc:
            self.link.failed(exc, len(self.pending))
            return None

    def _flush(self) -> None:
        """Write the pending changes, one modify each; stop at the first sign of an outage."""
        if not self.pending or self.refused:
            return
        directory = self._directory()
        if directory is None:
            return
        for key in list(self.pending):
            if self._stop:
                return
            change = self.pending.get(key)
            record = self.records.get(key)
            if change is None:
                continue
            if record is None:
                del self.pending[key]
                continue
            if change.flip and not self._flip_allowed():
                continue  # held: a full sync decides (and refuses if this is a mass flip)
            try:
                with self._shielded():
                    directory.write_state(change.dn, change.old, change.new, change.has_class)
            except EntryWriteError as exc:
                del self.pending[key]
                self._write_failed(key, record, exc, directory)
                continue
            except (DirectoryUnavailable, PermissionDenied, SchemaMissing) as exc:
                self.link.failed(exc, len(self.pending))
                return
            del self.pending[key]
            record.state = _shared_state(change.new)
            record.has_class = True
            if change.flip:
                self.flips_since_sync += 1
            log.info("%s", change.describe())

    def _flip_allowed(self) -> bool:
        """policy.max_changes on the event path: flips written since the last full sync
        passed may not exceed it. A bulk change in LDAP (every quota lowered) or on disk
        must not flip accounts one event at a time where --sync would refuse; beyond the
        budget the flips wait for a full sync, which applies the rule to all of them."""
        allowed = self.config.policy.max_changes.allowed(len(self.records))
        if self.flips_since_sync < allowed:
            return True
        if not self.flip_budget_spent:
            self.flip_budget_spent = True
            log.warning(
                "%d isOverQuota flips since the last full sync reach policy.max_changes (%s of %d accounts); "
                "further flips wait for a full sync, starting now", self.flips_since_sync,
                self.config.policy.max_changes, len(self.records))
            self.full_sync.soon(self.clock())
        return False

    def _write_failed(self, key: str, record: _Record, exc: Exception, directory: Directory) -> None:
        try:
            exists = directory.read_entry(record.dn, ["1.1"]) is not None
        except (DirectoryUnavailable, PermissionDenied):
            exists = True
        if exists:
            log.error("%s: %s", record.address, exc)
        else:
            log.info("%s: %s is gone from LDAP; no longer watched", record.address, record.dn)
            self._forget(key)

    def _run_full_sync(self) -> None:
        if self.pending and not self.refused:
            self._flush()
            if self.pending and not self.link.up:
                return  # LDAP is down: the sync would fail as well
        if self._directory() is None:
            return  # the loop's own connection is needed for events during the sync
        assert self.watcher is not None
        started = self.clock()
        wall = time.time()
        self.generation += 1
        self.watcher.retry_limit()
        self.evaluator.close()  # reopened on first use: follows a remounted mailboxes.root
        self._in_sync = True
        self._touched_in_sync = set()
        self._last_tick = started
        directory = Directory(self.config.ldap, receive_timeout=RECEIVE_TIMEOUT)
        tee = _SyncDirectory(directory, self)
        succeeded = False
        try:
            with self._abandonable():
                directory.connect()
                # The hourly safety net measures in this process unless the operator asked
                # for workers: time matters little here, memory and a quiet process do.
                workers = self.config.mailboxes.workers or 0
                report = run_sync(self.config, tee, progress=self._sync_progress, workers=workers)  # type: ignore[arg-type]
        except SafetyRefusal as exc:
            first = self.refused is None
            self.refused = str(exc)
            retry = min(self.config.daemon.interval, REFUSED_RETRY)
            level = log.error if first else log.warning
            if not tee.complete:
                # Refused before any account was read: the mail root is missing or empty
                # (a store not mounted yet at boot). Look again soon, not in ten minutes,
                # and say it once.
                retry = ROOT_SYNC_RETRY
                level = log.error if first else log.debug
            level(
                "full sync refused: %s. Nothing was written, and changes found by events are held "
                "until a full sync passes (next try in %gs, or SIGUSR1)", exc, retry)
            if tee.complete:
                self._forget_unseen()
            self.full_sync.retry(self.clock(), retry)
        except (DirectoryUnavailable, PermissionDenied, SchemaMissing) as exc:
            log.error("full sync failed: %s", exc)
            self.link.failed(exc, len(self.pending))
        else:
            succeeded = True
            if self.refused:
                log.info("full sync passed the safety rules again; event-driven writes resume")
            self.refused = None
            self.flips_since_sync = 0
            self.flip_budget_spent = False
            self._forget_unseen()
            now = self.clock()
            self.full_sync.done(now)
            self.refresh.done(now)
            self.last_look = wall
            # The sync read every account: the next refresh starts from here, in server
            # time (this also drops a newest_modify from a server clock since stepped back).
            self.newest_modify = None
            self._learn_server_clock()
            self.listing_due = now + self.listing_every
            log.info("full sync: %s", report.summary())
        finally:
            directory.close()
            self._in_sync = False
        now = self.clock()
        # Whatever events measured during the sync may be newer than what the sync
        # measured: measure again. After a sync that passed, held changes are re-decided
        # against what LDAP now holds.
        again = set(self._touched_in_sync)
        if succeeded:
            again |= set(self.pending)
            self.pending.clear()
        for key in again:
            self.debouncer.touch(key, now, delay=0.0)
        self._touched_in_sync = set()
        if not self.ready and (succeeded or tee.complete):
            self.ready = True
            log.info("ready: %d accounts, %d maildirs watched with inotify, %d polled",
                     len(self.records), self.watcher.watched_count, self.watcher.polled_count)

    def _sync_progress(self, accounts: int) -> None:
        self._background_tick()

    def _background_tick(self) -> None:
        """Called from inside a full sync or an account refresh (which use connections of
        their own): stop if asked, and keep events flowing."""
        if self._stop:
            raise Stopping()
        now = self.clock()
        if now - self._last_tick < TICK_EVERY:
            return
        self._last_tick = now
        self._collect(now)
        self._measure_due(now)
        self._flush()
        if self._stop:
            raise Stopping()

    def _run_refresh(self) -> None:
        """New, changed and removed accounts since the last look, without measuring the rest.

        On a connection of its own, so that events keep being handled (and written on the
        loop's connection) while the searches run."""
        if self._directory() is None:
            return
        now = self.clock()
        wall = time.time()
        since = self._since(wall)
        base_filter = self.config.ldap.filter
        attributes = list(self.evaluator.attributes) + [MODIFY_TIMESTAMP]
        newest = self.newest_modify
        directory = Directory(self.config.ldap, receive_timeout=RECEIVE_TIMEOUT)
        self._last_tick = self.clock()
        try:
            with self._abandonable():
                directory.connect()
                for entry in directory.search_accounts(attributes, f"(&{base_filter}(modifyTimestamp>={since}))"):
                    self._refreshed(entry, now)
                    stamp = _epoch(entry.first(MODIFY_TIMESTAMP))
                    if stamp is not None and (newest is None or stamp > newest):
                        newest = stamp
                    self._background_tick()
                # Modified so that they no longer match the filter (disabled, moved out).
                for entry in directory.search_accounts(["1.1"], f"(&(!{base_filter})(modifyTimestamp>={since}))"):
                    key = _key(entry.dn)
                    if key in self.records:
                        log.info("%s: %s no longer matches ldap.filter; no longer watched", self.records[key].address, entry.dn)
                        self._forget(key)
                    self._background_tick()
                if now >= self.listing_due:
                    self._list_accounts(directory)
        except (DirectoryUnavailable, PermissionDenied) as exc:
            log.error("account refresh failed: %s", exc)
            self.link.failed(exc, len(self.pending))
            return
        finally:
            directory.close()
        self.last_look = wall
        self.newest_modify = newest
        self.refresh.done(self.clock())

    def _learn_server_clock(self) -> None:
        """The status entry was just written (quotaSyncTime): its modifyTimestamp is the
        server's "now". Without a status_dn, our clock is taken as the server's."""
        status_dn = self.config.ldap.status_dn
        directory = self.link.directory
        if not status_dn or directory is None:
            return
        asked = time.time()
        try:
            with self._abandonable():
                entry = directory.read_entry(status_dn, [MODIFY_TIMESTAMP])
        except (DirectoryUnavailable, PermissionDenied):
            return
        stamp = _epoch(entry.first(MODIFY_TIMESTAMP)) if entry else None
        if stamp is not None:
            offset = stamp - asked
            if abs(offset - self.server_offset) > 2:
                log.info("the LDAP server's clock is %+.0f s from ours; account refreshes use the server's", offset)
            self.server_offset = offset

    def _since(self, wall: float) -> str:
        """The lower bound of the next refresh, in the server's own time: the newest
        modifyTimestamp seen so far (inclusive, as a second holds many changes), or past
        that second once it is a minute old (no change can land in it any more, so a bulk
        change of many entries in one second is not read again and again). Before the
        first refresh: the last full sync's start, less a margin for clock skew."""
        newest = self.newest_modify
        server_wall = wall + self.server_offset
        if newest is None:
            look = self.last_look if self.last_look is not None else wall
            return generalized_time(look + self.server_offset - MODIFY_MARGIN)
        if newest < server_wall - SECOND_CLOSED:
            return generalized_time(newest + 1)
        return generalized_time(newest)

    def _list_accounts(self, directory: Directory) -> None:
        """Deleted accounts leave no modifyTimestamp behind: compare a DN-only listing.
        (Their flags no longer matter to the MTA, whose lookup finds no entry: this only
        stops watching them, so it is paced to stay cheap on big directories.)"""
        started = self.clock()
        present: Set[str] = set()
        for entry in directory.search_accounts(["1.1"]):
            present.add(_key(entry.dn))
            self._background_tick()
        gone = [key for key in self.records if key not in present]
        for key in gone:
            log.info("%s: %s is gone from LDAP; no longer watched", self.records[key].address, self.records[key].dn)
            self._forget(key)
        took = self.clock() - started
        self.listing_every = max(self.config.daemon.account_refresh, LISTING_COST_FACTOR * took)
        self.listing_due = self.clock() + self.listing_every
        log.debug("account listing: %d accounts, %d gone, %.2fs; next in %.0fs", len(present), len(gone), took, self.listing_every)

    # ------------------------------------------------------------------ the account table

    def _describe(self, entry: AccountEntry) -> Tuple[str, Optional[str], Tuple]:
        attrs = tuple(_compact(entry.attributes.get(name)) for name in self.layout)
        try:
            account = account_from_entry(entry, self.config.accounts, self.config.mailboxes)
            path: Optional[str] = lexically_under_root(self.evaluator.root_real, account.mailbox)
            address = account.address
        except (AccountError, ValueError):
            path = None
            address = entry.first(self.config.accounts.address_attribute) or entry.dn
        return address, path, attrs

    def _upsert(self, entry: AccountEntry) -> Tuple[str, _Record, bool]:
        """Record ``entry``; returns (key, record, whether anything but the state changed)."""
        key = _key(entry.dn)
        address, path, attrs = self._describe(entry)
        record = self.records.get(key)
        if record is None:
            record = _Record(entry.dn, address, path, self.layout, attrs, entry.quota_state, entry.has_quota_class,
                             self.generation)
            self.records[key] = record
            self._attach(key, path)
            return key, record, True
        changed = record.layout != self.layout or record.attrs != attrs or record.path != path
        if record.path != path:
            self._detach(key, record.path)
            self._attach(key, path)
        elif path is not None and self.watcher is not None and self.watcher.mode(path) != "watch":
            self._attach(key, path)  # try inotify again (created since, or watches freed)
        record.dn = entry.dn
        record.address = address
        record.path = path
        record.layout = self.layout
        record.attrs = attrs
        record.has_class = record.has_class or entry.has_quota_class
        return key, record, changed

    def _seen_in_sync(self, entry: AccountEntry) -> None:
        key, record, _ = self._upsert(entry)
        record.state = _shared_state(entry.quota_state)
        record.generation = self.generation
        if record.state.over:
            self.over.add(key)
        else:
            self.over.discard(key)

    def _synced(self, dn: str, new: QuotaState) -> None:
        key = _key(dn)
        record = self.records.get(key)
        if record is None:
            return
        record.state = _shared_state(new)
        record.has_class = True
        if new.over:
            self.over.add(key)
        else:
            self.over.discard(key)

    def _refreshed(self, entry: AccountEntry, now: float) -> None:
        is_new = _key(entry.dn) not in self.records
        key, record, changed = self._upsert(entry)
        stored = _shared_state(entry.quota_state)
        if is_new:
            record.generation = self.generation
            log.debug("%s: new account %s", record.address, entry.dn)
        if changed or record.state != stored:
            # New, limit or path changed, or someone else wrote the flag: decide again.
            record.state = stored
            self.pending.pop(key, None)
            if stored.over:
                self.over.add(key)
            else:
                self.over.discard(key)
            self.debouncer.touch(key, now, delay=0.0)

    def _attach(self, key: str, path: Optional[str]) -> None:
        if path is None:
            return
        keys = self.by_path.setdefault(path, [])
        if key not in keys:
            keys.append(key)
        if self.watcher is not None:
            deep = not os.path.exists(os.path.join(path, MAILDIRSIZE))
            self.watcher.add(path, deep=deep, now=self.clock())

    def _detach(self, key: str, path: Optional[str]) -> None:
        if path is None:
            return
        keys = self.by_path.get(path)
        if keys is None:
            return
        if key in keys:
            keys.remove(key)
        if not keys:
            del self.by_path[path]
            if self.watcher is not None:
                self.watcher.remove(path)

    def _forget(self, key: str) -> None:
        record = self.records.pop(key, None)
        if record is None:
            return
        self._detach(key, record.path)
        self.over.discard(key)
        self.pending.pop(key, None)
        self.debouncer.discard(key)

    def _forget_unseen(self) -> None:
        gone = [key for key, record in self.records.items() if record.generation != self.generation]
        for key in gone:
            log.debug("%s: no longer an account; no longer watched", self.records[key].address)
            self._forget(key)
        if gone:
            log.info("%d account(s) gone from LDAP since the last full sync; no longer watched", len(gone))

    # ------------------------------------------------------------------ SIGHUP

    def _do_reload(self) -> None:
        path = self.config_path
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("reload: %s; keeping the running configuration", exc)
            return
        old = self.config
        try:
            handler = logsetup.make_handler(new.logging.target)
        except OSError as exc:
            log.error("reload: logging.target %s: %s; keeping the current log target", new.logging.target, exc)
        else:
            logsetup.configure(new.logging.target, new.logging.level, self.verbosity, handler=handler)
        for key in ("pidfile", "user", "group"):
            if getattr(new.daemon, key) != getattr(old.daemon, key):
                log.warning("reload: daemon.%s changed; that takes a restart", key)
        self.config = new
        now = self.clock()
        if new.ldap != old.ldap:
            self.link.reset(new.ldap)
        if (new.ldap, new.accounts, new.mailboxes, new.policy) != (old.ldap, old.accounts, old.mailboxes, old.policy):
            self.evaluator.close()
            self.evaluator = Evaluator(new)
            self.layout = _layout(self.evaluator)
            self.full_sync.soon(now)
        daemon = new.daemon
        self.debouncer.delay = daemon.debounce
        self.full_sync.change_interval(daemon.interval, now)
        if self.refresh.due_at != float("inf"):
            self.refresh.change_interval(daemon.account_refresh, now)
        else:
            self.refresh.interval = daemon.account_refresh
        self.recheck.change_interval(daemon.over_recheck, now)
        assert self.watcher is not None
        if daemon.watch != old.daemon.watch:
            # Start over with the other kind of watching; the full sync re-adds every maildir.
            self.watcher.close()
            self.watcher = Watcher(daemon.watch, daemon.poll_interval)
            self.full_sync.soon(now)
        else:
            self.watcher.poll_interval = daemon.poll_interval
        log.info("configuration reloaded from %s", path)


def _layout(evaluator: Evaluator) -> Tuple[str, ...]:
    """The attributes kept per record: what the Evaluator reads, but our own state."""
    ours = (ATTR_OVER.lower(), ATTR_FREE.lower())
    return tuple(sys.intern(name.lower()) for name in evaluator.attributes if name.lower() not in ours)


def _epoch(stamp: Optional[str]) -> Optional[float]:
    """GeneralizedTime (``20240102030405Z``, fractions and offsets ignored: UTC as LDAP
    servers write it) → seconds since the epoch; None if unreadable."""
    if not stamp or len(stamp) < 14 or not stamp[:14].isdigit():
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp[:14], "%Y%m%d%H%M%S")))
    except ValueError:
        return None


def _key(dn: str) -> str:
    lowered = dn.lower()
    return dn if lowered == dn else lowered  # one string, not two, in the common case


def _compact(values: Optional[List[str]]) -> object:
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


_STATES: Dict[QuotaState, QuotaState] = {}


def _shared_state(state: QuotaState) -> QuotaState:
    """One object per distinct state (most accounts share the same two or three)."""
    if state.free_bytes is not None and len(_STATES) > 10000:
        return state
    return _STATES.setdefault(state, state)


def _entry(record: _Record, state: QuotaState) -> AccountEntry:
    """The account as the Evaluator reads it, with ``state`` as the stored state."""
    attributes: Dict[str, List[str]] = {}
    for name, value in zip(record.layout, record.attrs):
        if value is not None:
            attributes[name] = [value] if isinstance(value, str) else list(value)
    if state.over:
        attributes[ATTR_OVER.lower()] = ["TRUE"]
    if state.free_bytes is not None:
        attributes[ATTR_FREE.lower()] = [str(state.free_bytes)]
    return AccountEntry(record.dn, attributes)
