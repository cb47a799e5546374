"""Which mailboxes changed: inotify where it can, cheap ``stat`` polling where it cannot.

One inotify watch per maildir, on the maildir directory itself: Maildir++ MDAs (Exim's
``maildir_use_size_file``, Dovecot, Courier) append a line to ``maildirsize`` there on
every delivery and deletion, and replace the file (write a temporary file, rename it)
when they recalculate. Other files in that directory (Dovecot's index files, say) change
often and are ignored by name. A maildir without ``maildirsize`` is measured by walking
it, so it gets a "deep" watch: ``new/`` and ``cur/`` of the maildir and of each of its
``.Folder``s are watched too (1 + 2 + 2 per folder watches; a folder lacking ``new/`` or
``cur/`` is watched itself until both are there). The maildir's own watch sees ``new/``,
``cur/`` and folders appear (their watches are added then) and go; ``add()`` again
retries what is missing. A deep watch that the kernel's watch limit leaves incomplete
becomes polling.

A watch follows its directory, not its path: a maildir renamed away (IN_MOVE_SELF) is
watched again by path at once (or polled, if nothing is there now). A renamed parent
directory says nothing at all, so each watch remembers the device and inode it is on:
``mode()`` calls it "stale" and ``add()`` watches again when ``path`` names another
directory now (the service calls ``add()`` after each measurement, and during full syncs
for what ``mode()`` does not call "watch"). Paths watched again are reported changed.

Mailboxes that cannot be watched are polled (:mod:`ldapquota.maildir_poll`): ``watch:
false`` in the config (NFS, where inotify never sees other hosts' changes), a maildir that
does not exist yet, or the kernel's watch limit reached — said once, loudly.

Paths are opaque keys here; what a change means is the service's business. A queue
overflow (events lost) is reported so the caller can fall back on a full sync.
"""

import errno
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ldapquota.maildir_poll import DEEP_PARTS, MAILDIRSIZE, StatPoller, folders, identity, is_folder, signature, watch_limits
from ldapquota.mounts import LocalFileSystems
from ldapquota.watch_parts import NO_SUBS, Changes, Owners, Watch, expand, pack

try:  # pragma: no cover - the import itself is what is tested
    from inotify_simple import INotify
    from inotify_simple import flags as _flags
except ImportError:  # non-Linux: polling only
    INotify = None
    _flags = None

log = logging.getLogger(__name__)

__all__ = ["DEEP_PARTS", "MAILDIRSIZE", "Changes", "Watcher", "signature"]

if _flags is not None:
    _ONLYDIR = _flags.ONLYDIR | _flags.EXCL_UNLINK
    _SELF = _flags.DELETE_SELF | _flags.MOVE_SELF | _flags.UNMOUNT
    _ENTRIES = _flags.CREATE | _flags.DELETE | _flags.MOVED_FROM | _flags.MOVED_TO
    #: the maildir: maildirsize appended (MODIFY) or replaced/removed (entries), itself gone
    ROOT_MASK = _flags.MODIFY | _ENTRIES | _flags.DELETE_SELF | _flags.MOVE_SELF | _ONLYDIR
    #: new/ and cur/ of a maildir without maildirsize: messages arriving, moved, expunged
    DEEP_MASK = _ENTRIES | _flags.DELETE_SELF | _flags.MOVE_SELF | _ONLYDIR
    #: a .Folder of a deep maildir lacking new/ or cur/: to see them appear
    FOLDER_MASK = _flags.CREATE | _flags.MOVED_TO | _flags.MOVED_FROM | _flags.DELETE_SELF | _flags.MOVE_SELF | _ONLYDIR
    _ISDIR = _flags.ISDIR
    _MOVE_SELF = _flags.MOVE_SELF
    _APPEARED = _flags.CREATE | _flags.MOVED_TO
    _OVERFLOW = _flags.Q_OVERFLOW
    _IGNORED = _flags.IGNORED
    _UNMOUNT = _flags.UNMOUNT
    _SELF_GONE = _SELF
    _ENTRY_EVENTS = _ENTRIES


