"""The LDAP flag store: accounts read with complete paged searches, state written with one
modify per entry (the auxiliary class added in the same modify when missing)."""

import functools
import logging
import re
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type

import ldap3

from ldapquota.entry import ATTR_FREE, ATTR_OVER, ATTR_SYNC_TIME, OBJECT_CLASS, AccountEntry, as_strings
from ldapquota.errors import DirectoryUnavailable, EntryWriteError
from ldapquota.flagstore import FlagStore, Outcome, W
from ldapquota.ldap import connection as ldap_connection
from ldapquota.ldap.results import (
    RC_ASSERTION_FAILED,
    RC_OBJECT_CLASS_VIOLATION,
    RC_TYPE_OR_VALUE_EXISTS,
    RC_UNAVAILABLE_CRITICAL_EXTENSION,
    LdapLibraryError,
    Result,
    assertion_failed,
    check_modify_result,
    check_read_result,
    check_search_result,
    referral_error,
    unavailable,
)
from ldapquota.ldap.syntax import account_filter, encode_filter, generalized_time, parse_generalized_time
from ldapquota.quota import QuotaState
from ldapquota.settings import LdapConfig

if TYPE_CHECKING:
    from ldapquota.ldap.fastread import FastReader

PAGE_SIZE = 1000
MODIFY_TIMESTAMP = "modifyTimestamp"
_PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
# The control is always sent critical: a server that does not know it must refuse the
# modify (unavailableCriticalExtension), never perform it. OpenLDAP implements it under its
# experimental arc (ldap.h LDAP_CONTROL_NOOP), not the draft's 1.3.6.1.4.1.4203.1.10.2.
NOOP_CONTROL_OID = "1.3.6.1.4.1.4203.666.5.2"
# RFC 4528: the modify is made only if the entry matches the filter the control carries,
# atomically, in the server. Sent critical too: a server without it must refuse, not
# write unconditionally (we then fall back, once, and say so).
ASSERTION_CONTROL_OID = "1.3.6.1.1.12"

# ldap.reader: the library that reads accounts (settings.LdapConfig.reader).
LDAP3, PYTHON_LDAP = "ldap3", "python-ldap"
FAST_EXTRA = "pip install 'ldapquota[fast]'"

log = logging.getLogger(__name__)

Changes = Dict[str, List[Tuple[str, List[str]]]]
Control = Tuple[str, bool, Optional[bytes]]  # ldap3's (OID, criticality, BER value)


