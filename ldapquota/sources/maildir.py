"""``mailboxes.source: maildir`` (the default): Maildir++ stores under ``mailboxes.root``.

The mailbox of an account is ``accounts.mailbox_attribute`` when set and present, else
the ``mailboxes.path`` template, under the root (docs/contract.md §4). Measuring is
:mod:`ldapquota.mailbox` (``maildirsize``, else a recount); the daemon's notifications are
:mod:`ldapquota.watcher` (inotify, else ``stat`` polling).
"""

import os
from typing import List, Optional, Sequence

from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError, SafetyRefusal
from ldapquota.mailbox import MailStore
from ldapquota.paths import lexically_under_root, strip_mail_location
from ldapquota.settings import Config, DaemonConfig
from ldapquota.sources.base import ChangeFeed, FeedChanges, MailboxRequest, Measurement, SaysOver, UsageSource
from ldapquota.watcher import MAILDIRSIZE, Watcher


def check_mail_root(root: str) -> None:
    """A missing or empty mail root means an unmounted store, not empty mailboxes
    (docs/contract.md §5)."""
    try:
        with os.scandir(root) as entries:
            empty = next(iter(entries), None) is None
    except FileNotFoundError:
        raise SafetyRefusal(
            f"mailboxes.root {root} does not exist (store not mounted?); nothing written. Use --force to sync anyway"
        ) from None
    except NotADirectoryError:
        raise SafetyRefusal(f"mailboxes.root {root} is not a directory; nothing written") from None
    except OSError as exc:
        raise SafetyRefusal(f"mailboxes.root {root} cannot be read: {exc.strerror}; nothing written") from None
    if empty:
        raise SafetyRefusal(f"mailboxes.root {root} is empty (store not mounted?); nothing written. Use --force to sync anyway")


class Source(UsageSource):
    own_limit = "maildirsize header"

    def __init__(self, config: Config):
        super().__init__(config)
        # config.py requires the root with this source (docs/contract.md §7).
        assert config.mailboxes.root is not None, "mailboxes.root is required with mailboxes.source: maildir"
        self.root: str = config.mailboxes.root
        self.mailboxes = config.mailboxes
        self.mailbox_attribute = config.accounts.mailbox_attribute
        self.store = MailStore(self.root)
        self.root_real = self.store.root_real

    @property
    def attributes(self) -> Sequence[str]:
        names: List[str] = [self.mailbox_attribute] if self.mailbox_attribute else []
        return names + list(self.mailboxes.path.attributes)

    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        location = entry.first(self.mailbox_attribute) if self.mailbox_attribute else None
        if location:
            mailbox = strip_mail_location(location.strip())
            if not mailbox:
                raise AccountError(f"{self.mailbox_attribute} {location!r} is not a path")
            return mailbox
        try:
            return self.mailboxes.path.render(address, entry.attributes)
        except ValueError as exc:
            raise AccountError(f"mailbox path: {exc}") from None

    def key(self, mailbox: str) -> Optional[str]:
        try:
            return lexically_under_root(self.root_real, mailbox)
        except ValueError:
            return None

    def check_ready(self) -> None:
        check_mail_root(self.root)

    def describe_ready(self) -> str:
        return f"mailboxes.root {self.mailboxes.root} exists and is not empty"

    def has_mailbox(self, mailbox: str) -> Optional[bool]:
        key = self.key(mailbox)
        return key is not None and os.path.isdir(key)

    def measure(self, request: MailboxRequest, says_over: SaysOver, now: float) -> Measurement:
        return self.store.measure(request.mailbox, request.limit, says_over, self.mailboxes.count_trash, now)

    def feed(self, daemon: DaemonConfig) -> ChangeFeed:
        return MaildirFeed(Watcher(daemon.watch, daemon.poll_interval))

    def reopen(self) -> None:
        self.store.close()  # reopened on first use: follows a remounted mailboxes.root


class MaildirFeed(ChangeFeed):
    """inotify on each maildir (deep for one without ``maildirsize``), else ``stat`` polling."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def fileno(self) -> Optional[int]:
        return self.watcher.fileno()

    @property
    def next_poll_at(self) -> Optional[float]:
        return self.watcher.next_poll_at

    @property
    def description(self) -> str:
        if self.watcher.uses_inotify:
            return "inotify"
        return f"stat polling every {self.watcher.poll_interval:g}s"

    @property
    def watched_count(self) -> int:
        return self.watcher.watched_count

    @property
    def polled_count(self) -> int:
        return self.watcher.polled_count

    def collect(self, now: float) -> FeedChanges:
        changes = self.watcher.read()
        keys = set(changes.paths)
        next_poll = self.watcher.next_poll_at
        if next_poll is not None and now >= next_poll:
            keys |= self.watcher.poll(now)
        return FeedChanges(keys, changes.overflow, changes.unmounted)

    def follow(self, key: str, now: float, measurement: Optional[Measurement] = None) -> None:
        # A maildir without maildirsize is measured by recounting: watch its folders too.
        if measurement is not None:
            deep = measurement.recounted
        else:
            deep = not os.path.exists(os.path.join(key, MAILDIRSIZE))
        self.watcher.add(key, deep=deep, now=now)

    def unfollow(self, key: str) -> None:
        self.watcher.remove(key)

    def following_well(self, key: str) -> bool:
        return self.watcher.mode(key) == "watch"

    def sees_every_change(self, key: str) -> bool:
        # A mailbox measured by walking it has a deep watch (see follow): every delivery,
        # expunge and folder change shows up. One measured from maildirsize has only its
        # directory watched: space freed without maildirsize noticing (a non-Maildir++
        # client) is found by re-measuring, which walks once the over verdict is stale.
        return self.watcher.sees_everything(key)

    def retry_limit(self) -> None:
        self.watcher.retry_limit()

    def close(self) -> None:
        self.watcher.close()
