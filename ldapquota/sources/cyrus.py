"""``mailboxes.source: cyrus``: Cyrus IMAP's own quota database, through its quota report.

An account's mailbox is its quota root (``cyrus.quota_root``, a template like
``mailboxes.path``, spelt as the report spells it). Usage and Cyrus's limit come from
``quota -J -C imapd.conf`` (``cyrus.quota_command``, ``cyrus.imapd_conf``), read in
:mod:`ldapquota.cyrus_formats` (docs/contract.md §10):

- a full sync runs the report **once** for every root (:meth:`Source.full_pass`);
- ``--sync ADDRESS``, ``--show`` and the daemon's events ask for their roots only (the
  report takes root names as arguments);
- the daemon follows Cyrus's event notifications and re-reads the whole report every
  ``daemon.poll_interval`` as a net (:mod:`.cyrus_feed`).

Which root counts: exactly the account's own. Cyrus 3.6 refuses a quota root on ``user``
itself, and its JSON report leaves out domain-wide roots (their name prints as NULL), so
no root above a user's can be read; a mailbox without a root of its own in the report is
an error for its account, which keeps its flag (as is a mailbox Cyrus does not have).
Roots below (``user.jane.Archive``) govern only their folders, not the INBOX mail is
delivered to, and are not counted.

Faults: the command missing, failing, hung (``cyrus.timeout``) or printing anything but
the report → SourceUnavailable (69, before anything is written).
"""

import contextlib
import os
import shutil
import subprocess
import time
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ldapquota.cyrus_formats import (
    EventSettings,
    ReportError,
    RootQuota,
    event_settings,
    parse_imapd_conf,
    parse_report,
    quota_root,
)
from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError, MeasureError, SourceUnavailable
from ldapquota.settings import Config, DaemonConfig
from ldapquota.sources.base import BatchedSource, ChangeFeed, MailboxRequest, Measurement, Result, SaysOver, UsageSource

#: Up to this many roots are named on the report's command line; more, and the whole
#: report is read (for each name, Cyrus scans a directory of its quota database).
NAMED_ROOTS = 100
#: How much of a bad output or error message is quoted.
EXCERPT = 200
#: A quota read ahead (polling, prefetch) is used for this long, then read again.
FRESH_FOR = 5.0
#: The biggest imapd.conf read.
MAX_IMAPD_CONF = 1024 * 1024

Found = Dict[str, Optional[RootQuota]]  # root → its quota, None: not in the report


