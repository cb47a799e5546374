"""In-memory stand-ins for the daemon's surroundings, for fast in-process tests.

* :class:`FakeClock` — a clock the test moves (``clock()`` reads it, ``advance()`` moves it);
* :class:`FakeDirectory` — the accounts' store: entries by DN, modification times in the
  server's clock (whole seconds, as LDAP's modifyTimestamp), a log of every write, an
  outage switch, entries whose writes fail; :meth:`FakeDirectory.store` opens a
  :class:`FakeStore`, one connection implementing :class:`~ldapquota.flagstore.FlagStore`;
* :class:`FakeSource` — a :class:`~ldapquota.sources.base.UsageSource`: the test sets each
  mailbox's usage, can make the mail store unready or a mailbox unmeasurable, and pushes
  changes into its :class:`FakeFeed`.

The fakes keep the rules of the interfaces they stand in for (docs/contract.md §4, §5): a
listing is complete or raises, a write changes only what differs, an outage raises
DirectoryUnavailable on every call of every connection until the directory is back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

from ldapquota.entry import ATTR_FREE, ATTR_OVER, ATTR_SYNC_TIME, OBJECT_CLASS, AccountEntry
from ldapquota.errors import AccountError, DirectoryUnavailable, EntryWriteError, MeasureError, WriteSuperseded
from ldapquota.flagstore import FlagStore
from ldapquota.quota import UNLIMITED, Limit, QuotaState, Usage
from ldapquota.sources.base import ChangeFeed, FeedChanges, MailboxRequest, Measurement, SaysOver, UsageSource

BASE_DN = "ou=people,dc=example,dc=org"
STATUS_DN = "cn=ldapquota,dc=example,dc=org"
EPOCH = 1_700_000_000.0  # where the fake wall clocks start
T = TypeVar("T")


class FakeClock:
    """Seconds; starts at ``start`` and moves only when the test says so (``advance``, or
    ``drift``: so much more at every reading, for time passing inside one call)."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.drift = 0.0

    def __call__(self) -> float:
        self.now += self.drift
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def account_dn(address: str) -> str:
    return f"uid={address.partition('@')[0]},{BASE_DN}"


# --------------------------------------------------------------------------- the store


@dataclass
class FakeEntry:
    dn: str
    attributes: Dict[str, List[str]]  # names as given; looked up case-insensitively
    modified: float
    account: bool = True  # matches ldap.filter

    def get(self, name: str) -> List[str]:
        for key, values in self.attributes.items():
            if key.lower() == name.lower():
                return values
        return []

    def put(self, name: str, values: List[str]) -> None:
        for key in list(self.attributes):
            if key.lower() == name.lower():
                del self.attributes[key]
        if values:
            self.attributes[name] = values

    def project(self, names: Sequence[str]) -> AccountEntry:
        wanted = {name.lower() for name in names}
        return AccountEntry(self.dn, {key: list(values) for key, values in self.attributes.items() if key.lower() in wanted})


@dataclass
class Write:
    """One modify the store received (write log)."""

    dn: str
    old: QuotaState
    new: QuotaState
    at: float