class LdapStore(FlagStore):
    """One bound connection to the first reachable server of ``ldap.uri``."""

    def __init__(self, config: LdapConfig, address_attribute: str = "mail", *,
                 receive_timeout: float = ldap_connection.RECEIVE_TIMEOUT):
        self.config = config
        self.address_attribute = address_attribute
        self.receive_timeout = receive_timeout
        self._connection: Optional[ldap3.Connection] = None
        self.server: Optional[str] = None
        self.assertions = True  # False once the server refused the Assertion control
        #: The library the accounts are read with: ldap.reader, or ldap3 when python-ldap
        #: cannot be imported or TLS is in use (warned about once; reader_note says why).
        self.reader, self.reader_note = choose_reader(config)
        self._fast: Optional[FastReader] = None

    def connect(self) -> "LdapStore":
        if self._connection is not None:
            return self  # already bound (``with store.connect():`` binds once)
        self._connection, self.server = ldap_connection.connect(self.config, self.receive_timeout)
        return self

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        if self._connection is not None:
            ldap_connection.close(self._connection)
            self._connection = None

    @property
    def connection(self) -> ldap3.Connection:
        if self._connection is None:
            raise DirectoryUnavailable("not connected to LDAP")
        return self._connection

    # ------------------------------------------------------------------ reading

    def search_accounts(self, attributes: Sequence[str]) -> Iterator[AccountEntry]:
        return self.search(attributes, self.config.filter)

    def find_accounts(self, address: str, attributes: Sequence[str]) -> List[AccountEntry]:
        return list(self.search(attributes, account_filter(self.config.filter, self.address_attribute, address)))

    def changed_accounts(self, attributes: Sequence[str], since: float) -> Iterator[Tuple[AccountEntry, Optional[float]]]:
        query = f"(&{self.config.filter}({MODIFY_TIMESTAMP}>={generalized_time(since)}))"
        for entry in self.search(list(attributes) + [MODIFY_TIMESTAMP], query):
            yield entry, parse_generalized_time(entry.first(MODIFY_TIMESTAMP))

    def departed_accounts(self, since: float) -> Iterator[str]:
        query = f"(&(!{self.config.filter})({MODIFY_TIMESTAMP}>={generalized_time(since)}))"
        for entry in self.search(["1.1"], query):
            yield entry.dn

    def account_dns(self) -> Iterator[str]:
        for entry in self.search(["1.1"], self.config.filter):
            yield entry.dn

    def search(self, attributes: Sequence[str], query: str, page_size: int = PAGE_SIZE) -> Iterator[AccountEntry]:
        """Every entry under base_dn matching ``query``, page by page, as a stream.

        Raises SearchIncomplete (or PermissionDenied) as soon as the server signals that
        the answer is not the whole answer, so a caller never mistakes a truncated list
        for the full one. The caller must consume the iterator to the end.

        Read with ldap3 or, with ``ldap.reader: python-ldap``, by :mod:`.fastread` on a
        connection of its own to the same server: the same entries, the same errors.
        """
        if self.reader == PYTHON_LDAP:
            return self._search_fast(attributes, query, page_size)
        return self._search_ldap3(attributes, query, page_size)

    def _search_fast(self, attributes: Sequence[str], query: str, page_size: int) -> Iterator[AccountEntry]:
        if self._connection is None or self.server is None:
            raise DirectoryUnavailable("not connected to LDAP")  # as the ldap3 search says
        if self._fast is None:
            reader = fast_reader()
            assert reader is not None  # self.reader is python-ldap only when it imports
            self._fast = reader(self.config, self.server, self.receive_timeout)
        yield from self._fast.search(self.config.base_dn, query, attributes, page_size)

    def _search_ldap3(self, attributes: Sequence[str], query: str, page_size: int) -> Iterator[AccountEntry]:
        connection = self.connection
        base = self.config.base_dn
        cookie = None
        while True:
            try:
                connection.search(base, query, search_scope=ldap3.SUBTREE, attributes=list(attributes),
                                  paged_size=page_size, paged_cookie=cookie, paged_criticality=True)
            except LdapLibraryError as exc:
                raise unavailable(f"search of {base}", exc) from None
            result: Result = connection.result or {}
            for response in connection.response or ():
                if response.get("type") == "searchResRef":
                    raise referral_error(base, response.get("uri"))
                if response.get("type") == "searchResEntry":
                    yield AccountEntry(response["dn"], response["attributes"])
            check_search_result(result, base, self.server)
            cookie = result.get("controls", {}).get(_PAGED_RESULTS_OID, {}).get("value", {}).get("cookie")
            if not cookie:
                return

    def read_entry(self, dn: str, attributes: Sequence[str]) -> Optional[AccountEntry]:
        connection = self.connection
        try:
            connection.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=list(attributes))
        except LdapLibraryError as exc:
            raise unavailable(f"reading {dn}", exc) from None
        if not check_read_result(connection.result or {}, dn):
            return None
        for response in connection.response or ():
            if response.get("type") == "searchResEntry":
                return AccountEntry(response["dn"], response["attributes"])
        return None

    def modified_at(self, dn: str) -> Optional[float]:
        entry = self.read_entry(dn, [MODIFY_TIMESTAMP])
        return parse_generalized_time(entry.first(MODIFY_TIMESTAMP)) if entry else None

    def missing_schema(self) -> List[str]:
        connection = self.connection
        wanted = [ATTR_OVER, ATTR_FREE, ATTR_SYNC_TIME, OBJECT_CLASS]
        root = self.read_entry("", ["subschemaSubentry"])
        subschema = (root.first("subschemaSubentry") if root else None) or "cn=Subschema"
        try:
            connection.search(subschema, "(objectClass=subschema)", search_scope=ldap3.BASE,
                              attributes=["attributeTypes", "objectClasses"])
        except LdapLibraryError as exc:
            raise unavailable("reading the schema", exc) from None
        definitions = " ".join(
            value
            for response in connection.response or ()
            if response.get("type") == "searchResEntry"
            for values in response["attributes"].values()
            for value in as_strings(values)
        )
        names = {name.lower() for name in re.findall(r"NAME\s+(?:\(\s*)?'([^']+)'", definitions)}
        return [name for name in wanted if name.lower() not in names]

    # ------------------------------------------------------------------ writing

    def write_state(self, dn: str, old: QuotaState, new: QuotaState, has_class: bool, *, noop: bool = False,
                    if_unchanged: bool = False) -> None:
        """``isOverQuota`` is written as the strings TRUE/FALSE; ``quotaFreeBytes`` is
        replaced, or deleted when it should be absent. With ``noop`` the server checks the
        modify (rights, schema) and keeps nothing (No-Op control). With ``if_unchanged``
        the modify carries an Assertion control: the server makes it only if the entry
        still holds ``old``, else WriteSuperseded."""
        attempt = self.first_attempt(dn, old, new, has_class, noop=noop, if_unchanged=if_unchanged)
        if attempt is not None:
            self._modify(attempt)

    def write_states(self, writes: Iterable[W], *, if_unchanged: bool = False) -> Iterator[Outcome[W]]:
        """Many modifies in flight on a connection of their own (:mod:`.pipeline`)."""
        from ldapquota.ldap.pipeline import write_pipelined

        return write_pipelined(self, writes, if_unchanged=if_unchanged)

    def write_sync_time(self, dn: str, epoch: float, *, noop: bool = False) -> None:
        entry = self.read_entry(dn, ["objectClass", ATTR_SYNC_TIME])
        if entry is None:
            raise EntryWriteError(f"ldap.status_dn {dn} does not exist; create it to record quotaSyncTime")
        has_class = any(v.lower() == OBJECT_CLASS.lower() for v in entry.values("objectClass"))
        changes: Changes = {ATTR_SYNC_TIME: [(ldap3.MODIFY_REPLACE, [generalized_time(epoch)])]}
        self._modify(Attempt(dn, changes, not has_class, noop, None, False, False))

    # One modify, as a sequence of attempts: the first, then at most one more for the
    # class (our guess can be wrong both ways: an entry with the class but none of our
    # attributes; an entry whose attributes came with extensibleObject) and one without
    # the Assertion control if the server refuses it. Shared by write_state and the
    # pipelined writes, so both send and judge the same.

    def first_attempt(self, dn: str, old: QuotaState, new: QuotaState, has_class: bool, *, noop: bool = False,
                      if_unchanged: bool = False) -> Optional["Attempt"]:
        """The first modify of a state write; None when nothing is to change."""
        changes: Changes = {}
        if new.over != old.over or noop:
            changes[ATTR_OVER] = [(ldap3.MODIFY_REPLACE, ["TRUE" if new.over else "FALSE"])]
        if new.free_bytes != old.free_bytes or noop:
            changes[ATTR_FREE] = [(ldap3.MODIFY_REPLACE, [] if new.free_bytes is None else [str(new.free_bytes)])]
        if not changes:
            return None
        expect = old if if_unchanged and not noop else None
        return Attempt(dn, changes, not has_class, noop, expect, False, expect is not None and self.assertions)

    def request(self, attempt: "Attempt") -> Tuple[Changes, Optional[List[Control]]]:
        """The modify's changes and controls."""
        request = dict(attempt.changes)
        if attempt.add_class:
            request["objectClass"] = [(ldap3.MODIFY_ADD, [OBJECT_CLASS])]
        controls: List[Control] = [(NOOP_CONTROL_OID, True, None)] if attempt.noop else []
        if attempt.asserted and attempt.expect is not None:
            controls.append((ASSERTION_CONTROL_OID, True, state_assertion(attempt.expect)))
        return request, controls or None

    def next_attempt(self, attempt: "Attempt", result: Result) -> Optional["Attempt"]:
        """The modify to send again after ``result``, or None: ``result`` is the answer."""
        code = result.get("result")
        if attempt.asserted and code == RC_UNAVAILABLE_CRITICAL_EXTENSION:
            if self.assertions:
                self.assertions = False
                log.warning("%s does not support the Assertion control (RFC 4528); writes are made without it, so a "
                            "sync that measured earlier may undo a newer write of the daemon's", self.server)
            return attempt._replace(asserted=False)
        if attempt.class_retried:
            return None
        if code == RC_TYPE_OR_VALUE_EXISTS and attempt.add_class:
            return attempt._replace(add_class=False, class_retried=True)
        if code == RC_OBJECT_CLASS_VIOLATION and not attempt.add_class:
            return attempt._replace(add_class=True, class_retried=True)
        return None

    def settle(self, attempt: "Attempt", result: Result) -> None:
        """Raise what the final answer to a modify means (nothing for success)."""
        if attempt.expect is not None and result.get("result") == RC_ASSERTION_FAILED:
            stored = self.read_entry(attempt.dn, [ATTR_OVER, ATTR_FREE])
            raise assertion_failed(attempt.dn, attempt.expect, stored.quota_state if stored else None)
        check_modify_result(result, attempt.dn, attempt.changes, noop=attempt.noop)

    def _modify(self, attempt: "Attempt") -> None:
        result = self._send(attempt)
        again = self.next_attempt(attempt, result)
        while again is not None:
            attempt = again
            result = self._send(attempt)
            again = self.next_attempt(attempt, result)
        self.settle(attempt, result)

    def _send(self, attempt: "Attempt") -> Result:
        request, controls = self.request(attempt)
        try:
            self.connection.modify(attempt.dn, request, controls=controls)
        except LdapLibraryError as exc:
            raise unavailable(f"writing {attempt.dn}", exc) from None
        return self.connection.result or {}


