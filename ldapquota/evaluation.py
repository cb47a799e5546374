"""One account: from its LDAP entry to the state it should have (measure, then decide).

Shared by ``--sync`` (possibly in worker processes), ``--show`` and the daemon, so all three
decide the same way.
"""

import time
from typing import Callable, Optional

from ldapquota.accounts import Account, account_from_entry, wanted_attributes
from ldapquota.config import AccountsConfig, Config, MailboxesConfig, PolicyConfig
from ldapquota.directory import AccountEntry
from ldapquota.errors import AccountError, MeasureError
from ldapquota.mailbox import MailStore, Measurement
from ldapquota.quota import Decision, QuotaState, decide, exceeds_over_threshold


class Evaluation:
    """What one account is and should be. ``error`` set: keep the stored state.

    A plain slotted class, not a dataclass: one is made per account per sync.
    """

    __slots__ = ("entry", "old", "account", "measurement", "decision", "error")

    def __init__(
        self,
        entry: AccountEntry,
        old: QuotaState,
        account: Optional[Account] = None,
        measurement: Optional[Measurement] = None,
        decision: Optional[Decision] = None,
        error: Optional[str] = None,
    ):
        self.entry = entry
        self.old = old
        self.account = account
        self.measurement = measurement
        self.decision = decision
        self.error = error

    @property
    def address(self) -> str:
        return self.account.address if self.account else self.entry.dn

    @property
    def new(self) -> QuotaState:
        return self.decision.state if self.decision else self.old

    @property
    def changed(self) -> bool:
        return self.decision is not None and self.new != self.old

    @property
    def flips(self) -> bool:
        return self.decision is not None and self.new.over != self.old.over


class Evaluator:
    """Measures accounts and decides their state; shared by --sync, --show and the daemon."""

    def __init__(self, config: Config, now: Callable[[], float] = time.time):
        self._setup(config.accounts, config.mailboxes, config.policy, now)

    @classmethod
    def from_settings(
        cls, accounts: AccountsConfig, mailboxes: MailboxesConfig, policy: PolicyConfig, now: Callable[[], float] = time.time
    ) -> "Evaluator":
        """An evaluator from the three sections it uses (what a worker process receives)."""
        evaluator = cls.__new__(cls)
        evaluator._setup(accounts, mailboxes, policy, now)
        return evaluator

    def _setup(self, accounts: AccountsConfig, mailboxes: MailboxesConfig, policy: PolicyConfig, now: Callable[[], float]) -> None:
        self.accounts = accounts
        self.mailboxes = mailboxes
        self.store = MailStore(mailboxes.root)
        self.root_real = self.store.root_real
        self.thresholds = policy.thresholds
        self.attributes = wanted_attributes(accounts, mailboxes)
        self.now = now

    def close(self) -> None:
        self.store.close()

    def _says_over(self, usage, limit) -> bool:
        return exceeds_over_threshold(usage, limit, self.thresholds)

    def evaluate(self, entry: AccountEntry) -> Evaluation:
        old = entry.quota_state
        try:
            account = account_from_entry(entry, self.accounts, self.mailboxes)
        except AccountError as exc:
            return Evaluation(entry, old, error=str(exc))
        try:
            measurement = self.store.measure(
                account.mailbox,
                account.limit,
                self._says_over,
                self.mailboxes.count_trash,
                self.now(),
            )
        except MeasureError as exc:
            return Evaluation(entry, old, account, error=str(exc))
        if measurement.missing and (old.over or old.free_bytes is not None):
            # A mailbox that was full or nearly full is not there: moved, renamed,
            # unmounted? Not sure enough to let mail in (or bigger mail, through
            # quotaFreeBytes); keep what is stored and say so.
            return Evaluation(entry, old, account, measurement, error=(
                f"maildir {measurement.path} does not exist; keeping the stored state (mount or restore it; if the "
                "mailbox is gone for good, delete the account's isOverQuota and quotaFreeBytes)"
            ))
        decision = decide(measurement.usage, measurement.limit, old.over, self.thresholds)
        return Evaluation(entry, old, account, measurement, decision)