class FakeDirectory:
    """The store's data, shared by every connection (:meth:`store`)."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock  # the server's clock, seconds since the epoch
        self.entries: Dict[str, FakeEntry] = {}  # DN in lower case → entry
        self.down: Optional[str] = None  # an outage: why (every call raises DirectoryUnavailable)
        self.failing: Dict[str, str] = {}  # DN in lower case → the EntryWriteError its writes raise
        self.writes_until_down: Optional[int] = None  # after this many more writes, an outage
        self.writes: List[Write] = []
        self.sync_times: List[float] = []
        self.connects = 0
        self.searches: Dict[str, int] = {}  # listing method → how many times it was called
        #: listing method → the error it ends with after its first page (SearchIncomplete
        #: for a size limit or a referral, PermissionDenied for an ACL, ...).
        self.cut_short: Dict[str, Exception] = {}
        self.page_size = 1000  # entries a search reads at a time (as LDAP's paged results)
        self.add(STATUS_DN, {"objectClass": ["top", "device"]}, account=False)

    # ---- what the test sets up and changes ("someone else" editing the directory)

    def add(self, dn: str, attributes: Dict[str, List[str]], *, account: bool = True) -> FakeEntry:
        entry = FakeEntry(dn, {key: list(values) for key, values in attributes.items()}, self._stamp(), account)
        self.entries[dn.lower()] = entry
        return entry

    def add_account(self, address: str, *, quota: Optional[str] = None, over: Optional[bool] = None,
                    free: Optional[int] = None, mailbox: Optional[str] = None) -> str:
        dn = account_dn(address)
        attributes: Dict[str, List[str]] = {"objectClass": ["inetOrgPerson"], "mail": [address]}
        if quota is not None:
            attributes["mailQuota"] = [quota]
        if over is not None:
            attributes[ATTR_OVER] = ["TRUE" if over else "FALSE"]
        if free is not None:
            attributes[ATTR_FREE] = [str(free)]
        if mailbox is not None:
            attributes["mailbox"] = [mailbox]
        self.add(dn, attributes)
        return dn

    def modify(self, dn: str, **values: Optional[str]) -> None:
        """Set (or, with None, delete) attributes, as an administrator would."""
        entry = self.entries[dn.lower()]
        for name, value in values.items():
            entry.put(name, [] if value is None else [value])
        entry.modified = self._stamp()

    def set_account(self, dn: str, account: bool) -> None:
        """The entry stops (or starts) matching ldap.filter (disabled, say)."""
        entry = self.entries[dn.lower()]
        entry.account = account
        entry.modified = self._stamp()

    def delete(self, dn: str) -> None:
        del self.entries[dn.lower()]

    def state(self, dn: str) -> QuotaState:
        entry = self.entries[dn.lower()]
        return AccountEntry(entry.dn, entry.attributes).quota_state

    def flag(self, dn: str) -> Optional[str]:
        values = self.entries[dn.lower()].get(ATTR_OVER)
        return values[0] if values else None

    def written(self, dn: str) -> List[QuotaState]:
        return [write.new for write in self.writes if write.dn.lower() == dn.lower()]

    def store(self) -> FakeStore:
        return FakeStore(self)

    def _stamp(self) -> float:
        return float(math.floor(self.clock()))  # modifyTimestamp has whole seconds


class FakeStore(FlagStore):
    """One connection to a :class:`FakeDirectory`."""

    def __init__(self, directory: FakeDirectory):
        self.directory = directory
        self.connected = False
        self.closed = False

    def _check(self) -> FakeDirectory:
        if self.directory.down is not None:
            self.connected = False  # the connection breaks with the outage
            raise DirectoryUnavailable(f"fake LDAP: {self.directory.down}")
        if not self.connected:
            raise DirectoryUnavailable("not connected to LDAP")
        return self.directory

    def connect(self) -> FakeStore:
        if self.directory.down is not None:
            raise DirectoryUnavailable(f"fake LDAP: {self.directory.down}")
        if not self.connected:
            self.connected = True
            self.directory.connects += 1
            self.server = "ldap://fake"
        return self

    def close(self) -> None:
        self.connected = False
        self.closed = True

    def _listing(self, kind: str, wanted: Callable[[FakeEntry], bool], make: Callable[[FakeEntry], T]) -> Iterator[T]:
        """Entries in DN order, read a page at a time as a paged search is (a page's entries
        are as they were when the page was read); an outage shows at the next page, and
        raises: never a short list. ``kind``: the method, counted in ``searches``, and the
        key of ``cut_short`` (the error that search ends with after its first page)."""
        directory = self._check()
        directory.searches[kind] = directory.searches.get(kind, 0) + 1
        matches = [entry for _, entry in sorted(directory.entries.items()) if wanted(entry)]
        size = directory.page_size
        for start in range(0, len(matches), size):
            self._check()
            yield from [make(entry) for entry in matches[start:start + size]]
            if kind in directory.cut_short:
                raise directory.cut_short[kind]
        self._check()
        if kind in directory.cut_short:
            raise directory.cut_short[kind]

    def search_accounts(self, attributes: Sequence[str]) -> Iterator[AccountEntry]:
        return self._listing("search_accounts", lambda entry: entry.account, lambda entry: entry.project(attributes))

    def find_accounts(self, address: str, attributes: Sequence[str]) -> List[AccountEntry]:
        def matches(entry: FakeEntry) -> bool:
            return entry.account and address.lower() in (value.lower() for value in entry.get("mail"))

        return list(self._listing("find_accounts", matches, lambda entry: entry.project(attributes)))

    def changed_accounts(self, attributes: Sequence[str], since: float) -> Iterator[Tuple[AccountEntry, Optional[float]]]:
        return self._listing("changed_accounts", lambda entry: entry.account and entry.modified >= since,
                             lambda entry: (entry.project(attributes), entry.modified))

    def departed_accounts(self, since: float) -> Iterator[str]:
        return self._listing("departed_accounts", lambda entry: not entry.account and entry.modified >= since,
                             lambda entry: entry.dn)

    def account_dns(self) -> Iterator[str]:
        return self._listing("account_dns", lambda entry: entry.account, lambda entry: entry.dn)

    def read_entry(self, dn: str, attributes: Sequence[str]) -> Optional[AccountEntry]:
        entry = self._check().entries.get(dn.lower())
        return entry.project(attributes) if entry is not None else None

    def modified_at(self, dn: str) -> Optional[float]:
        entry = self._check().entries.get(dn.lower())
        return entry.modified if entry is not None else None

    def missing_schema(self) -> List[str]:
        self._check()
        return []

    def write_state(self, dn: str, old: QuotaState, new: QuotaState, has_class: bool, *, noop: bool = False,
                    if_unchanged: bool = False) -> None:
        directory = self._check()
        entry = directory.entries.get(dn.lower())
        if dn.lower() in directory.failing:
            raise EntryWriteError(directory.failing[dn.lower()])
        if entry is None:
            raise EntryWriteError(f"{dn}: no such object")
        if noop or old == new:
            return  # as LDAP: a modify is sent only for what differs
        if if_unchanged and directory.state(dn) != old:  # as LDAP's Assertion control
            raise WriteSuperseded(f"{dn} no longer holds {old}")
        if new.over != old.over:
            entry.put(ATTR_OVER, ["TRUE" if new.over else "FALSE"])
        if new.free_bytes != old.free_bytes:
            entry.put(ATTR_FREE, [] if new.free_bytes is None else [str(new.free_bytes)])
        classes = entry.get("objectClass")
        if OBJECT_CLASS.lower() not in (value.lower() for value in classes):
            entry.put("objectClass", [*classes, OBJECT_CLASS])
        entry.modified = directory._stamp()
        directory.writes.append(Write(entry.dn, old, new, directory.clock()))
        if directory.writes_until_down is not None:
            directory.writes_until_down -= 1
            if directory.writes_until_down <= 0:
                directory.down = "went away after a write"
                directory.writes_until_down = None

    def write_sync_time(self, dn: str, epoch: float, *, noop: bool = False) -> None:
        directory = self._check()
        entry = directory.entries.get(dn.lower())
        if entry is None:
            raise EntryWriteError(f"ldap.status_dn {dn} does not exist")
        if dn.lower() in directory.failing:
            raise EntryWriteError(directory.failing[dn.lower()])
        if noop:
            return
        entry.put(ATTR_SYNC_TIME, [str(int(epoch))])
        entry.modified = directory._stamp()
        directory.sync_times.append(epoch)


# --------------------------------------------------------------------------- the usage source


class FakeFeed(ChangeFeed):
    """Changes the test pushes; records what is followed."""

    def __init__(self) -> None:
        self.followed: Set[str] = set()
        self.follows: List[str] = []  # every follow() call, in order
        self.unfollows: List[str] = []
        self.poorly: Set[str] = set()  # keys following_well() says no to
        self.complete: Set[str] = set()  # keys whose every change it would report
        self.retries = 0
        self.closed = False
        self._changes = FeedChanges()

    def push(self, *keys: str, overflow: bool = False, unmounted: bool = False) -> None:
        self._changes.keys.update(keys)
        self._changes.overflow |= overflow
        self._changes.unmounted |= unmounted

    def collect(self, now: float) -> FeedChanges:
        changes, self._changes = self._changes, FeedChanges()
        return changes

    def follow(self, key: str, now: float, measurement: Optional[Measurement] = None) -> None:
        self.followed.add(key)
        self.follows.append(key)

    def unfollow(self, key: str) -> None:
        self.followed.discard(key)
        self.unfollows.append(key)

    def following_well(self, key: str) -> bool:
        return key not in self.poorly

    def sees_every_change(self, key: str) -> bool:
        return key in self.complete

    def retry_limit(self) -> None:
        self.retries += 1

    @property
    def description(self) -> str:
        return "fake notifications"

    @property
    def watched_count(self) -> int:
        return len(self.followed)

    def close(self) -> None:
        self.closed = True


class FakeSource(UsageSource):
    """Mailboxes are names (the ``mailbox`` attribute, else the address); usage is what
    the test set; a mailbox never set does not exist."""

    def __init__(self, config: object = None):
        self.config = config  # type: ignore[assignment]
        self.usage: Dict[str, Usage] = {}
        self.own_limits: Dict[str, Limit] = {}  # the store's own limit per mailbox
        self.broken: Dict[str, str] = {}  # mailbox → its MeasureError
        self.ready_error: Optional[Exception] = None  # check_ready raises it
        self.measured: List[str] = []
        self.reopened = 0
        self.feeds: List[FakeFeed] = []
        #: Called with each mailbox as it is measured (to make something happen mid-sync).
        self.on_measure: Optional[Callable[[str], None]] = None

    @property
    def attributes(self) -> Sequence[str]:
        return ["mailbox"]

    @property
    def current_feed(self) -> FakeFeed:
        return self.feeds[-1]

    def set_usage(self, mailbox: str, used: int, messages: int = 0) -> None:
        self.usage[mailbox] = Usage(used, messages)

    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        mailbox = entry.first("mailbox") or address
        if not mailbox:
            raise AccountError("no address and no mailbox")
        return mailbox

    def check_ready(self) -> None:
        if self.ready_error is not None:
            raise self.ready_error

    def measure(self, request: MailboxRequest, says_over: SaysOver, now: float) -> Measurement:
        mailbox = request.mailbox
        self.measured.append(mailbox)
        if self.on_measure is not None:
            self.on_measure(mailbox)
        if mailbox in self.broken:
            raise MeasureError(self.broken[mailbox])
        limit = request.limit if request.limit is not None else self.own_limits.get(mailbox, UNLIMITED)
        usage = self.usage.get(mailbox)
        if usage is None:
            return Measurement(Usage(0, 0), limit, "fake", mailbox, missing=True)
        return Measurement(usage, limit, "fake", mailbox)

    def feed(self, daemon: object) -> FakeFeed:  # type: ignore[override]
        self.feeds.append(FakeFeed())
        return self.feeds[-1]

    def reopen(self) -> None:
        self.reopened += 1
