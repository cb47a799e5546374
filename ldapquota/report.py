"""``--report``: who is over or near the limit, measured now, with what LDAP holds beside it.

Measures like a sync (same Evaluator, same worker processes) and writes nothing, not even
``quotaSyncTime`` (docs/contract.md §6). Only the accounts the report shows come back from
the workers: those over or near their limit, those where LDAP and the decision disagree,
and those that could not be measured (always shown, with their error); ``--all``: every
account. The rows are formatted here as an aligned table or as the JSON array of §6.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ldapquota.accounts import wanted_attributes
from ldapquota.entry import ATTR_OVER
from ldapquota.evaluation import Evaluation
from ldapquota.flagstore import FlagStore
from ldapquota.parallel import evaluate_all, workers_for
from ldapquota.quota import Limit, Policy, Usage, free_bytes
from ldapquota.settings import Config
from ldapquota.sources import open_source
from ldapquota.sources.base import UsageSource

log = logging.getLogger(__name__)

#: The keys of each JSON object, in this order (docs/contract.md §6).
JSON_KEYS = ("address", "dn", "usage_bytes", "usage_messages", "limit_bytes", "limit_messages",
             "percent", "flag", "over", "error")


@dataclass(frozen=True)
class ReportRow:
    address: Optional[str]  # None: the entry has no address attribute
    dn: str
    usage: Optional[Usage]  # None: not measured (an error before measuring)
    limit: Optional[Limit]  # None: not known (an error before the limit was read)
    percent: Optional[Fraction]  # exact, for sorting; None when unlimited or not measured
    flag: Optional[bool]  # what LDAP holds; None: isOverQuota absent
    over: bool  # the decision (with an error: the stored state, which is kept)
    error: Optional[str]

    @property
    def disagrees(self) -> bool:
        """Would a sync flip isOverQuota? (absent reads as FALSE, as every MTA reads it)"""
        return self.error is None and bool(self.flag) != self.over

    def as_json(self) -> Dict[str, Union[None, str, int, float, bool]]:
        limit = self.limit or Limit()
        return {
            "address": self.address,
            "dn": self.dn,
            "usage_bytes": self.usage.bytes if self.usage else None,
            "usage_messages": self.usage.messages if self.usage else None,
            "limit_bytes": limit.bytes,
            "limit_messages": limit.messages,
            "percent": None if self.percent is None else _down(self.percent, 100),
            "flag": self.flag,
            "over": self.over,
            "error": self.error,
        }


def _down(percent: Fraction, scale: int) -> float:
    """Rounded down to 1/``scale``, so that a mailbox short of its limit never shows 100 %."""
    return (percent.numerator * scale // percent.denominator) / scale


def percent_of(usage: Usage, limit: Limit) -> Optional[Fraction]:
    """The larger of the byte and message percentages; None when unlimited."""
    shares = [Fraction(100 * used, of) for used, of in ((usage.bytes, limit.bytes), (usage.messages, limit.messages)) if of]
    return max(shares) if shares else None


def stored_flag(evaluation: Evaluation) -> Optional[bool]:
    value = evaluation.entry.first(ATTR_OVER)
    if value is None:
        return None
    return {"TRUE": True, "FALSE": False}.get(value.upper())


def row_of(evaluation: Evaluation, address_attribute: str) -> ReportRow:
    measurement, account = evaluation.measurement, evaluation.account
    usage = measurement.usage if measurement else None
    limit = measurement.limit if measurement else (account.limit if account else None)
    return ReportRow(
        # From the entry, not evaluation.address: an account that could not be read
        # still has its address (Evaluation falls back to the DN).
        address=evaluation.entry.first(address_attribute),
        dn=evaluation.entry.dn,
        usage=usage,
        limit=limit,
        percent=percent_of(usage, limit) if usage is not None and limit is not None else None,
        flag=stored_flag(evaluation),
        over=evaluation.new.over,
        error=evaluation.error,
    )


@dataclass(frozen=True)
class NearFull:
    """The report's pick (docs/contract.md §6): over, near the limit (within
    ``policy.free_margin``, or at ``policy.clear_percent`` or more), disagreeing with
    LDAP, or failed. A module-level class so that it pickles to the worker processes."""

    policy: Policy
    everyone: bool = False

    def __call__(self, evaluation: Evaluation) -> bool:
        if self.everyone or evaluation.error is not None or evaluation.new.over:
            return True
        if bool(stored_flag(evaluation)) != evaluation.new.over:
            return True
        measurement = evaluation.measurement
        if measurement is None or measurement.limit.unlimited:
            return False
        if free_bytes(measurement.usage, measurement.limit, self.policy) is not None:
            return True
        percent = percent_of(measurement.usage, measurement.limit)
        return percent is not None and percent >= self.policy.clear_percent


@dataclass
class Report:
    rows: List[ReportRow] = field(default_factory=list)
    accounts: int = 0
    over: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(1 for row in self.rows if row.error is not None)

    def summary(self) -> str:
        """The one summary line (docs/contract.md §6); set/cleared: what a sync would flip."""
        would_set = sum(1 for row in self.rows if row.disagrees and row.over)
        would_clear = sum(1 for row in self.rows if row.disagrees and not row.over)
        return (
            f"report: accounts={self.accounts} over={self.over} set={would_set} cleared={would_clear} "
            f"unchanged={self.accounts - would_set - would_clear} errors={self.errors} "
            f"shown={len(self.rows)} seconds={self.seconds:.2f}"
        )


def sort_rows(rows: Sequence[ReportRow]) -> List[ReportRow]:
    """Fullest first; then the unlimited; then those that could not be measured."""

    def key(row: ReportRow) -> Tuple[int, Fraction, str, str]:
        rank = 0 if row.percent is not None else (1 if row.usage is not None else 2)
        return (rank, -(row.percent or Fraction(0)), row.address or "", row.dn)

    return sorted(rows, key=key)


def run_report(
    config: Config,
    directory: FlagStore,
    *,
    everyone: bool = False,
    source: Optional[UsageSource] = None,
    progress: Optional[Callable[[int], None]] = None,
    now: Callable[[], float] = time.time,
    workers: Optional[int] = None,
) -> Report:
    """Every account read and measured; the picked rows, sorted. Writes nothing. Raises
    as a sync does: SafetyRefusal (unmounted store), SearchIncomplete, directory errors."""
    own = source is None
    used = open_source(config) if source is None else source
    started = time.monotonic()
    try:
        # An unmounted store would read as empty mailboxes: no report rather than a wrong one.
        used.check_ready()
        report = Report()
        entries = directory.search_accounts(wanted_attributes(config.accounts, used.attributes))
        chosen = workers_for(config) if workers is None else workers
        keep = NearFull(config.policy.thresholds, everyone)
        with used.full_pass() as measuring:  # a source that reads everything at once does so once
            for batch in evaluate_all(config, entries, workers=chosen, now=now, source=measuring, keep=keep):
                report.accounts += batch.accounts
                report.over += batch.over
                report.rows.extend(row_of(evaluation, config.accounts.address_attribute) for evaluation in batch.notable)
                if progress:
                    progress(report.accounts)
    finally:
        if own:
            used.close()
    if report.accounts == 0:
        log.warning("the search of %s for %s matched no account", config.ldap.base_dn, config.ldap.filter)
    report.rows = sort_rows(report.rows)
    report.seconds = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- output


def format_json(rows: Sequence[ReportRow]) -> str:
    """One JSON array, an object per line (greppable, and still one document)."""
    if not rows:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(row.as_json()) for row in rows) + "\n]\n"


def format_table(rows: Sequence[ReportRow]) -> List[str]:
    """An aligned table with a header; ``!`` marks where LDAP and the decision disagree."""
    header = ("ADDRESS", "USAGE", "LIMIT", "PERCENT", "LDAP", "DECISION", "")
    cells = [header] + [_cells(row) for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header) - 1)]
    right = {1, 3}  # numbers
    lines = []
    for line in cells:
        parts = [text.rjust(width) if column in right else text.ljust(width)
                 for column, (text, width) in enumerate(zip(line, widths))]
        lines.append(("  ".join(parts) + "  " + line[-1]).rstrip())
    return lines


def _cells(row: ReportRow) -> Tuple[str, ...]:
    usage = "-" if row.usage is None else f"{human_size(row.usage.bytes)}, {row.usage.messages} msgs"
    limit = "?" if row.limit is None else _limit(row.limit)
    percent = "-" if row.percent is None else f"{_down(row.percent, 10):.1f}%"
    flag = {None: "absent", True: "TRUE", False: "FALSE"}[row.flag]
    if row.error is not None:
        decision, note = f"keep {flag}", f"error: {row.error}"
    else:
        decision = "TRUE" if row.over else "FALSE"
        note = ("! a sync would set it" if row.over else "! a sync would clear it") if row.disagrees else ""
    return (_printable(row.address or "-"), usage, _printable(limit), percent, flag, decision, _printable(note))


def human_size(size: int) -> str:
    """Binary units for people (the JSON keeps exact bytes): 1536 → ``1.5 KiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} EiB"


def _limit(limit: Limit) -> str:
    if limit.unlimited:
        return "unlimited"
    parts = [] if limit.bytes is None else [human_size(limit.bytes)]
    return ", ".join(parts + ([] if limit.messages is None else [f"{limit.messages} msgs"]))


def _printable(text: str) -> str:
    """No terminal control characters from LDAP or file names reach the screen."""
    return text if text.isprintable() else repr(text)[1:-1]
