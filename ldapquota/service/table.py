"""The daemon's account table: per account what the event path needs, and nothing more
(there may be a million, at well under 1 KiB each with the change feed's part:
benchmarks/table_memory.py): its DN, address, mailbox, the attributes its limit and
mailbox come from, and the state the store holds. Mailboxes are followed by the change
feed as long as an account uses them.

What makes it small: a record's DN is kept as its lower-case key plus the parent DN as
the server spells it, shared by every record under it (rebuilt on use); attribute values
that repeat (quota plans) are one object; a mailbox with one account maps to that key
alone, not a list; the states are shared.
"""

import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from ldapquota.entry import ATTR_FREE, ATTR_OVER, AccountEntry
from ldapquota.quota import QuotaState
from ldapquota.sources.base import ChangeFeed

Attrs = Tuple[object, ...]  # per layout name: None, the value, or a tuple of values

#: At most this many distinct parent DNs and attribute values (per attribute) are shared;
#: beyond that a record keeps its own copy (still correct, only bigger).
SHARED_MAX = 4096


class Record:
    """One account (kept small: slots, shared strings and states)."""

    __slots__ = ("key", "_dn", "address", "mailbox", "layout", "attrs", "state", "has_class", "generation", "error")

    def __init__(self, key: str, dn: Optional[str], address: str, mailbox: Optional[str], layout: Tuple[str, ...],
                 attrs: Attrs, state: QuotaState, has_class: bool, generation: int):
        self.key = key  # the DN in lower case (the table's key)
        self._dn = dn  # None: the DN is the key; ",..." the parent DN (the key's first RDN kept); else the DN
        self.address = address
        self.mailbox = mailbox  # the source's key of the mailbox; None if the entry gives none
        self.layout = layout  # the attribute names of ``attrs`` (shared by all records)
        self.attrs = attrs
        self.state = shared_state(state)  # what the store holds (as last read or written)
        self.has_class = has_class
        self.generation = generation  # the full sync that last saw it
        self.error: Optional[str] = None  # the last measuring error reported

    @property
    def dn(self) -> str:
        """The DN as the server spells it."""
        stored = self._dn
        if stored is None:
            return self.key
        if stored.startswith(","):
            return self.key[: len(self.key) - len(stored)] + stored
        return stored


