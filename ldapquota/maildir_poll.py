"""Maildirs seen through ``stat`` (what a directory is, its folders, a change signature),
and ``stat`` polling: what the watcher falls back on where inotify cannot
follow a maildir (``daemon.watch: false``, NFS, a maildir that does not exist yet, the
kernel's watch limit). Polling is spread over ``poll_interval`` in small slices."""

import os
from collections import deque
from typing import Deque, Dict, List, Optional, Set, Tuple

from ldapquota.schedule import slice_size

MAILDIRSIZE = "maildirsize"
DEEP_PARTS = ("new", "cur")


def identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def max_user_watches() -> Optional[int]:
    """``fs.inotify.max_user_watches``: the limit of the initial user namespace (the host's)."""
    return _read_int("/proc/sys/fs/inotify/max_user_watches")


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def in_initial_user_namespace(uid_map: str = "/proc/self/uid_map") -> Optional[bool]:
    """Whether this process runs in the host's user namespace (whose uid_map is the
    identity over all of 0..2^32-2); None when that cannot be told."""
    try:
        with open(uid_map) as handle:
            return handle.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return None


def watch_limits(held: int, proc: str = "/proc") -> str:
    """What is known about the inotify watch limit that was just reached, for the log.

    Since Linux 4.9 the limit is counted per user in each user namespace, up the chain of
    namespaces, and the lowest bites: ``user.max_inotify_watches`` is this namespace's,
    ``fs.inotify.max_user_watches`` always the host's (the same setting when we run on the
    host), and a namespace in between may have a lower one that cannot be seen from here.
    Every watch of this user counts, not only ours (``held``)."""
    host = _read_int(f"{proc}/sys/fs/inotify/max_user_watches")
    here = _read_int(f"{proc}/sys/user/max_inotify_watches")
    ours = f"ldapquota holds {held}; every inotify watch of this user counts"
    initial = in_initial_user_namespace(f"{proc}/self/uid_map")
    if initial or (here is None and initial is None):
        value = host if host is not None else here
        return (f"fs.inotify.max_user_watches = {value if value is not None else '?'} ({ours}); "
                "raise it (sysctl fs.inotify.max_user_watches=...)")
    known = [f"user.max_inotify_watches = {here if here is not None else '?'} in this user namespace",
             f"fs.inotify.max_user_watches = {host if host is not None else '?'} on the host"]
    likely = ""
    if here is not None and host is not None:
        name, value = ("user.max_inotify_watches", here) if here <= host else ("fs.inotify.max_user_watches", host)
        likely = f"; the lower, {name} = {value}, is the likely one"
    return (f"this process runs in a user namespace, where the lowest limit up the chain bites: "
            f"{', '.join(known)}, and a namespace in between may have its own ({ours}){likely}; "
            "raise the one that bit (sysctl user.max_inotify_watches=... in the namespace that set it, "
            "fs.inotify.max_user_watches=... on the host)")


def is_folder(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def folders(path: str) -> List[str]:
    """The ``.Folder`` directories of a maildir (symlinks are not followed, as in the walk)."""
    names = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if is_folder(entry.name):
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            names.append(entry.name)
                    except OSError:
                        pass
    except OSError:
        return []
    return sorted(names)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as exc:
        return -(exc.errno or 1)


def signature(path: str, deep: bool) -> object:
    """What polling compares: ``maildirsize``'s inode, size and mtime; for a maildir
    without one (or a deep one), the mtimes of the directory (and of ``new/``, ``cur/``,
    and ``new/``, ``cur/`` of every ``.Folder``: one listing and two ``stat`` per folder).

    The common case (a ``maildirsize``, not deep) is one integer holding all three
    exactly: polled mailboxes may be most of a million, and a tuple of three costs
    three times as much."""
    try:
        info = os.stat(os.path.join(path, MAILDIRSIZE))
        size_file: object = (info.st_ino, info.st_size, info.st_mtime_ns)
    except FileNotFoundError:
        size_file = None
    except OSError as exc:
        size_file = ("error", exc.errno)
    if size_file is not None and not deep:
        if isinstance(size_file, tuple) and all(isinstance(v, int) and 0 <= v < _FIELD for v in size_file):
            inode, size, mtime = size_file
            return (inode << 128) | (size << 64) | mtime
        return (size_file,)
    times: List[object] = [_mtime(path)]
    if deep:
        for folder in [""] + folders(path):
            times.append((folder,) + tuple(_mtime(os.path.join(path, folder, sub)) for sub in DEEP_PARTS))
    return (size_file, tuple(times))


_FIELD = 1 << 64
#: Paths ``stat``-ed per slice at most, while the step can shrink (see current_step).
SLICE_PATHS = 1000
#: The shortest step between slices (seconds).
MIN_STEP = 0.02


class StatPoller:
    """Paths compared by :func:`signature`, a slice of them per ``step``, all once per ``interval``."""

    def __init__(self, interval: float, step: float = 1.0):
        self.interval = interval
        self.step = step
        self._polled: Dict[str, object] = {}  # path → signature
        self._deep: Set[str] = set()  # polled paths compared deep (rare: no maildirsize)
        # Every polled path once, in polling order; a removed path stays until it is
        # reached (in _removed meanwhile), and is reused if the path is added back first.
        self._queue: Deque[str] = deque()
        self._removed: Set[str] = set()
        self.next_poll_at: Optional[float] = None

    def __len__(self) -> int:
        return len(self._polled)

    def __contains__(self, path: object) -> bool:
        return path in self._polled

    def current_step(self) -> float:
        """``step``, or shorter when that many paths would make one slice long: the
        daemon's loop does nothing else while a slice is ``stat``-ed, so a slice stays
        near SLICE_PATHS paths (a few ms) and events are not kept waiting behind it."""
        live = len(self._polled)
        if live <= 0:
            return self.step
        return max(MIN_STEP, min(self.step, self.interval * SLICE_PATHS / live))

    def add(self, path: str, deep: bool, now: Optional[float]) -> None:
        if deep:
            self._deep.add(path)
        else:
            self._deep.discard(path)
        if path in self._polled:
            return
        self._polled[path] = signature(path, deep)
        if path in self._removed:
            self._removed.discard(path)  # its queue item is still there
        else:
            self._queue.append(path)
        if self.next_poll_at is None:
            self.next_poll_at = (now or 0.0) + self.step

    def remove(self, path: str) -> None:
        if path in self._polled:
            del self._polled[path]
            self._deep.discard(path)
            self._removed.add(path)

    def clear(self) -> None:
        self._polled.clear()
        self._deep.clear()
        self._queue.clear()
        self._removed.clear()

    def poll(self, now: float) -> Set[str]:
        """``stat`` the next slice of polled paths; those whose signature changed."""
        changed: Set[str] = set()
        live = len(self._polled)
        if not live:
            self._queue.clear()
            self._removed.clear()
            self.next_poll_at = None
            return changed
        step = self.current_step()
        budget = slice_size(live, self.interval, step)
        looked = 0
        # Removed paths do not count against the budget, but the loop ends after one lap at most.
        for _ in range(len(self._queue)):
            if looked >= budget:
                break
            path = self._queue.popleft()
            if path in self._removed:
                self._removed.discard(path)
                continue
            old = self._polled.get(path)
            if old is None:
                continue
            looked += 1
            new = signature(path, path in self._deep)
            if new != old:
                self._polled[path] = new
                changed.add(path)
            self._queue.append(path)
        self.next_poll_at = now + step if self._polled else None
        return changed
