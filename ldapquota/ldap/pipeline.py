"""Many modifies in flight: the cold sync's thousands of writes without a round trip each.

A connection of its own (ldap3's ASYNC strategy: an operation returns its message id at
once, a thread reads the answers) keeps up to :data:`IN_FLIGHT` modifies outstanding.
Each write is the same modify :meth:`LdapStore.write_state` sends (class guess, the
Assertion control), and each answer is judged the same way: a second attempt, when one
is needed, is sent and awaited on its own (rare), and the result is translated by
:mod:`.results` exactly as for a single write. Outcomes come in the order the writes
were given. A handful of writes, or a server that refuses a second connection, are
written one by one on the store's own connection.
"""

import logging
from collections import deque
from typing import TYPE_CHECKING, Deque, Iterable, Iterator, List, Optional, Tuple

import ldap3

from ldapquota.errors import DirectoryUnavailable, EntryWriteError, WriteSuperseded
from ldapquota.flagstore import FlagStore, Outcome, W
from ldapquota.ldap import connection as ldap_connection
from ldapquota.ldap.results import LdapLibraryError, Result, unavailable

if TYPE_CHECKING:
    from ldapquota.ldap.store import Attempt, LdapStore

log = logging.getLogger(__name__)

#: Modifies outstanding at once. Past a few dozen the server is the limit, not the
#: round trips (benchmarks/sync_bench.py measures the rate against one at a time).
IN_FLIGHT = 64
#: Fewer writes than this are not worth a second connection.
PIPELINE_MIN = 16


def write_pipelined(store: "LdapStore", writes: Iterable[W], *, if_unchanged: bool) -> Iterator[Outcome[W]]:
    source = iter(writes)
    first: List[W] = []
    try:
        for write in source:
            first.append(write)
            if len(first) >= PIPELINE_MIN:
                break
    except Exception:  # re-raised once those read before are written, as in the pipeline
        yield from FlagStore.write_states(store, first, if_unchanged=if_unchanged)
        raise
    if len(first) < PIPELINE_MIN:
        yield from FlagStore.write_states(store, first, if_unchanged=if_unchanged)
        return
    try:
        connection = ldap_connection.connect_pipelined(store.config, store.server or store.config.uris[0],
                                                       store.receive_timeout)
    except DirectoryUnavailable as exc:
        log.warning("cannot open a second connection for pipelined writes (%s); writing one at a time", exc)
        yield from FlagStore.write_states(store, _chain(first, source), if_unchanged=if_unchanged)
        return
    try:
        yield from _Pipeline(store, connection).run(_chain(first, source), if_unchanged)
    finally:
        ldap_connection.close(connection)


def _chain(first: List[W], rest: Iterator[W]) -> Iterator[W]:
    yield from first
    yield from rest


class _Pipeline:
    def __init__(self, store: "LdapStore", connection: ldap3.Connection):
        self.store = store
        self.connection = connection

    def run(self, writes: Iterator[W], if_unchanged: bool) -> Iterator[Outcome[W]]:
        """Keep IN_FLIGHT outstanding; yield the oldest's outcome as it comes. A failure
        reading ``writes`` (the daemon stopping) is raised after the writes in flight."""
        window: Deque[Tuple[W, Optional[Attempt], Optional[int]]] = deque()
        stopped: Optional[BaseException] = None
        more = True
        while True:
            while more and len(window) < IN_FLIGHT:
                try:
                    write = next(writes)
                except StopIteration:
                    more = False
                    break
                except Exception as exc:  # re-raised once the writes in flight are answered
                    stopped, more = exc, False
                    break
                attempt = self.store.first_attempt(write.dn, write.old, write.new, write.has_class,
                                                   if_unchanged=if_unchanged)
                window.append((write, attempt, None if attempt is None else self._send(attempt)))
            if not window:
                break
            write, attempt, message_id = window.popleft()
            if attempt is None or message_id is None:
                yield write, None
                continue
            yield write, self._outcome(attempt, self._answer(attempt, message_id))
        if stopped is not None:
            raise stopped

    def _outcome(self, attempt: "Attempt", result: Result) -> Optional[Exception]:
        store = self.store
        again = store.next_attempt(attempt, result)
        while again is not None:
            attempt = again
            result = self._answer(attempt, self._send(attempt))
            again = store.next_attempt(attempt, result)
        try:
            store.settle(attempt, result)
        except (EntryWriteError, WriteSuperseded) as exc:
            return exc
        return None

    def _send(self, attempt: "Attempt") -> int:
        request, controls = self.store.request(attempt)
        try:
            return int(self.connection.modify(attempt.dn, request, controls=controls))
        except LdapLibraryError as exc:
            raise unavailable(f"writing {attempt.dn}", exc) from None

    def _answer(self, attempt: "Attempt", message_id: int) -> Result:
        try:
            _, result = self.connection.get_response(message_id, timeout=self.store.receive_timeout)
        except LdapLibraryError as exc:
            raise unavailable(f"writing {attempt.dn}", exc) from None
        return result or {}