class Source(BatchedSource):
    own_limit = "Cyrus's own quota limit"
    parallel = False  # one report answers for every mailbox

    def __init__(self, config: Config):
        super().__init__(config)
        self.settings = config.cyrus
        self.command = config.cyrus.quota_command
        #: The last quota read for each root (the daemon's polling compares against it).
        self.seen: Found = {}
        #: Quotas read ahead (by polling or :meth:`prefetch`) and when, each used once.
        self.fresh: Dict[str, Tuple[float, Optional[RootQuota]]] = {}
        self.last_full_read = 0.0  # seconds the last whole report took
        self._read_during_poll: Optional[Set[str]] = None  # roots read while a polling report runs

    @property
    def attributes(self) -> Sequence[str]:
        return self.settings.quota_root.attributes

    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        try:
            return quota_root(self.settings.quota_root, address, entry.attributes)
        except ValueError as exc:
            raise AccountError(f"Cyrus quota root (cyrus.quota_root {self.settings.quota_root.text!r}): {exc}") from None

    def check_ready(self) -> None:
        if shutil.which(self.command[0]) is None:
            raise SourceUnavailable(f"cyrus.quota_command: {self.command[0]} is not an executable command "
                                    "(is cyrus-imapd installed? Debian: /usr/lib/cyrus/bin/quota, elsewhere cyr_quota)")
        if not os.access(self.settings.imapd_conf, os.R_OK):
            raise SourceUnavailable(f"cyrus.imapd_conf: cannot read {self.settings.imapd_conf}")

    def describe_ready(self) -> str:
        roots = len(self.read_all())
        events = self.events()
        notifications = (f"event notifications go to {events.socket}" if events.socket
                         else f"no event notifications ({events.problem}): the daemon will poll")
        return f"{shutil.which(self.command[0])} -J reads {roots} quota roots; {notifications}"

    def events(self) -> EventSettings:
        """What imapd.conf says about Cyrus's event notifications."""
        path = self.settings.imapd_conf
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                options = parse_imapd_conf(handle.read(MAX_IMAPD_CONF))
        except OSError as exc:
            return EventSettings(None, f"cannot read {path} (cyrus.imapd_conf): {exc.strerror}")
        return event_settings(options)

    # ------------------------------------------------------------------ measuring

    def measure_many(self, requests: Sequence[MailboxRequest], says_over: SaysOver, now: float) -> List[Result]:
        roots = list(dict.fromkeys(request.mailbox for request in requests))
        found = self._take_fresh(roots)
        found.update(self.read([root for root in roots if root not in found]))
        return [self.result(request, found[request.mailbox]) for request in requests]

    def result(self, request: MailboxRequest, quota: Optional[RootQuota]) -> Result:
        root = request.mailbox
        if quota is None:
            return MeasureError(
                f"Cyrus has no quota root {root!r} (cyrus.quota_root {self.settings.quota_root.text!r}): no such "
                "mailbox, or no quota set on it (cyradm: setquota); with unixhierarchysep: yes roots are spelt "
                "user/NAME, with virtdomains user.NAME@DOMAIN")
        limit = request.limit if request.limit is not None else quota.limit
        return Measurement(quota.usage, limit, f"Cyrus quota root {root!r}", root)

    def _take_fresh(self, roots: Sequence[str]) -> Found:
        taken: Found = {}
        limit = time.monotonic() - FRESH_FOR
        for root in roots:
            held = self.fresh.pop(root, None)
            if held is not None and held[0] >= limit:
                taken[root] = held[1]
        return taken

    def _keep_fresh(self, found: Found) -> None:
        now = time.monotonic()
        for root, quota in found.items():
            self.fresh[root] = (now, quota)

    def prefetch(self, keys: Sequence[str]) -> None:
        wanted = [root for root in dict.fromkeys(keys) if root not in self.fresh]
        if len(wanted) > 1:
            self._keep_fresh(self.read(wanted))

    @contextlib.contextmanager
    def full_pass(self) -> Iterator[UsageSource]:
        yield FullPass(self)

    def read(self, roots: Sequence[str]) -> Found:
        """The quotas of ``roots`` (None for a root the report lacks), in one run."""
        if not roots:
            return {}
        if len(roots) > NAMED_ROOTS:
            report = self.read_all()
        else:
            # Names are prefixes for the report (user.jane also brings user.janet): keep ours.
            report = self.run(["--", *roots])
        found = {root: report.get(root) for root in roots}
        self.seen.update(found)
        if self._read_during_poll is not None:
            self._read_during_poll.update(roots)
        return found

    def read_all(self) -> Dict[str, RootQuota]:
        """Every root, in one run of the report."""
        started = time.monotonic()
        report = self.run([])
        self.last_full_read = time.monotonic() - started
        return report

    def run(self, roots: Sequence[str]) -> Dict[str, RootQuota]:
        """``quota -J -C imapd.conf [-- ROOT...]``, without a shell. Raises SourceUnavailable."""
        argv = [*self.command, "-C", self.settings.imapd_conf, "-J", *roots]
        name = os.path.basename(self.command[0])
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.settings.timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise SourceUnavailable(f"Cyrus's quota report ({name} -J) did not finish within "
                                    f"{self.settings.timeout:g}s (cyrus.timeout); is Cyrus hung?") from None
        except OSError as exc:
            raise SourceUnavailable(f"cannot run {self.command[0]} (cyrus.quota_command): {exc.strerror}") from None
        if done.returncode != 0:
            why = excerpt(done.stderr or done.stdout) or "no message"
            raise SourceUnavailable(f"Cyrus's quota report ({name} -J -C {self.settings.imapd_conf}) failed "
                                    f"with exit code {done.returncode}: {why}")
        try:
            return parse_report(done.stdout.decode("utf-8", "replace"))
        except ReportError as exc:
            raise SourceUnavailable(f"{self.command[0]} (cyrus.quota_command) printed something other than Cyrus's "
                                    f"JSON quota report: {exc}: {excerpt(done.stdout)!r}") from None

    # ------------------------------------------------------------------ the daemon

    def poll_started(self) -> None:
        """A whole report is being read for the daemon's polling (in another thread)."""
        self._read_during_poll = set()

    def poll_failed(self) -> None:
        self._read_during_poll = None

    def changed_since_seen(self, report: Dict[str, RootQuota]) -> List[str]:
        """Roots whose quota differs from what was last read (new and vanished roots too);
        their new quotas wait in :attr:`fresh`, so measuring them costs no other run. A
        root read again while the report ran keeps that newer reading."""
        newer = self._read_during_poll or set()
        self._read_during_poll = None
        changed = [root for root, quota in report.items() if root not in newer and self.seen.get(root) != quota]
        vanished = [root for root, quota in self.seen.items()
                    if quota is not None and root not in report and root not in newer]
        limit = time.monotonic() - FRESH_FOR
        self.fresh = {root: held for root, held in self.fresh.items() if held[0] >= limit}  # unused ones expire
        self._keep_fresh({root: report.get(root) for root in changed + vanished})
        kept = {root: self.seen[root] for root in newer if root in self.seen}
        self.seen = dict(report)
        self.seen.update(kept)
        return changed + vanished

    def forget_fresh(self, roots: Sequence[str]) -> None:
        """These roots changed after they were read ahead (an event): read them again."""
        for root in roots:
            self.fresh.pop(root, None)

    def feed(self, daemon: DaemonConfig) -> ChangeFeed:
        from ldapquota.sources.cyrus_feed import CyrusFeed

        return CyrusFeed(self, daemon.poll_interval)


class FullPass(UsageSource):
    """One full sync's view of the source: every root from a single run of the report,
    read when the first batch of accounts is measured."""

    parallel = False

    def __init__(self, source: Source):
        super().__init__(source.config)
        self.source = source
        self.own_limit = source.own_limit
        self.report: Optional[Dict[str, RootQuota]] = None

    @property
    def attributes(self) -> Sequence[str]:
        return self.source.attributes

    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        return self.source.locate(entry, address)

    def check_ready(self) -> None:
        self.source.check_ready()

    def measure(self, request: MailboxRequest, says_over: SaysOver, now: float) -> Measurement:
        result = self.measure_many([request], says_over, now)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def measure_many(self, requests: Sequence[MailboxRequest], says_over: SaysOver, now: float) -> List[Result]:
        if self.report is None:
            self.report = self.source.read_all()
        report = self.report
        results = [self.source.result(request, report.get(request.mailbox)) for request in requests]
        self.source.seen.update((request.mailbox, report.get(request.mailbox)) for request in requests)
        return results


def excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[:EXCERPT] + ("..." if len(text) > EXCERPT else "")