def choose_reader(config: LdapConfig) -> Tuple[str, Optional[str]]:
    """(ldap.reader to use, why it is not the one configured)."""
    if config.reader != PYTHON_LDAP:
        return LDAP3, None
    if config.start_tls or any(uri.lower().startswith("ldaps://") for uri in config.uris):
        _warn_once(TLS_NOTE)
        return LDAP3, TLS_NOTE
    if fast_reader() is None:
        return LDAP3, f"python-ldap cannot be imported (install it: {FAST_EXTRA})"
    return PYTHON_LDAP, None


#: Why python-ldap never reads over TLS: libldap (2.5, GnuTLS, tried here) bounds neither
#: the TLS handshake in time nor a read stalled within a TLS record, and a hung call into C
#: cannot be interrupted, not even by SIGTERM. Every wait must be bounded (contract §10).
TLS_NOTE = ("python-ldap is not used over TLS (ldaps:// or start_tls), where libldap's handshake has no time "
            "limit: accounts are read with ldap3")


@functools.cache  # once per process and text
def _warn_once(text: str) -> None:
    log.warning("ldap.reader is python-ldap, but %s", text)


@functools.cache  # once per process: one warning, one import
def fast_reader() -> Optional[Type["FastReader"]]:
    """The python-ldap reader, or None when python-ldap cannot be imported."""
    try:
        from ldapquota.ldap.fastread import FastReader
    except ImportError as exc:
        if exc.name not in ("ldap", "_ldap") and not (exc.name or "").startswith("ldap."):
            raise  # not python-ldap missing: a bug to see
        log.warning("ldap.reader is python-ldap, but python-ldap cannot be imported (%s): accounts are read with "
                    "ldap3, several times slower at scale; install it with %s", exc, FAST_EXTRA)
        return None
    return FastReader


class Attempt(NamedTuple):
    """One modify of an entry's state (or of the status entry's sync time)."""

    dn: str
    changes: Changes
    add_class: bool  # objectClass ldapQuotaStatus added in the same modify
    noop: bool  # the No-Op control: checked by the server, kept nowhere
    expect: Optional[QuotaState]  # the state the entry must still hold (if_unchanged)
    class_retried: bool  # the class guess was corrected once already
    asserted: bool  # the Assertion control goes with it


@functools.lru_cache(maxsize=4096)  # BER-encoding a filter costs more than the rest of a write
def state_assertion(state: QuotaState) -> bytes:
    """The Assertion control's value: the entry still holds ``state``. An absent
    isOverQuota reads as FALSE, so "not TRUE" covers both; an absent quotaFreeBytes must
    still be absent."""
    over = f"({ATTR_OVER}=TRUE)" if state.over else f"(!({ATTR_OVER}=TRUE))"
    free = f"(!({ATTR_FREE}=*))" if state.free_bytes is None else f"({ATTR_FREE}={state.free_bytes})"
    return encode_filter(f"(&{over}{free})")
