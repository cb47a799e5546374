"""The loop's store connection: reconnects with backoff, says when it is down and back."""

import logging
from typing import Callable, ContextManager, Optional

from ldapquota.errors import DirectoryUnavailable, PermissionDenied, SearchIncomplete
from ldapquota.flagstore import FlagStore
from ldapquota.schedule import Backoff

log = logging.getLogger(__name__)


class ReconnectingStore:
    def __init__(self, factory: Callable[[], FlagStore], clock: Callable[[], float], backoff: Optional[Backoff] = None):
        self.factory = factory
        self.clock = clock
        self.store: Optional[FlagStore] = None
        self.backoff = backoff or Backoff()
        self.retry_at = 0.0
        self.down_since: Optional[float] = None
        #: Bumped by every new connection: a part that trusts what it read over an older
        #: one (the daemon's cache) knows it must look again.
        self.connections = 0
        #: Bumped by every connection made after the store was found unavailable (not by
        #: a reconnection a new configuration asked for): the directory may have changed
        #: in any way meanwhile (docs/contract.md §5, "Daemon cache").
        self.recoveries = 0
        self.outages = 0  # times LDAP became unreachable (metrics)
        self._last_error: Optional[str] = None

    @property
    def up(self) -> bool:
        return self.store is not None

    def may_try(self, now: float) -> bool:
        return self.store is not None or now >= self.retry_at

    def get(self, guard: Callable[[], ContextManager[None]], pending: int) -> Optional[FlagStore]:
        """The connected store, connecting if the backoff allows; None while it is down.
        ``guard`` wraps the connecting (a SIGTERM may abandon it)."""
        if self.store is not None:
            return self.store
        if not self.may_try(self.clock()):
            return None
        try:
            with guard():
                return self._connect()
        except (DirectoryUnavailable, PermissionDenied) as exc:
            self.failed(exc, pending)
            return None

    def _connect(self) -> FlagStore:
        store = self.factory().connect()
        if self.down_since is not None:
            log.info("LDAP %s reachable again after %.0fs", store.server, self.clock() - self.down_since)
            self.recoveries += 1
        self.store = store
        self.connections += 1
        self.down_since = None
        self._last_error = None
        self.backoff.reset()
        return store

    def failed(self, exc: Exception, pending: int) -> None:
        self.close()
        now = self.clock()
        delay = self.backoff.next_delay()
        self.retry_at = now + delay
        message = str(exc)
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            log.error("LDAP unavailable: %s; %d change(s) pending, retrying in %.1fs (backing off up to %gs)",
                      message, pending, delay, self.backoff.maximum)
        elif message != self._last_error:
            log.warning("LDAP still unavailable: %s; %d change(s) pending", message, pending)
        else:
            log.debug("LDAP still unavailable: %s; next try in %.1fs", message, delay)
        self._last_error = message

    def reset(self, factory: Callable[[], FlagStore]) -> None:
        """A new configuration: connect afresh."""
        self.close()
        self.factory = factory
        self.retry_at = 0.0
        self.backoff.reset()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def breaks_connection(exc: Exception) -> bool:
    """Does ``exc`` show the store is out of reach (so the loop's connection is likely
    gone too)? A search the server cut short, a refusal, a missing schema: the server
    answered, and the loop's connection can go on writing."""
    return isinstance(exc, DirectoryUnavailable) and not isinstance(exc, SearchIncomplete)
