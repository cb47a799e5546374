"""How the daemon follows Cyrus: its event notifications, and its quota report as a net.

Cyrus sends an RFC 5423 notification after every delivery, append, copy, move and
expunge (imapd.conf ``event_notifier`` set, ``message`` among ``event_groups``), as one
datagram to its ``notifysocket`` (docs/maildir-and-mta-facts.md §9; not the ``quota``
group, which crashes Cyrus 3.6.1). Pointed at a path of ldapquota's own, that socket is
bound here; no notifyd and no program per event are involved. The daemon reads
``notifysocket`` from ``cyrus.imapd_conf``, so the two cannot disagree.

A thread of its own drains the socket as fast as Cyrus writes: Cyrus's ``sendto()``
blocks once ten datagrams wait unread (``net.unix.max_dgram_qlen``), and a delivery must
never wait for ldapquota. The thread only notes mailbox names; the loop maps them to quota
roots (the mailbox and those above it) and measures the accounts they belong to.

Every ``daemon.poll_interval`` (or ten times as long as the report takes, if that is
longer) the whole report is read in one run, in a thread of its own (on a big store Cyrus
takes seconds over it, and notifications keep being handled meanwhile), and every root
that changed since it was last read is measured, from that same report: what
notifications missed (ldapquota was down, an admin changed a limit, a notification was
lost) is caught there.
"""

import logging
import os
import socket
import stat
import threading
import time
from typing import Callable, Dict, Optional, Set, Tuple

from ldapquota.cyrus_formats import RootQuota, governing_roots, notification_mailbox
from ldapquota.errors import SourceUnavailable
from ldapquota.sources.base import ChangeFeed, FeedChanges, Measurement
from ldapquota.sources.cyrus import Source

log = logging.getLogger(__name__)

#: Cyrus's largest notification (imap/notify.h NOTIFY_MAXSIZE), and one byte to spare.
RECEIVE_SIZE = 65536 + 1
#: Mailboxes noted between two looks of the loop before "anything may have changed".
MAX_PENDING = 100_000
#: The polling pass never takes more than a tenth of the daemon's time.
POLL_SHARE = 10.0


class SocketTaken(Exception):
    """Another program has the notification socket (or the path is no socket)."""


class CyrusFeed(ChangeFeed):
    def __init__(self, source: Source, poll_interval: float):
        self.source = source
        self.poll_interval = poll_interval
        self.followed: Set[str] = set()
        self._next_poll: Optional[float] = None
        self._poll: Optional[ReportRun] = None
        self._poll_failed = False
        self._lost_socket = False
        # Both threads (notifications, polling) wake the loop through this pipe.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.events: Optional[EventSocket] = self._listen()

    def _listen(self) -> "Optional[EventSocket]":
        without = f"following Cyrus by reading its quota report every {self.poll_interval:g}s only"
        settings = self.source.events()
        if settings.warning:
            log.warning("%s", settings.warning)
        if settings.socket is None:
            log.warning("%s: %s; %s", self.source.settings.imapd_conf, settings.problem, without)
            return None
        try:
            return EventSocket(settings.socket, settings.configdirectory, self._wake)
        except (OSError, SocketTaken) as exc:
            log.warning("cannot receive Cyrus's event notifications at %s (notifysocket in %s): %s; %s",
                        settings.socket, self.source.settings.imapd_conf, exc, without)
            return None

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: the loop has been woken already

    def fileno(self) -> Optional[int]:
        return self._wake_r

    @property
    def next_poll_at(self) -> Optional[float]:
        if self._poll is not None or not self.followed:
            return None  # the polling thread wakes the loop when it is done
        return self._next_poll

    @property
    def description(self) -> str:
        net = f"Cyrus's quota report read every {self.poll_interval:g}s"
        if self.events is None:
            return net + " (no event notifications)"
        return f"Cyrus's event notifications on {self.events.path}, and {net}"

    @property
    def polls_everything(self) -> bool:
        return True  # every poll reads every root

    @property
    def watched_count(self) -> int:
        return len(self.followed) if self.events else 0

    @property
    def polled_count(self) -> int:
        return 0 if self.events else len(self.followed)

    def collect(self, now: float) -> FeedChanges:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        changes = FeedChanges()
        if self.events is not None:
            mailboxes, changes.overflow = self.events.take()
            for mailbox in mailboxes:
                roots = governing_roots(mailbox)
                changes.keys.update(roots)
                self.source.forget_fresh(roots)  # what was read ahead is older than this change
        if self._poll is not None and self._poll.done:
            changes.keys.update(self._polled(now, self._poll))
            self._poll = None
        if self._poll is None and self._next_poll is not None and now >= self._next_poll and self.followed:
            self.source.poll_started()
            self._poll = ReportRun(self.source, self._wake)
        return changes

    def _polled(self, now: float, run: "ReportRun") -> Set[str]:
        self._next_poll = now + max(self.poll_interval, POLL_SHARE * run.took)
        if run.report is None:
            self.source.poll_failed()
            if not self._poll_failed:
                log.error("polling Cyrus: %s", run.error)
            self._poll_failed = True
            return set()
        if self._poll_failed:
            log.info("Cyrus's quota report can be read again")
            self._poll_failed = False
        if self.events is not None and not self.events.still_ours() and not self._lost_socket:
            self._lost_socket = True
            log.error("the notification socket %s was replaced by another program (Cyrus's notifyd?); "
                      "give ldapquota a notifysocket of its own. Following Cyrus by polling only", self.events.path)
        return set(self.source.changed_since_seen(run.report))

    def follow(self, key: str, now: float, measurement: Optional[Measurement] = None) -> None:
        self.followed.add(key)
        if self._next_poll is None:
            self._next_poll = now + self.poll_interval

    def unfollow(self, key: str) -> None:
        self.followed.discard(key)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        if (self.events is None or not self.events.alive) and (self._poll is None or self._poll.done):
            # No thread of ours can write to the pipe any more: close it (else leave it).
            os.close(self._wake_r)
            os.close(self._wake_w)
        self.events = None