class Watcher:
    """Tells which watched maildir paths changed, by inotify or by polling."""

    def __init__(self, use_inotify: bool = True, poll_interval: float = 30.0, poll_step: float = 1.0,
                 inotify_factory: Optional[Callable[..., Any]] = None):
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
        self._wds: Dict[int, Owners] = {}  # wd → who it serves (part "" = the maildir)
        self._watched: Dict[str, Watch] = {}
        self.poller = StatPoller(poll_interval, poll_step)
        self._limit_reached = False  # the kernel's watch limit: stop trying until reset
        self._limit_warned = False
        self._healed: Set[str] = set()  # re-watched paths: reported changed by the next read()
        self._local = LocalFileSystems()

    # ------------------------------------------------------------------ state

    @property
    def next_poll_at(self) -> Optional[float]:
        """When there is news without an inotify event: at once while paths watched again
        wait to be reported (noticed only at the next wake-up, they would look like a late
        change, and delay the next real one by a debounce)."""
        if self._healed:
            return 0.0
        return self.poller.next_poll_at

    @property
    def poll_interval(self) -> float:
        return self.poller.interval

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    @property
    def watched_count(self) -> int:
        return len(self._watched)

    @property
    def polled_count(self) -> int:
        return len(self.poller)

    def mode(self, path: str) -> Optional[str]:
        """How ``path`` is followed: "watch" (inotify on the directory it names now),
        "stale" (inotify on a directory ``path`` no longer names: moved away, or a parent
        renamed — ``add()`` watches it again), "poll", or None (unknown). Costs one
        ``stat`` for a watched path."""
        watch = self._watched.get(path)
        if watch is not None:
            return "watch" if identity(path) == watch.ident else "stale"
        if path in self.poller:
            return "poll"
        return None

    def sees_everything(self, path: str) -> bool:
        """Does inotify report every change that can move ``path``'s usage? Only a
        complete deep watch (an incomplete one is polled) on the directory ``path`` names
        now, on a local file system, does. One ``stat``."""
        watch = self._watched.get(path)
        if watch is None or not watch.deep or identity(path) != watch.ident:
            return False
        return self._local.is_local(watch.ident[0])

    def fileno(self) -> Optional[int]:
        return self._inotify.fileno() if self._inotify is not None else None

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wds.clear()
        self._watched.clear()
        self.poller.clear()
        self._healed.clear()

    def retry_limit(self) -> None:
        """Try inotify again for paths added from now on (watches may have been freed)."""
        self._limit_reached = False

    # ------------------------------------------------------------------ adding, removing

    def add(self, path: str, deep: bool = False, now: Optional[float] = None) -> str:
        """Watch ``path`` (a maildir) — ``deep`` also watches new/ and cur/ of it and of
        its ``.Folder``s. Returns "watch" or "poll". Adding a path again adjusts its depth
        and retries the deep watches that are missing; a watch that no longer is on the
        directory ``path`` names (replaced by a rename) is made again; a polled path is
        tried with inotify again (it may exist now). A path watched again this way is
        reported changed by the next ``read()``."""
        current = self._watched.get(path)
        if current is not None:
            if identity(path) == current.ident:
                if current.deep != deep or deep:
                    self._set_depth(path, current, deep, report=True)
                return "watch" if path in self._watched else "poll"
            self._drop(path)  # on a directory that moved away
            self._healed.add(path)
        if self._inotify is not None and not self._limit_reached:
            ident = identity(path)
            try:
                if ident is None:
                    raise OSError(errno.ENOENT, "No such file or directory")
                wd = self._inotify.add_watch(path, ROOT_MASK)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self._watch_limit_reached()
                elif exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
                    log.warning("cannot watch %s: %s; polling it", path, exc.strerror or exc)
            else:
                watch = Watch(wd, ident, False)
                self._watched[path] = watch
                self._own(wd, path, "")
                self.poller.remove(path)
                if deep:
                    self._set_depth(path, watch, True, report=False)
                return "watch" if path in self._watched else "poll"
        self._poll(path, deep, now)
        return "poll"

    def remove(self, path: str) -> None:
        self._drop(path)
        self.poller.remove(path)
        self._healed.discard(path)

    def _drop(self, path: str) -> None:
        """Forget ``path``'s watches (removing those no other path shares)."""
        watch = self._watched.pop(path, None)
        if watch is None:
            return
        for part, wd in watch.subs.items():
            self._disown(wd, path, part)
        self._disown(watch.root, path, "")

    def _set_depth(self, path: str, watch: Watch, deep: bool, report: bool) -> None:
        """Shallow: drop the deep watches. Deep: add those missing (``report``: the path
        is reported changed if any was added, as what they would have seen is unknown).
        At the kernel's watch limit, a deep watch that cannot be completed becomes polling."""
        if not deep:
            for part in list(watch.subs):
                self._unwatch(path, watch, part)
            watch.deep = False
            return
        watch.deep = True
        added = False
        for folder in [""] + folders(path):
            result = self._fill(path, watch, folder)
            if result is None:
                return  # polled now
            added = added or result
        if added and report:
            self._healed.add(path)

    def _fill(self, path: str, watch: Watch, folder: str) -> Optional[bool]:
        """Watch new/ and cur/ of ``folder`` ("" = the maildir itself). A folder lacking
        one of them is watched itself, to see it appear. True if a watch was added, None
        if the watch limit turned the path to polling."""
        assert self._inotify is not None
        added = False
        for attempt in range(2):
            missing = False
            for sub in DEEP_PARTS:
                part = os.path.join(folder, sub) if folder else sub
                if part in watch.subs:
                    continue
                result = self._try_watch(path, watch, part, DEEP_MASK)
                if result is None:
                    return None
                added = added or result
                missing = missing or not result
            if not folder:
                break  # the maildir's own watch sees new/ and cur/ appear
            if not missing:
                self._unwatch(path, watch, folder)  # complete: no need to see new/, cur/ appear
                break
            if folder in watch.subs or attempt:
                break
            # Watch the folder to see them appear, then look again: one may have
            # appeared before that watch was there.
            result = self._try_watch(path, watch, folder, FOLDER_MASK)
            if not result:
                return result if result is None else added
        return added

    def _try_watch(self, path: str, watch: Watch, part: str, mask: int) -> Optional[bool]:
        """True: watched; False: not there (nothing to watch yet); None: the watch limit
        is reached, and ``path`` is polled now."""
        assert self._inotify is not None
        try:
            wd = self._inotify.add_watch(os.path.join(path, part), mask)
        except OSError as error:
            exc = error
        else:
            if watch.subs is NO_SUBS:
                watch.subs = {}
            watch.subs[part] = wd
            self._own(wd, path, part)
            return True
        if exc.errno == errno.ENOSPC:
            self._watch_limit_reached()
            # A deep watch with holes would miss deliveries: poll this maildir instead.
            self._drop(path)
            self._poll(path, True, None)
            self._healed.add(path)
            return None
        return False  # not there (or not a directory): nothing to watch yet

    def _unwatch(self, path: str, watch: Watch, part: str) -> None:
        wd = watch.subs.pop(part, None)
        if wd is not None:
            self._disown(wd, path, part)

    def _own(self, wd: int, path: str, part: str) -> None:
        current = self._wds.get(wd)
        if current is None:
            self._wds[wd] = path if part == "" else (path, part)
            return
        owners = expand(current)
        if (path, part) not in owners:
            self._wds[wd] = owners + [(path, part)]

    def _disown(self, wd: int, path: str, part: str) -> None:
        current = self._wds.get(wd)
        if current is None:
            return
        owners = [owner for owner in expand(current) if owner != (path, part)]
        if owners:
            self._wds[wd] = pack(owners)
        else:
            del self._wds[wd]
            if self._inotify is not None:
                try:
                    self._inotify.rm_watch(wd)
                except OSError:
                    pass  # already gone (directory removed): the kernel dropped it

    def _poll(self, path: str, deep: bool, now: Optional[float]) -> None:
        self.poller.add(path, deep, now)

    def _watch_limit_reached(self) -> None:
        self._limit_reached = True
        if self._limit_warned:
            return
        self._limit_warned = True
        log.warning(
            "the kernel's inotify watch limit is reached (%d maildirs watched): the other mailboxes are polled "
            "every %gs instead. Limits: %s, and restart ldapquota for instant updates",
            len(self._watched), self.poll_interval, watch_limits(len(self._wds)),
        )

    # ------------------------------------------------------------------ what changed

    def read(self) -> Changes:
        """Drain the inotify queue without blocking."""
        changes = Changes()
        if self._healed:
            changes.paths |= self._healed
            self._healed = set()
        if self._inotify is None:
            return changes
        for event in self._inotify.read(timeout=0):
            self._event(event.wd, event.mask, event.name, changes)
        return changes

    def _event(self, wd: int, mask: int, name: str, changes: Changes) -> None:
        if mask & _OVERFLOW:
            changes.overflow = True
            return
        current = self._wds.get(wd)
        if current is None:
            return
        owners = expand(current)
        if mask & _UNMOUNT:
            changes.unmounted = True
        if mask & _IGNORED:
            self._watch_removed(wd, owners, changes)
        elif mask & _MOVE_SELF:
            self._moved(wd, owners, changes)
        else:
            self._entries(mask, name, owners, changes)

    def _watch_removed(self, wd: int, owners: List[Tuple[str, str]], changes: Changes) -> None:
        """The kernel removed the watch: directory deleted, or unmounted."""
        del self._wds[wd]
        for path, part in list(owners):
            watch = self._watched.get(path)
            if watch is None:
                continue
            if part == "":
                # The maildir itself is gone: drop its other watches, poll for its return.
                if watch.root == wd:
                    del self._watched[path]
                    for sub, other in watch.subs.items():
                        self._disown(other, path, sub)
                    self._poll(path, watch.deep, None)
            elif watch.subs.get(part) == wd:
                del watch.subs[part]
            changes.paths.add(path)

    def _moved(self, wd: int, owners: List[Tuple[str, str]], changes: Changes) -> None:
        """Renamed: the watch follows the directory, which the path no longer names. No
        IN_IGNORED comes; watch what the path names now (or poll it)."""
        for path, part in list(owners):
            watch = self._watched.get(path)
            if watch is None:
                continue
            changes.paths.add(path)
            if part == "":
                self._drop(path)
                self._healed.discard(path)
                self.add(path, watch.deep)
            elif watch.subs.get(part) == wd:
                self._unwatch(path, watch, part)
                if part in DEEP_PARTS or os.path.dirname(part):
                    self._fill(path, watch, os.path.dirname(part))  # new/ or cur/ replaced
                # (a .Folder watched itself: the maildir's watch sees where it went)

    def _entries(self, mask: int, name: str, owners: List[Tuple[str, str]], changes: Changes) -> None:
        for path, part in list(owners):
            watch = self._watched.get(path)
            if watch is None:
                continue
            if part in DEEP_PARTS or os.path.dirname(part):
                changes.paths.add(path)  # new/ or cur/ of a deep watch: anything counts
            elif part:
                # A .Folder lacking new/ or cur/: they may have appeared.
                if name in DEEP_PARTS and mask & _ISDIR:
                    changes.paths.add(path)
                    self._fill(path, watch, part)
            elif mask & _SELF_GONE or name == MAILDIRSIZE:
                changes.paths.add(path)
            elif watch.deep and mask & _ENTRY_EVENTS and mask & _ISDIR and (name in DEEP_PARTS or is_folder(name)):
                # new/, cur/ or a .Folder of a deep maildir appeared or went.
                changes.paths.add(path)
                if name in DEEP_PARTS:
                    if mask & _APPEARED:
                        self._fill(path, watch, "")
                    else:
                        self._unwatch(path, watch, name)
                elif mask & _APPEARED:
                    self._fill(path, watch, name)
                else:
                    for sub in [name] + [os.path.join(name, part) for part in DEEP_PARTS]:
                        self._unwatch(path, watch, sub)

    def poll(self, now: float) -> Set[str]:
        """``stat`` the next slice of polled paths; those whose signature changed."""
        return self.poller.poll(now)
