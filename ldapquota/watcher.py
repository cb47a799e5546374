"""Which mailboxes changed: inotify where it can, cheap ``stat`` polling where it cannot.

One inotify watch per maildir, on the maildir directory itself: Maildir++ MDAs (Exim's
``maildir_use_size_file``, Dovecot, Courier) append a line to ``maildirsize`` there on
every delivery and deletion, and replace the file (write a temporary file, rename it)
when they recalculate. Other files in that directory (Dovecot's index files, say) change
often and are ignored by name. A maildir without ``maildirsize`` is measured by walking
it, so it gets a "deep" watch: ``new/`` and ``cur/`` are watched too (three watches).

Mailboxes that cannot be watched are polled: ``watch: false`` in the config (NFS, where
inotify never sees other hosts' changes), a maildir that does not exist yet, or the
kernel's watch limit (``fs.inotify.max_user_watches``) reached — said once, loudly.
Polling is spread over ``poll_interval`` in small slices and costs one ``stat`` of
``maildirsize`` per mailbox and round.

Paths are opaque keys here; what a change means is the service's business. A queue
overflow (events lost) is reported so the caller can fall back on a full sync.
"""

import errno
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Set, Tuple

from ldapquota.schedule import slice_size

try:  # pragma: no cover - the import itself is what is tested
    from inotify_simple import INotify, flags as _flags
except ImportError:  # non-Linux: polling only
    INotify = None  # type: ignore[assignment,misc]
    _flags = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAILDIRSIZE = "maildirsize"
DEEP_PARTS = ("new", "cur")

if _flags is not None:
    _ONLYDIR = _flags.ONLYDIR | _flags.EXCL_UNLINK
    _SELF = _flags.DELETE_SELF | _flags.MOVE_SELF | _flags.UNMOUNT
    _ENTRIES = _flags.CREATE | _flags.DELETE | _flags.MOVED_FROM | _flags.MOVED_TO
    #: the maildir: maildirsize appended (MODIFY) or replaced/removed (entries), itself gone
    ROOT_MASK = _flags.MODIFY | _ENTRIES | _flags.DELETE_SELF | _flags.MOVE_SELF | _ONLYDIR
    #: new/ and cur/ of a maildir without maildirsize: messages arriving, moved, expunged
    DEEP_MASK = _ENTRIES | _flags.DELETE_SELF | _flags.MOVE_SELF | _ONLYDIR
    _OVERFLOW = _flags.Q_OVERFLOW
    _IGNORED = _flags.IGNORED
    _UNMOUNT = _flags.UNMOUNT
    _SELF_GONE = _SELF
    _ENTRY_EVENTS = _ENTRIES


@dataclass
class Changes:
    """What one read of the watcher found."""

    paths: Set[str] = field(default_factory=set)
    overflow: bool = False  # the kernel dropped events: anything may have changed
    unmounted: bool = False  # a watched file system went away


class _Watch:
    __slots__ = ("wds", "deep")

    def __init__(self, wds: List[int], deep: bool):
        self.wds = wds  # [maildir, (new, cur)]
        self.deep = deep


def max_user_watches() -> Optional[int]:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def signature(path: str, deep: bool) -> Tuple[object, ...]:
    """What polling compares: ``maildirsize``'s inode, size and mtime; for a maildir
    without one (or a deep one), the mtimes of the directory (and ``new/``, ``cur/``)."""
    try:
        info = os.stat(os.path.join(path, MAILDIRSIZE))
        size_file: object = (info.st_ino, info.st_size, info.st_mtime_ns)
    except FileNotFoundError:
        size_file = None
    except OSError as exc:
        size_file = ("error", exc.errno)
    if size_file is not None and not deep:
        return (size_file,)
    times = []
    for sub in ("",) + (DEEP_PARTS if deep else ()):
        try:
            times.append(os.stat(os.path.join(path, sub) if sub else path).st_mtime_ns)
        except OSError as exc:
            times.append(-(exc.errno or 1))
    return (size_file, tuple(times))