class ReportRun:
    """The whole report, read in a thread of its own so that the loop goes on handling
    notifications while Cyrus walks its quota database (seconds, on a big store)."""

    def __init__(self, source: Source, wake: Callable[[], None]):
        self.report: Optional[Dict[str, RootQuota]] = None
        self.error: Optional[SourceUnavailable] = None
        self.took = 0.0
        self.done = False
        self._source = source
        self._wake = wake
        threading.Thread(target=self._run, name="cyrus-report", daemon=True).start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.report = self._source.read_all()
        except SourceUnavailable as exc:
            self.error = exc
        self.took = time.monotonic() - started
        self.done = True
        self._wake()


class EventSocket:
    """The datagram socket at Cyrus's ``notifysocket``, drained by a thread of its own."""

    def __init__(self, path: str, configdirectory: Optional[str], wake: Callable[[], None]):
        self.path = path
        self.sock = _bind(path, configdirectory)
        self.inode = os.stat(path).st_ino
        self.received = 0
        self.ignored = 0  # notifications without a mailbox, or not EVENT
        self._pending: Set[str] = set()
        self._overflow = False
        self._lock = threading.Lock()
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="cyrus-events", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                datagram = self.sock.recv(RECEIVE_SIZE)
            except socket.timeout:
                continue
            except OSError:
                return  # closed
            mailbox = notification_mailbox(datagram)
            with self._lock:
                self.received += 1
                if mailbox is None:
                    self.ignored += 1
                elif len(self._pending) >= MAX_PENDING:
                    self._overflow = True
                else:
                    self._pending.add(mailbox)
            self._wake()

    def take(self) -> Tuple[Set[str], bool]:
        """The mailboxes noted since the last call, and whether some were lost."""
        with self._lock:
            pending, self._pending = self._pending, set()
            overflow, self._overflow = self._overflow, False
        return pending, overflow

    def still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self.still_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.sock.close()


def _bind(path: str, configdirectory: Optional[str]) -> socket.socket:
    """A datagram socket bound at ``path``, which Cyrus's processes may write to. A socket
    left there by an earlier run is replaced; one another program listens on, or anything
    that is not a socket, is left alone (SocketTaken)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if found is not None:
        if not stat.S_ISSOCK(found.st_mode):
            raise SocketTaken(f"{path} exists and is not a socket; not touching it")
        if _someone_listens(path):
            raise SocketTaken(f"another program listens on {path} (Cyrus's notifyd?); "
                              "point notifysocket at a path of ldapquota's own")
        os.unlink(path)  # left behind by an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    try:
        # Cyrus's processes run as its own user: the socket is theirs to write to.
        os.chmod(path, 0o660)
        if os.geteuid() == 0 and configdirectory:
            owner = os.stat(configdirectory)
            os.chown(path, owner.st_uid, owner.st_gid)
        sock.settimeout(0.5)  # the thread looks at its stop flag this often
    except OSError:
        sock.close()
        os.unlink(path)
        raise
    return sock


def _someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
        return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # cannot tell (no permission): better not to take it
    finally:
        probe.close()