class AccountTable:
    def __init__(self, layout: Sequence[str], clock: Callable[[], float]):
        self.layout = make_layout(layout)  # also sets the value pools
        self.clock = clock
        self.feed: Optional[ChangeFeed] = None
        self.records: Dict[str, Record] = {}  # DN in lower case → record
        #: mailbox key → the record key using it (a list when several accounts share it)
        self.by_mailbox: Dict[str, Union[str, List[str]]] = {}
        self.over: Set[str] = set()  # keys whose (wanted) state is over quota
        self.generation = 0
        self._parents: Dict[str, str] = {}

    @property
    def layout(self) -> Tuple[str, ...]:
        return self._layout

    @layout.setter
    def layout(self, layout: Tuple[str, ...]) -> None:
        """The attributes kept from now on (a reload may change them)."""
        self._layout = layout
        self._values: List[Dict[str, str]] = [{} for _ in layout]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def get(self, key: str) -> Optional[Record]:
        return self.records.get(key)

    def keys_for(self, mailbox: str) -> Sequence[str]:
        keys = self.by_mailbox.get(mailbox, ())
        return [keys] if isinstance(keys, str) else keys

    def upsert(self, entry: AccountEntry, address: str, mailbox: Optional[str]) -> Tuple[str, Record, bool]:
        """Record ``entry``; returns (key, record, whether anything but the state changed)."""
        key = dn_key(entry.dn)
        attrs = tuple(self._share(index, entry.values(name)) for index, name in enumerate(self.layout))
        if attrs and isinstance(attrs[0], str) and attrs[0] == address:
            address = attrs[0]  # one string for both
        record = self.records.get(key)
        if record is None:
            record = Record(key, self._compact_dn(entry.dn, key), address, mailbox, self.layout, attrs,
                            entry.quota_state, entry.has_quota_class, self.generation)
            self.records[key] = record
            self._attach(key, mailbox)
            return key, record, True
        changed = record.layout != self.layout or record.attrs != attrs or record.mailbox != mailbox
        if record.mailbox != mailbox:
            self._detach(key, record.mailbox)
            self._attach(key, mailbox)
        elif mailbox is not None and self.feed is not None and not self.feed.following_well(mailbox):
            self._attach(key, mailbox)  # try again (created since, or watches freed)
        if entry.dn != record.dn:
            record._dn = self._compact_dn(entry.dn, key)
        record.address = address
        record.mailbox = mailbox
        record.layout = self.layout
        record.attrs = attrs
        record.has_class = record.has_class or entry.has_quota_class
        return key, record, changed

    def set_state(self, key: str, state: QuotaState, *, written: bool = False) -> None:
        """What the store holds now (read, or ``written`` by us)."""
        record = self.records.get(key)
        if record is None:
            return
        record.state = shared_state(state)
        if written:
            record.has_class = True
        self.mark_over(key, state.over)

    def over_to_recheck(self) -> List[str]:
        """Over-quota keys to measure again (``daemon.over_recheck``): freed space may go
        unnoticed (NFS, a client that leaves maildirsize alone), and an over verdict read
        from maildirsize is walked once stale. Not those whose every change the feed reports."""
        feed = self.feed
        keys = []
        for key in self.over:
            record = self.records.get(key)
            if record is None or record.mailbox is None or feed is None or not feed.sees_every_change(record.mailbox):
                keys.append(key)
        return keys

    def mark_over(self, key: str, over: bool) -> None:
        if over:
            self.over.add(key)
        else:
            self.over.discard(key)

    def forget(self, key: str) -> Optional[Record]:
        record = self.records.pop(key, None)
        if record is not None:
            self._detach(key, record.mailbox)
            self.over.discard(key)
        return record

    def unseen(self) -> List[str]:
        """Keys the current full sync (generation) did not see."""
        return [key for key, record in self.records.items() if record.generation != self.generation]

    def entry_for(self, record: Record, state: QuotaState) -> AccountEntry:
        """The account as the Evaluator reads it, with ``state`` as the stored state."""
        attributes: Dict[str, List[str]] = {}
        for name, value in zip(record.layout, record.attrs):
            if value is not None:
                attributes[name] = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        if state.over:
            attributes[ATTR_OVER.lower()] = ["TRUE"]
        if state.free_bytes is not None:
            attributes[ATTR_FREE.lower()] = [str(state.free_bytes)]
        return AccountEntry(record.dn, attributes)

    def refollow_all(self) -> None:
        """A new feed: follow every mailbox again."""
        for mailbox in self.by_mailbox:
            if self.feed is not None:
                self.feed.follow(mailbox, self.clock())

    def _attach(self, key: str, mailbox: Optional[str]) -> None:
        if mailbox is None:
            return
        keys = self.by_mailbox.get(mailbox)
        if keys is None:
            self.by_mailbox[mailbox] = key
        elif isinstance(keys, str):
            if keys != key:
                self.by_mailbox[mailbox] = [keys, key]
        elif key not in keys:
            keys.append(key)
        if self.feed is not None:
            self.feed.follow(mailbox, self.clock())

    def _detach(self, key: str, mailbox: Optional[str]) -> None:
        if mailbox is None:
            return
        keys = self.by_mailbox.get(mailbox)
        if keys is None:
            return
        if isinstance(keys, str):
            if keys != key:
                return
            left: Sequence[str] = ()
        else:
            left = [other for other in keys if other != key]
        if len(left) > 1:
            self.by_mailbox[mailbox] = list(left)
        elif left:
            self.by_mailbox[mailbox] = left[0]
        else:
            del self.by_mailbox[mailbox]
            if self.feed is not None:
                self.feed.unfollow(mailbox)

    def _compact_dn(self, dn: str, key: str) -> Optional[str]:
        """What a record keeps of its DN (see :attr:`Record.dn`)."""
        if dn == key:
            return None
        comma = dn.find(",")
        if comma <= 0 or dn[:comma] != key[:comma]:
            return dn  # the first RDN is not in lower case: kept whole
        return _shared(self._parents, dn[comma:])

    def _share(self, index: int, values: List[str]) -> object:
        if not values:
            return None
        if len(values) > 1:
            return tuple(values)
        return _shared(self._values[index], values[0])


def _shared(pool: Dict[str, str], value: str) -> str:
    """One object per distinct value, while the pool has room."""
    found = pool.get(value)
    if found is not None:
        return found
    if len(pool) < SHARED_MAX:
        pool[value] = value
    return value


def make_layout(names: Sequence[str]) -> Tuple[str, ...]:
    """The attributes kept per record: what the Evaluator reads, but our own state."""
    ours = (ATTR_OVER.lower(), ATTR_FREE.lower())
    return tuple(sys.intern(name.lower()) for name in names if name.lower() not in ours)


def dn_key(dn: str) -> str:
    lowered = dn.lower()
    return dn if lowered == dn else lowered  # one string, not two, in the common case


_STATES: Dict[QuotaState, QuotaState] = {}


def shared_state(state: QuotaState) -> QuotaState:
    """One object per distinct state (most accounts share the same two or three)."""
    if state.free_bytes is not None and len(_STATES) > 10000:
        return state
    return _STATES.setdefault(state, state)
