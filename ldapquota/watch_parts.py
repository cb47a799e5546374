"""The inotify watcher's bookkeeping, kept small (most of a million mailboxes may be
watched): per maildir, its watch (:class:`Watch`); per watch descriptor, whom it serves
(:data:`Owners`, a bare path in the usual case of one maildir's own watch); and what one
read of the watcher found (:class:`Changes`)."""

from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple, Union

#: The parts of a maildir's watch while it has none (most of them): shared, never written.
NO_SUBS: Dict[str, int] = {}

#: Who a watch descriptor serves: a maildir path (its own watch, the usual case), one
#: (path, part), or a list of them (a directory reached by several paths).
Owners = Union[str, Tuple[str, str], List[Tuple[str, str]]]


def expand(owners: Owners) -> List[Tuple[str, str]]:
    if isinstance(owners, str):
        return [(owners, "")]
    if isinstance(owners, tuple):
        return [owners]
    return owners


def pack(owners: List[Tuple[str, str]]) -> Owners:
    if len(owners) != 1:
        return owners
    path, part = owners[0]
    return path if part == "" else owners[0]


class Watch:
    __slots__ = ("root", "ident", "deep", "subs")

    def __init__(self, root: int, ident: Tuple[int, int], deep: bool):
        self.root = root  # the maildir's watch
        self.ident = ident  # (st_dev, st_ino) of the directory that watch is on
        self.deep = deep
        #: part → watch: "new", "cur", ".Folder/new", ".Folder/cur", and ".Folder" itself
        #: while one of its new/ or cur/ is missing (to see it appear)
        self.subs: Dict[str, int] = NO_SUBS


@dataclass
class Changes:
    """What one read of the watcher found."""

    paths: Set[str] = field(default_factory=set)
    overflow: bool = False  # the kernel dropped events: anything may have changed
    unmounted: bool = False  # a watched file system went away
