"""The usage-source interface (pure: what a source promises, no I/O of its own).

A source answers four questions: where an account's mailbox is (:meth:`UsageSource.locate`),
whether the store can be trusted at all before anything is written
(:meth:`UsageSource.check_ready`: an unmounted store must not read as empty mailboxes),
how full one or many mailboxes are (:meth:`UsageSource.measure`, :meth:`UsageSource.measure_many`),
and, for the daemon, which mailboxes changed (:meth:`UsageSource.feed`). A source without
change notifications of its own gets a :class:`PollingFeed`.
"""

import abc
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterator, List, NamedTuple, Optional, Sequence, Set, Union

from ldapquota.entry import AccountEntry
from ldapquota.errors import MeasureError
from ldapquota.quota import Limit, Usage
from ldapquota.schedule import slice_size
from ldapquota.settings import Config, DaemonConfig

SaysOver = Callable[[Usage, Limit], bool]


class Measurement(NamedTuple):
    usage: Usage
    limit: Limit  # the limit used: the configured one, else the store's own, else none
    method: str  # how it was measured, for people ("maildirsize", "walk (<why>)", ...)
    path: str  # where: a path, a user name, a quota root
    missing: bool = False  # the mailbox does not exist (an account that never got mail)
    recounted: bool = False  # measured the slow way (the store keeps no usable total)


class MailboxRequest(NamedTuple):
    """One mailbox to measure: where it is and the limit configured for it (None: the
    store's own limit decides)."""

    mailbox: str
    limit: Optional[Limit]


Result = Union[Measurement, Exception]  # an Exception is that mailbox's MeasureError


@dataclass
class FeedChanges:
    """What one look at a change feed found."""

    keys: Set[str] = field(default_factory=set)
    overflow: bool = False  # notifications were lost: anything may have changed
    unmounted: bool = False  # the store went away under the feed


