"""One complete pass: read every account, measure every mailbox, decide, then write.

The order matters for safety (docs/contract.md §5): nothing is written until the search has come back
complete and every mailbox has been measured, so that a truncated search or a vanished
mail store can stop the run before it changes anything. Only the planned changes are kept
in memory, not the accounts, so memory does not grow with the directory.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ldapquota.accounts import wanted_attributes
from ldapquota.entry import AccountEntry
from ldapquota.errors import EntryWriteError, LdapQuotaError, SafetyRefusal
from ldapquota.errors import WriteSuperseded as WriteSuperseded  # its old home: still importable from here
from ldapquota.evaluation import Evaluation, Evaluator
from ldapquota.flagstore import FlagStore
from ldapquota.parallel import default_workers, evaluate_all
from ldapquota.quota import QuotaState
from ldapquota.settings import Config
from ldapquota.sources import open_source
from ldapquota.sources.base import UsageSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """A planned write (what is kept in memory between measuring and writing)."""

    dn: str
    address: str
    old: QuotaState
    new: QuotaState
    has_class: bool
    reason: str

    @property
    def flip(self) -> bool:
        return self.old.over != self.new.over

    def describe(self) -> str:
        parts = []
        if self.flip:
            parts.append(f"isOverQuota {_flag(self.old.over)} -> {_flag(self.new.over)}")
        if self.old.free_bytes != self.new.free_bytes:
            parts.append(f"quotaFreeBytes {_free(self.old.free_bytes)} -> {_free(self.new.free_bytes)}")
        return f"{self.address}: {', '.join(parts)} ({self.reason})"


def _flag(over: bool) -> str:
    return "TRUE" if over else "FALSE"


def _free(value: Optional[int]) -> str:
    return "absent" if value is None else str(value)


@dataclass
class SyncReport:
    accounts: int = 0
    over: int = 0
    set: int = 0
    cleared: int = 0
    errors: int = 0
    writes: int = 0
    no_mailbox: int = 0
    superseded: int = 0  # planned writes skipped: a newer write or measurement decides
    #: Accounts with a planned write the run never got to (it failed first): neither
    #: "unchanged" nor set/cleared. Shown in the summary only when there are any.
    unreached: int = 0
    seconds: float = 0.0
    refused: Optional[str] = None
    changes: List[Change] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self) -> None:
        self.seconds = time.monotonic() - self.started

    @property
    def unchanged(self) -> int:
        """Measured accounts whose isOverQuota did not flip (written or not), and not left
        unreached by a failed run."""
        return self.accounts - self.set - self.cleared - self.unreached

    def summary(self) -> str:
        return (
            f"accounts={self.accounts} over={self.over} set={self.set} cleared={self.cleared} "
            f"unchanged={self.unchanged} errors={self.errors} writes={self.writes} "
            f"no_mailbox={self.no_mailbox}{self._superseded()}{self._unreached()} seconds={self.seconds:.2f}"
        )

    def _superseded(self) -> str:
        return f" superseded={self.superseded}" if self.superseded else ""

    def _unreached(self) -> str:
        return f" unreached={self.unreached}" if self.unreached else ""


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    force: bool = False
    progress: Optional[Callable[[int], None]] = None
    on_change: Optional[Callable[[Change], None]] = None  # dry run: shows each change
    now: Callable[[], float] = time.time
    workers: Optional[int] = None


def run_sync(
    config: Config,
    directory: FlagStore,
    *,
    source: Optional[UsageSource] = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    on_change: Optional[Callable[[Change], None]] = None,
    now: Callable[[], float] = time.time,
    workers: Optional[int] = None,
) -> SyncReport:
    """A full sync. Raises SafetyRefusal, SearchIncomplete and the directory errors;
    per-account problems are counted in the report instead. The caller holds the
    full-sync lock (:class:`ldapquota.synclock.FullSyncLock`, docs/contract.md §5) unless
    this is a dry run. Each write is made only if the entry still holds what the search
    read, so a newer write made meanwhile (by the daemon, another run) is never undone.

    ``workers``: processes that measure while this one reads LDAP (None: as
    ``mailboxes.workers`` says; 0: measure here, in this process)."""
    options = SyncOptions(dry_run, force, progress, on_change, now, workers)
    if source is not None:
        return _run_sync(config, directory, source, options)
    own = open_source(config)
    try:
        return _run_sync(config, directory, own, options)
    finally:
        own.close()


def run_sync_addresses(
    config: Config,
    directory: FlagStore,
    addresses: Sequence[str],
    *,
    source: Optional[UsageSource] = None,
    dry_run: bool = False,
    force: bool = False,
    on_change: Optional[Callable[[Change], None]] = None,
    now: Callable[[], float] = time.time,
) -> SyncReport:
    """``--sync ADDRESS ...`` (docs/contract.md §6): only these accounts, measured and
    decided as a full sync would, and their changes written: one search per address, one
    measuring batch for all, one modify per change. What mail-server hooks call, so:
    policy.max_changes does not apply, quotaSyncTime is not written (the sync is not
    complete) and no full-sync lock is taken. An address that finds no account, or
    several, is an error for that address."""
    options = SyncOptions(dry_run, force, None, on_change, now, 0)
    own = source is None
    source = open_source(config) if source is None else source
    try:
        report = SyncReport()
        _check_ready(source, options)
        evaluator = Evaluator(config, source, now=now)
        entries: Dict[str, AccountEntry] = {}
        for address in dict.fromkeys(addresses):  # each address searched once
            found = directory.find_accounts(address, evaluator.attributes)
            if len(found) == 1:
                entries.setdefault(found[0].dn.lower(), found[0])
                continue
            report.errors += 1
            shown = address if address.isprintable() else repr(address)
            what = "no account" if not found else f"{len(found)} accounts"
            log.error("%s: %s with %s=%s under %s matching %s", shown, what, config.accounts.address_attribute, shown,
                      config.ldap.base_dn, config.ldap.filter)
        for evaluation in evaluator.evaluate_many(list(entries.values())):
            report.accounts += 1
            report.over += evaluation.new.over
            _record(report, evaluation)
        _write(directory, options, report)
        if dry_run:
            _count_planned(report)
        report.finish()
        return report
    finally:
        if own:
            source.close()


def _check_ready(source: UsageSource, options: SyncOptions) -> None:
    if options.force:
        try:
            source.check_ready()
        except SafetyRefusal as exc:
            log.warning("%s (--force given: going on)", exc)
    else:
        source.check_ready()


def _run_sync(config: Config, directory: FlagStore, source: UsageSource, options: SyncOptions) -> SyncReport:
    report = SyncReport()
    _check_ready(source, options)
    try:
        _measure(config, directory, source, options, report)
    except LdapQuotaError as exc:
        # Ended while reading: nothing written; accounts= counts those measured so far.
        report.unreached = len(report.changes)
        report.finish()
        raise _with_report(exc, report) from None
    # The search came back complete (search_accounts raises otherwise): now the rules.
    _check_rules(config, options, report)
    _write(directory, options, report)
    if options.dry_run:
        _count_planned(report)
    if config.ldap.status_dn and not options.dry_run:
        try:
            directory.write_sync_time(config.ldap.status_dn, options.now())
        except EntryWriteError as exc:
            report.errors += 1
            log.error("%s", exc)
    report.finish()
    return report


def _measure(config: Config, directory: FlagStore, source: UsageSource, options: SyncOptions, report: SyncReport) -> None:
    """Every account read and measured; only what needs attention is kept."""
    attributes = wanted_attributes(config.accounts, source.attributes)
    entries = directory.search_accounts(attributes)
    workers = options.workers
    if workers is None:
        workers = default_workers() if config.mailboxes.workers is None else config.mailboxes.workers
    with source.full_pass() as measuring:
        for batch in evaluate_all(config, entries, workers=workers, now=options.now, source=measuring):
            report.accounts += batch.accounts
            report.over += batch.over
            for evaluation in batch.notable:
                _record(report, evaluation)
            if options.progress:
                options.progress(report.accounts)
    if report.accounts >= 10 and report.no_mailbox * 2 > report.accounts:
        log.warning(
            "%d of %d accounts have no maildir: check mailboxes.root and mailboxes.path (%s)",
            report.no_mailbox, report.accounts, config.mailboxes.path.text,
        )


def _check_rules(config: Config, options: SyncOptions, report: SyncReport) -> None:
    """docs/contract.md §5: no account at all, or too many flips, and nothing is written."""
    if report.accounts == 0 and not options.force:
        # A filter with a typo, or an ACL hiding the accounts, looks exactly like this; a
        # "successful" sync would also refresh quotaSyncTime over stale flags.
        report.refused = "the search matched no account"
        report.finish()
        raise _with_report(
            SafetyRefusal(
                f"the search of {config.ldap.base_dn} for {config.ldap.filter} matched no account "
                "(a typo in ldap.filter or ldap.base_dn, or accounts the bind DN may not see?); "
                "nothing written, quotaSyncTime not updated. Use --force if there really are none"
            ),
            report,
        )
    flips = sum(1 for change in report.changes if change.flip)
    allowed = config.policy.max_changes.allowed(report.accounts)
    if flips <= allowed:
        return
    message = (
        f"this run would flip isOverQuota on {flips} of {report.accounts} accounts, more than "
        f"policy.max_changes ({config.policy.max_changes}, {allowed} here)"
    )
    if options.force:
        log.warning("%s (--force given: writing anyway)", message)
        return
    report.refused = message
    report.finish()
    if options.dry_run:
        for change in report.changes:
            (options.on_change or _log_change)(change)
    _count_planned(report)  # what a forced run would do; nothing was written
    raise _with_report(
        SafetyRefusal(message + "; nothing written. Check the mail store and LDAP, then run with --force if this is right"),
        report,
    )


def _write(directory: FlagStore, options: SyncOptions, report: SyncReport) -> None:
    if options.dry_run:
        for change in report.changes:
            (options.on_change or _log_change)(change)
        return
    # Many in flight where the store can (a cold sync writes thousands); each outcome is
    # the one write_state would have had.
    outcomes = directory.write_states(report.changes, if_unchanged=True)
    reached = 0
    try:
        for change, problem in outcomes:
            reached += 1
            if isinstance(problem, WriteSuperseded):
                report.superseded += 1
                log.info("%s: not written: %s", change.address, problem)
            elif problem is not None:
                report.errors += 1
                log.error("%s: %s", change.address, problem)
            else:
                report.writes += 1
                if change.flip:
                    if change.new.over:
                        report.set += 1
                    else:
                        report.cleared += 1
                _log_change(change)
    except LdapQuotaError as exc:
        # The directory went away (or refused) part-way: what was written stays
        # written (each write is right on its own); say how far the run got.
        report.unreached = len(report.changes) - reached
        report.finish()
        raise _with_report(exc, report) from None


def _count_planned(report: SyncReport) -> None:
    """set/cleared as the planned changes would make them (dry run, refusal)."""
    report.set = sum(1 for c in report.changes if c.flip and c.new.over)
    report.cleared = sum(1 for c in report.changes if c.flip and not c.new.over)


def _with_report(exc: LdapQuotaError, report: SyncReport) -> LdapQuotaError:
    """Attach what the run measured (and wrote) to the error that ends it, so the CLI
    can still print the summary line every run ends with."""
    exc.report = report  # type: ignore[attr-defined]
    return exc


def _record(report: SyncReport, evaluation: Evaluation) -> None:
    """An account that needs attention: an error to report, a missing maildir, a change."""
    if evaluation.error is not None:
        report.errors += 1
        log.error("%s: %s; flag kept (%s)", evaluation.address, evaluation.error, _flag(evaluation.old.over))
    elif evaluation.measurement is not None and evaluation.measurement.missing:
        report.no_mailbox += 1
    if evaluation.changed:
        assert evaluation.decision is not None
        report.changes.append(
            Change(
                evaluation.entry.dn,
                evaluation.address,
                evaluation.old,
                evaluation.new,
                evaluation.entry.has_quota_class,
                evaluation.decision.reason,
            )
        )


def _log_change(change: Change) -> None:
    log.info("%s", change.describe())