class Watcher:
    """Tells which watched maildir paths changed, by inotify or by polling."""

    def __init__(self, use_inotify: bool = True, poll_interval: float = 30.0, poll_step: float = 1.0,
                 inotify_factory=None):
        self.poll_interval = poll_interval
        self.poll_step = poll_step
        self._inotify = None
        self.inotify_error: Optional[str] = None
        if use_inotify:
            factory = inotify_factory or INotify
            if factory is None:
                self.inotify_error = "inotify is not available on this system"
            else:
                try:
                    self._inotify = factory(nonblocking=True)
                except OSError as exc:
                    # EMFILE: fs.inotify.max_user_instances reached.
                    self.inotify_error = f"cannot start inotify: {exc.strerror or exc}"
            if self.inotify_error:
                log.warning("%s; every mailbox is polled every %gs instead", self.inotify_error, poll_interval)
        self._wds: Dict[int, List[Tuple[str, str]]] = {}  # wd → [(path, part)]; part "" = the maildir
        self._watched: Dict[str, _Watch] = {}
        self._polled: Dict[str, List[object]] = {}  # path → [signature, deep, token]
        self._poll_queue: Deque[Tuple[str, int]] = deque()
        self._token = 0
        self._limit_reached = False  # the kernel's watch limit: stop trying until reset
        self._limit_warned = False
        self.next_poll_at: Optional[float] = None

    # ------------------------------------------------------------------ state

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    @property
    def watched_count(self) -> int:
        return len(self._watched)

    @property
    def polled_count(self) -> int:
        return len(self._polled)

    def mode(self, path: str) -> Optional[str]:
        if path in self._watched:
            return "watch"
        if path in self._polled:
            return "poll"
        return None

    def fileno(self) -> Optional[int]:
        return self._inotify.fileno() if self._inotify is not None else None

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wds.clear()
        self._watched.clear()
        self._polled.clear()
        self._poll_queue.clear()

    def retry_limit(self) -> None:
        """Try inotify again for paths added from now on (watches may have been freed)."""
        self._limit_reached = False

    # ------------------------------------------------------------------ adding, removing

    def add(self, path: str, deep: bool = False, now: Optional[float] = None) -> str:
        """Watch ``path`` (a maildir) — ``deep`` also watches new/ and cur/. Returns
        "watch" or "poll". Adding a path again adjusts its depth; a polled path is tried
        with inotify again (it may exist now)."""
        current = self._watched.get(path)
        if current is not None:
            if current.deep != deep:
                self._set_depth(path, current, deep)
            return "watch"
        if self._inotify is not None and not self._limit_reached:
            try:
                wd = self._inotify.add_watch(path, ROOT_MASK)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self._watch_limit_reached()
                elif exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
                    log.warning("cannot watch %s: %s; polling it", path, exc.strerror or exc)
            else:
                watch = _Watch([wd], False)
                self._watched[path] = watch
                self._own(wd, path, "")
                self._polled.pop(path, None)
                if deep:
                    self._set_depth(path, watch, True)
                return "watch"
        self._poll(path, deep, now)
        return "poll"

    def remove(self, path: str) -> None:
        watch = self._watched.pop(path, None)
        if watch is not None:
            for wd in watch.wds:
                self._disown(wd, path)
        self._polled.pop(path, None)

    def _set_depth(self, path: str, watch: _Watch, deep: bool) -> None:
        assert self._inotify is not None
        if not deep:
            for wd in watch.wds[1:]:
                self._disown(wd, path)
            del watch.wds[1:]
            watch.deep = False
            return
        watch.deep = True
        for part in DEEP_PARTS:
            try:
                wd = self._inotify.add_watch(os.path.join(path, part), DEEP_MASK)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self._watch_limit_reached()
                continue  # a maildir without new/ or cur/ holds nothing there yet
            watch.wds.append(wd)
            self._own(wd, path, part)

    def _own(self, wd: int, path: str, part: str) -> None:
        owners = self._wds.setdefault(wd, [])
        if (path, part) not in owners:
            owners.append((path, part))

    def _disown(self, wd: int, path: str) -> None:
        owners = self._wds.get(wd)
        if owners is None:
            return
        owners[:] = [owner for owner in owners if owner[0] != path]
        if not owners:
            del self._wds[wd]
            if self._inotify is not None:
                try:
                    self._inotify.rm_watch(wd)
                except OSError:
                    pass  # already gone (directory removed): the kernel dropped it

    def _poll(self, path: str, deep: bool, now: Optional[float]) -> None:
        entry = self._polled.get(path)
        if entry is not None:
            entry[1] = deep
            return
        self._token += 1
        self._polled[path] = [signature(path, deep), deep, self._token]
        self._poll_queue.append((path, self._token))
        if self.next_poll_at is None:
            self.next_poll_at = (now or 0.0) + self.poll_step

    def _watch_limit_reached(self) -> None:
        self._limit_reached = True
        if self._limit_warned:
            return
        self._limit_warned = True
        limit = max_user_watches()
        log.warning(
            "the kernel's inotify watch limit is reached (fs.inotify.max_user_watches = %s, %d maildirs "
            "watched): the other mailboxes are polled every %gs instead. Raise the limit "
            "(sysctl fs.inotify.max_user_watches=...) and restart ldapquota for instant updates",
            limit if limit is not None else "?", len(self._watched), self.poll_interval,
        )

    # ------------------------------------------------------------------ what changed

    def read(self) -> Changes:
        """Drain the inotify queue without blocking."""
        changes = Changes()
        if self._inotify is None:
            return changes
        for event in self._inotify.read(timeout=0):
            self._event(event.wd, event.mask, event.name, changes)
        return changes

    def _event(self, wd: int, mask: int, name: str, changes: Changes) -> None:
        if mask & _OVERFLOW:
            changes.overflow = True
            return
        owners = self._wds.get(wd)
        if not owners:
            return
        if mask & _UNMOUNT:
            changes.unmounted = True
        if mask & _IGNORED:
            # The kernel removed the watch: directory deleted, moved away, or unmounted.
            del self._wds[wd]
            for path, part in owners:
                watch = self._watched.get(path)
                if watch is None:
                    continue
                if wd in watch.wds:
                    watch.wds.remove(wd)
                if part == "":
                    # The maildir itself is gone: drop its other watches, poll for its return.
                    del self._watched[path]
                    for other in watch.wds:
                        self._disown(other, path)
                    self._poll(path, watch.deep, None)
                changes.paths.add(path)
            return
        for path, part in owners:
            if part:
                changes.paths.add(path)  # new/ or cur/ of a deep watch: anything counts
            elif mask & _SELF_GONE or name == MAILDIRSIZE:
                changes.paths.add(path)
            elif name in DEEP_PARTS and mask & _ENTRY_EVENTS:
                watch = self._watched.get(path)
                if watch is not None and watch.deep:
                    changes.paths.add(path)

    def poll(self, now: float) -> Set[str]:
        """``stat`` the next slice of polled paths; those whose signature changed."""
        changed: Set[str] = set()
        live = len(self._polled)
        if not live:
            self._poll_queue.clear()
            self.next_poll_at = None
            return changed
        budget = slice_size(live, self.poll_interval, self.poll_step)
        looked = 0
        # Stale queue items (removed or re-added paths) do not count against the budget,
        # but the loop ends after one lap at most.
        for _ in range(len(self._poll_queue)):
            if looked >= budget:
                break
            path, token = self._poll_queue.popleft()
            entry = self._polled.get(path)
            if entry is None or entry[2] != token:
                continue
            looked += 1
            new = signature(path, bool(entry[1]))
            if new != entry[0]:
                entry[0] = new
                changed.add(path)
            self._poll_queue.append((path, token))
        self.next_poll_at = now + self.poll_step if self._polled else None
        return changed