class ChangeFeed(abc.ABC):
    """Tells the daemon which mailboxes (by :meth:`UsageSource.key`) changed."""

    def fileno(self) -> Optional[int]:
        """A descriptor that becomes readable when there is news (None: none)."""
        return None

    @property
    def next_poll_at(self) -> Optional[float]:
        """When :meth:`collect` next has news that no notification announces: polling
        due, or changes it already knows of (None: nothing polled, nothing waiting)."""
        return None

    @abc.abstractmethod
    def collect(self, now: float) -> FeedChanges:
        """What changed since the last call (notifications, plus polling that is due)."""

    @abc.abstractmethod
    def follow(self, key: str, now: float, measurement: Optional[Measurement] = None) -> None:
        """Follow this mailbox (again); ``measurement``, just taken, may say how closely."""

    @abc.abstractmethod
    def unfollow(self, key: str) -> None: ...

    def following_well(self, key: str) -> bool:
        """Is ``key`` followed as well as it can be (False: try :meth:`follow` again)."""
        return True

    def sees_every_change(self, key: str) -> bool:
        """Will notifications alone tell of every change that can move this mailbox's
        usage? Then the daemon does not re-measure it while it is over quota
        (``daemon.over_recheck``). False unless the feed knows better."""
        return False

    def retry_limit(self) -> None:
        """A full sync starts: try again what a resource limit made the feed give up."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """How changes are noticed, for the log (``inotify``, ``polling every 30s``)."""

    @property
    def polls_everything(self) -> bool:
        """Does the feed's own polling look at every mailbox (so the daemon's re-measuring
        of over-quota mailboxes, ``daemon.over_recheck``, would add nothing)?"""
        return False

    @property
    def watched_count(self) -> int:
        return 0

    @property
    def polled_count(self) -> int:
        return 0

    def close(self) -> None:
        """Release what the feed holds."""


class PollingFeed(ChangeFeed):
    """Every followed mailbox reported as changed once per ``interval``, spread in small
    slices (one per ``step``), for sources that cannot say what changed."""

    def __init__(self, interval: float, step: float = 1.0):
        self.interval = interval
        self.step = step
        self._keys: Set[str] = set()
        self._round: Deque[str] = deque()
        self._next: Optional[float] = None

    @property
    def next_poll_at(self) -> Optional[float]:
        return self._next if self._keys else None

    @property
    def description(self) -> str:
        return f"polling every {self.interval:g}s"

    @property
    def polled_count(self) -> int:
        return len(self._keys)

    def follow(self, key: str, now: float, measurement: Optional[Measurement] = None) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self._round.append(key)
            if self._next is None:
                self._next = now + self.step

    def unfollow(self, key: str) -> None:
        self._keys.discard(key)  # its place in the round is skipped

    def collect(self, now: float) -> FeedChanges:
        changes = FeedChanges()
        if self._next is None or now < self._next or not self._keys:
            return changes
        for _ in range(slice_size(len(self._keys), self.interval, self.step)):
            if not self._round:
                self._round.extend(self._keys)
            key = self._round.popleft()
            if key in self._keys:
                changes.keys.add(key)
        self._next = now + self.step
        return changes


class UsageSource(abc.ABC):
    """One mail store's usage and own limits."""

    #: Where a limit comes from when LDAP and the default give none (for --show).
    own_limit = "the mail store's own limit"
    #: Does a full sync gain from measuring in worker processes? Not when the store hands
    #: out every mailbox's usage in one answer (docs/contract.md §10).
    parallel = True

    def __init__(self, config: Config):
        self.config = config

    @property
    @abc.abstractmethod
    def attributes(self) -> Sequence[str]:
        """The account attributes :meth:`locate` reads."""

    @abc.abstractmethod
    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        """The account's mailbox as this source names it. Raises AccountError."""

    def key(self, mailbox: str) -> Optional[str]:
        """One stable name per mailbox (accounts sharing it share the key); None when it
        names nothing this source can measure."""
        return mailbox

    @abc.abstractmethod
    def check_ready(self) -> None:
        """Raise SafetyRefusal when the store looks unmounted or empty, SourceUnavailable
        when it cannot be asked at all; before anything is written."""

    @abc.abstractmethod
    def measure(self, request: MailboxRequest, says_over: SaysOver, now: float) -> Measurement:
        """One mailbox. Raises MeasureError when it cannot be measured."""

    def describe_ready(self) -> str:
        """What :meth:`check_ready` found, for ``--check-config``."""
        return "it answers"

    def has_mailbox(self, mailbox: str) -> Optional[bool]:
        """Does the mailbox exist yet (None: the source cannot tell cheaply)?"""
        return None

    def measure_many(self, requests: Sequence[MailboxRequest], says_over: SaysOver, now: float) -> List[Result]:
        """Many mailboxes, in order; a source that can ask in batches overrides this.
        Each result is a Measurement or that mailbox's MeasureError."""
        results: List[Result] = []
        for request in requests:
            try:
                results.append(self.measure(request, says_over, now))
            except MeasureError as exc:
                results.append(exc)
        return results

    @contextlib.contextmanager
    def full_pass(self) -> Iterator["UsageSource"]:
        """The source to measure all accounts of one full sync with. A source that reads
        every mailbox in one go hands out a view that does so once for the whole pass."""
        yield self

    def prefetch(self, keys: Sequence[str]) -> None:
        """The daemon is about to measure these mailboxes (by :meth:`key`) one by one: a
        source that asks in batches may ask for all of them now."""

    def feed(self, daemon: DaemonConfig) -> ChangeFeed:
        """The daemon's change notifications; without any, everything is polled."""
        return PollingFeed(daemon.poll_interval)

    def reopen(self) -> None:
        """Forget what is held open (the store may have been remounted)."""

    def close(self) -> None:
        self.reopen()


class BatchedSource(UsageSource):
    """A source that asks its store in batches (one program run or request for many
    mailboxes): one mailbox is a batch of one."""

    def measure(self, request: MailboxRequest, says_over: SaysOver, now: float) -> Measurement:
        result = self.measure_many([request], says_over, now)[0]
        if isinstance(result, Exception):
            raise result
        return result

    @abc.abstractmethod
    def measure_many(self, requests: Sequence[MailboxRequest], says_over: SaysOver, now: float) -> List[Result]: ...
