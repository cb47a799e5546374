"""One account: from its entry to the state it should have (measure, then decide).

Shared by ``--sync`` (possibly in worker processes), ``--show`` and the daemon, so all
three decide the same way. Pure but for the usage source it is given.
"""

import time
from typing import Callable, List, Optional, Sequence

from ldapquota.accounts import Account, account_from_entry, wanted_attributes
from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError
from ldapquota.quota import Decision, Limit, QuotaState, Usage, decide, exceeds_over_threshold
from ldapquota.settings import Config
from ldapquota.sources import open_source
from ldapquota.sources.base import MailboxRequest, Measurement, Result, UsageSource


class Evaluation:
    """What one account is and should be. ``error`` set: keep the stored state.

    A plain slotted class, not a dataclass: one is made per account per sync.
    """

    __slots__ = ("entry", "old", "account", "measurement", "decision", "error", "entry_address")

    def __init__(
        self,
        entry: AccountEntry,
        old: QuotaState,
        account: Optional[Account] = None,
        measurement: Optional[Measurement] = None,
        decision: Optional[Decision] = None,
        error: Optional[str] = None,
        entry_address: Optional[str] = None,
    ):
        self.entry = entry
        self.old = old
        self.account = account
        self.measurement = measurement
        self.decision = decision
        self.error = error
        self.entry_address = entry_address  # when no Account could be made: for messages

    @property
    def address(self) -> str:
        """Who this is in messages: the address (operators and users know it), the DN only
        when the entry has none."""
        if self.account:
            return self.account.address
        return self.entry_address or self.entry.dn

    @property
    def new(self) -> QuotaState:
        return self.decision.state if self.decision else self.old

    @property
    def changed(self) -> bool:
        return self.decision is not None and self.new != self.old


class Evaluator:
    """Measures accounts and decides their state; shared by --sync, --show and the daemon."""

    def __init__(self, config: Config, source: Optional[UsageSource] = None, now: Callable[[], float] = time.time):
        self.source = source if source is not None else open_source(config)
        self.accounts = config.accounts
        self.thresholds = config.policy.thresholds
        self.attributes = wanted_attributes(config.accounts, self.source.attributes)
        self.now = now

    def close(self) -> None:
        self.source.close()

    def _says_over(self, usage: Usage, limit: Limit) -> bool:
        return exceeds_over_threshold(usage, limit, self.thresholds)

    def evaluate(self, entry: AccountEntry) -> Evaluation:
        return self.evaluate_many([entry])[0]

    def evaluate_many(self, entries: Sequence[AccountEntry]) -> List[Evaluation]:
        """The accounts of ``entries``, in order, measured with one batch of the source."""
        evaluations: List[Evaluation] = []
        requests: List[MailboxRequest] = []
        waiting: List[Evaluation] = []
        for entry in entries:
            old = entry.quota_state
            try:
                account = account_from_entry(entry, self.accounts, self.source)
            except AccountError as exc:
                address = entry.first(self.accounts.address_attribute)
                evaluations.append(Evaluation(entry, old, error=str(exc), entry_address=address))
                continue
            evaluation = Evaluation(entry, old, account)
            evaluations.append(evaluation)
            requests.append(MailboxRequest(account.mailbox, account.limit))
            waiting.append(evaluation)
        if requests:
            results = self.source.measure_many(requests, self._says_over, self.now())
            for evaluation, result in zip(waiting, results):
                self._decide(evaluation, result)
        return evaluations

    def _decide(self, evaluation: Evaluation, result: Result) -> None:
        if isinstance(result, Exception):
            evaluation.error = str(result)
            return
        evaluation.measurement = result
        old = evaluation.old
        if result.missing and (old.over or old.free_bytes is not None):
            # A mailbox that was full or nearly full is not there: moved, renamed,
            # unmounted? Not sure enough to let mail in (or bigger mail, through
            # quotaFreeBytes); keep what is stored and say so.
            evaluation.error = (
                f"mailbox {result.path} does not exist; keeping the stored state (mount or restore it; if the "
                "mailbox is gone for good, delete the account's isOverQuota and quotaFreeBytes)"
            )
            return
        evaluation.decision = decide(result.usage, result.limit, old.over, self.thresholds)
