"""The LDAP edge: connecting, reading accounts, writing quota state. The only ldap3 user.

Every ldap3 exception and every failed LDAP result is translated here into the errors of
:mod:`ldapquota.errors`, so the rest of the program reasons in our terms:

* cannot connect, TLS failure, server gone mid-run  → DirectoryUnavailable (exit 69)
* a search that stops early (size/time/admin limit, referral) → SearchIncomplete (exit 69)
* bind refused, insufficient access                → PermissionDenied (exit 77)
* our attributes or class unknown to the server    → SchemaMissing (exit 78)
* one entry cannot be written (vanished, bad data) → EntryWriteError (counted, run goes on)
"""

import re
import ssl
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.core import results as ldap_results
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from ldapquota.config import LdapConfig
from ldapquota.errors import (
    DirectoryUnavailable,
    PermissionDenied,
    SchemaMissing,
    SearchIncomplete,
)
from ldapquota.paths import attribute_values
from ldapquota.quota import QuotaState

OBJECT_CLASS = "ldapQuotaStatus"
ATTR_OVER = "isOverQuota"
ATTR_FREE = "quotaFreeBytes"
ATTR_SYNC_TIME = "quotaSyncTime"
STATE_ATTRIBUTES = (ATTR_OVER, ATTR_FREE)
SCHEMA_FILE = "schema/ldapquota.ldif"

CONNECT_TIMEOUT = 10  # seconds to open a TCP/TLS connection
RECEIVE_TIMEOUT = 60  # seconds to wait for any one answer (a page, a modify)
PAGE_SIZE = 1000

# LDAP result codes we act on (RFC 4511).
RC_SUCCESS = 0
RC_TIME_LIMIT = 3
RC_SIZE_LIMIT = 4
RC_REFERRAL = 10
RC_ADMIN_LIMIT = 11
RC_UNAVAILABLE_CRITICAL_EXTENSION = 12
RC_UNDEFINED_TYPE = 17
RC_TYPE_OR_VALUE_EXISTS = 20
RC_INVALID_SYNTAX = 21
RC_NO_SUCH_OBJECT = 32
RC_INVALID_CREDENTIALS = 49
RC_INSUFFICIENT_ACCESS = 50
RC_BUSY = 51
RC_UNAVAILABLE = 52
RC_UNWILLING = 53
RC_OBJECT_CLASS_VIOLATION = 65
# OpenLDAP's No-Op control: the server runs a modify through its ACL and schema checks,
# keeps nothing and answers "would have succeeded". slapd honours it without listing it
# in supportedControl, so support is found out by trying.
RC_NO_OPERATION = 16654

_INCOMPLETE = {
    RC_TIME_LIMIT: "the server's time limit",
    RC_SIZE_LIMIT: "the server's size limit",
    RC_ADMIN_LIMIT: "an administrative limit",
    RC_REFERRAL: "a referral",
}
_SERVER_TROUBLE = (RC_BUSY, RC_UNAVAILABLE, RC_UNWILLING)
_PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
# The control is always sent critical: a server that does not know it must refuse the
# modify (unavailableCriticalExtension), never perform it. OpenLDAP implements it under its
# experimental arc (ldap.h LDAP_CONTROL_NOOP), not the draft's 1.3.6.1.4.1.4203.1.10.2.
NOOP_CONTROL_OID = "1.3.6.1.4.1.4203.666.5.2"


# ldap3 decodes result codes through this table and raises KeyError on one it lacks.
ldap_results.RESULT_CODES.setdefault(RC_NO_OPERATION, "noOperation")


class EntryWriteError(Exception):
    """One entry could not be written; the others can be."""


class NoOpUnsupported(EntryWriteError):
    """The server refused the No-Op control (a write-rights check is then impossible)."""


class AccountEntry:
    """An account as read from LDAP: its DN and attributes (looked up case-insensitively).

    The attributes are ldap3's own case-insensitive dict, kept as is: copying them for
    every entry of a 100,000-account sync costs more than everything else we do with them.
    """

    __slots__ = ("dn", "attributes")

    def __init__(self, dn: str, attributes: Mapping[str, Sequence[object]]):
        self.dn = dn
        self.attributes = attributes

    def __repr__(self) -> str:
        return f"AccountEntry({self.dn!r}, {dict(self.attributes)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccountEntry) and (self.dn, dict(self.attributes)) == (other.dn, dict(other.attributes))

    def values(self, name: str) -> List[str]:
        found = attribute_values(self.attributes, name)
        if not found:
            return []
        if all(type(value) is str for value in found):
            return found  # type: ignore[return-value]
        return _as_strings(found)

    def first(self, name: str) -> Optional[str]:
        values = self.values(name)
        return values[0] if values else None

    @property
    def has_quota_class(self) -> bool:
        """Does the entry already hold our class? Any of our attributes implies it."""
        return bool(self.values(ATTR_OVER) or self.values(ATTR_FREE)) or any(
            value.lower() == OBJECT_CLASS.lower() for value in self.values("objectClass")
        )

    @property
    def quota_state(self) -> QuotaState:
        """The state as stored; an absent isOverQuota reads as FALSE, as every MTA reads it."""
        over = (self.first(ATTR_OVER) or "").upper() == "TRUE"
        free = self.first(ATTR_FREE)
        return QuotaState(over, int(free) if free is not None and free.lstrip("-").isdigit() else None)


def escape_value(value: str) -> str:
    """RFC 4515 escaping of a value placed in a filter (``*``, ``(``, ``)``, ``\\``, NUL)."""
    return escape_filter_chars(value)


def account_filter(base_filter: str, attribute: Optional[str] = None, value: Optional[str] = None) -> str:
    """The configured filter, narrowed to one address when asked."""
    if attribute is None:
        return base_filter
    return f"(&{base_filter}({attribute}={escape_value(value or '')}))"


def check_filter_syntax(text: str) -> None:
    """Raise ValueError unless ``text`` is an RFC 4515 filter ldap3 can send."""
    try:
        parse_filter(text, None, auto_escape=False, auto_encode=False, validator=None, check_names=False)
    except ldap_exc.LDAPException as exc:
        raise ValueError(f"{text!r} is not a valid LDAP filter: {exc}") from None


def check_dn_syntax(text: str) -> None:
    """Raise ValueError unless ``text`` is an RFC 4514 DN."""
    try:
        parse_dn(text)
    except ldap_exc.LDAPException as exc:
        raise ValueError(f"{text!r} is not a valid DN: {exc}") from None


def generalized_time(epoch: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch))


class Directory:
    """One bound connection to the first reachable server of ``ldap.uri``."""

    def __init__(self, config: LdapConfig, *, receive_timeout: float = RECEIVE_TIMEOUT):
        self.config = config
        self.receive_timeout = receive_timeout
        self._connection: Optional[ldap3.Connection] = None
        self.server_uri: Optional[str] = None

    # ------------------------------------------------------------------ connection

    def connect(self) -> "Directory":
        """Connect and bind, trying each URI in order. Raises DirectoryUnavailable or
        PermissionDenied; a refused bind is not retried on the next server."""
        failures = []
        for uri in self.config.uris:
            try:
                self._connection = self._open(uri)
                self.server_uri = uri
                return self
            except DirectoryUnavailable as exc:
                failures.append(str(exc))
        raise DirectoryUnavailable("no LDAP server reachable: " + "; ".join(failures))

    def __enter__(self) -> "Directory":
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.unbind()
            except ldap_exc.LDAPException:
                pass  # closing a dead connection: nothing left to do
            self._connection = None

    @property
    def connection(self) -> ldap3.Connection:
        if self._connection is None:
            raise DirectoryUnavailable("not connected to LDAP")
        return self._connection

    def _tls(self) -> ldap3.Tls:
        # ldap3's default is CERT_NONE: verification must be asked for explicitly.
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=self.config.ca_file,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )

    def _open(self, uri: str) -> ldap3.Connection:
        secure = uri.lower().startswith("ldaps://") or self.config.start_tls
        server = ldap3.Server(
            uri,
            get_info=ldap3.NONE,
            tls=self._tls() if secure else None,
            connect_timeout=CONNECT_TIMEOUT,
        )
        if self.config.bind_dn:
            auth = {"user": self.config.bind_dn, "password": self.config.bind_password, "authentication": ldap3.SIMPLE}
        else:
            auth = {"authentication": ldap3.ANONYMOUS}
        connection = ldap3.Connection(
            server,
            auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False,
            auto_referrals=False,
            receive_timeout=self.receive_timeout,
            return_empty_attributes=False,
            **auth,
        )
        try:
            connection.open()
            if self.config.start_tls:
                # start_tls() can return False without raising; never carry on in clear text.
                if not connection.start_tls() or not connection.tls_started:
                    raise DirectoryUnavailable(f"{uri}: StartTLS did not happen ({_describe(connection.result)})")
            if not connection.bind():
                result = connection.result or {}
                if result.get("result") == RC_INVALID_CREDENTIALS:
                    raise PermissionDenied(f"{uri}: bind as {self.config.bind_dn} refused: invalid credentials")
                if result.get("result") == RC_INSUFFICIENT_ACCESS:
                    raise PermissionDenied(f"{uri}: bind as {self.config.bind_dn} refused: {_describe(result)}")
                raise DirectoryUnavailable(f"{uri}: bind failed: {_describe(result)}")
        except ldap_exc.LDAPException as exc:
            _safe_unbind(connection)
            raise DirectoryUnavailable(f"{uri}: {_explain_exception(exc)}") from None
        except (DirectoryUnavailable, PermissionDenied):
            _safe_unbind(connection)
            raise
        return connection

    # ------------------------------------------------------------------ reading

    def search_accounts(
        self, attributes: Sequence[str], search_filter: Optional[str] = None, page_size: int = PAGE_SIZE
    ) -> Iterator[AccountEntry]:
        """Every entry under base_dn matching the filter, page by page, as a stream.

        Raises SearchIncomplete (or PermissionDenied) as soon as the server signals that
        the answer is not the whole answer, so a caller never mistakes a truncated list
        for the full one. The caller must consume the iterator to the end.
        """
        connection = self.connection
        query = search_filter or self.config.filter
        cookie = None
        while True:
            try:
                connection.search(
                    self.config.base_dn,
                    query,
                    search_scope=ldap3.SUBTREE,
                    attributes=list(attributes),
                    paged_size=page_size,
                    paged_cookie=cookie,
                    paged_criticality=True,
                )
            except ldap_exc.LDAPException as exc:
                raise DirectoryUnavailable(f"search of {self.config.base_dn} failed: {_explain_exception(exc)}") from None
            result = connection.result or {}
            code = result.get("result")
            for response in connection.response or ():
                if response.get("type") == "searchResRef":
                    raise SearchIncomplete(
                        f"search of {self.config.base_dn} returned a referral to {response.get('uri')}; "
                        "accounts there cannot be seen, so nothing is written"
                    )
                if response.get("type") != "searchResEntry":
                    continue
                yield AccountEntry(response["dn"], response["attributes"])
            self._check_search_result(code, result)
            cookie = result.get("controls", {}).get(_PAGED_RESULTS_OID, {}).get("value", {}).get("cookie")
            if not cookie:
                return

    def _check_search_result(self, code: Optional[int], result: dict) -> None:
        if code == RC_SUCCESS:
            return
        base = self.config.base_dn
        if code in _INCOMPLETE:
            raise SearchIncomplete(
                f"search of {base} stopped early because of {_INCOMPLETE[code]} ({_describe(result)}); "
                "nothing is written. Give the bind DN unlimited size/time limits (OpenLDAP: "
                "limits dn.exact=\"<bind dn>\" size=unlimited time=unlimited)"
            )
        if code == RC_INSUFFICIENT_ACCESS:
            raise PermissionDenied(f"search of {base} refused: {_describe(result)}")
        if code == RC_NO_SUCH_OBJECT:
            raise SearchIncomplete(f"ldap.base_dn {base} does not exist on {self.server_uri} (or the bind DN may not see it)")
        raise SearchIncomplete(f"search of {base} failed: {_describe(result)}")

    def find_accounts(self, address_attribute: str, address: str, attributes: Sequence[str]) -> List[AccountEntry]:
        """Accounts whose address attribute equals ``address`` (escaped), within the filter."""
        query = account_filter(self.config.filter, address_attribute, address)
        return list(self.search_accounts(attributes, query))

    def read_entry(self, dn: str, attributes: Sequence[str]) -> Optional[AccountEntry]:
        """One entry by DN, or None when it does not exist."""
        connection = self.connection
        try:
            connection.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=list(attributes))
        except ldap_exc.LDAPException as exc:
            raise DirectoryUnavailable(f"reading {dn} failed: {_explain_exception(exc)}") from None
        result = connection.result or {}
        if result.get("result") == RC_NO_SUCH_OBJECT:
            return None
        if result.get("result") == RC_INSUFFICIENT_ACCESS:
            raise PermissionDenied(f"reading {dn} refused: {_describe(result)}")
        if result.get("result") != RC_SUCCESS:
            raise DirectoryUnavailable(f"reading {dn} failed: {_describe(result)}")
        for response in connection.response or ():
            if response.get("type") == "searchResEntry":
                return AccountEntry(response["dn"], response["attributes"])
        return None

    def missing_schema(self) -> List[str]:
        """Which of our attribute types and object class the server does not know."""
        connection = self.connection
        wanted = [ATTR_OVER, ATTR_FREE, ATTR_SYNC_TIME, OBJECT_CLASS]
        root = self.read_entry("", ["subschemaSubentry"])
        subschema = (root.first("subschemaSubentry") if root else None) or "cn=Subschema"
        try:
            connection.search(
                subschema, "(objectClass=subschema)", search_scope=ldap3.BASE, attributes=["attributeTypes", "objectClasses"]
            )
        except ldap_exc.LDAPException as exc:
            raise DirectoryUnavailable(f"reading the schema failed: {_explain_exception(exc)}") from None
        definitions = " ".join(
            value
            for response in connection.response or ()
            if response.get("type") == "searchResEntry"
            for values in response["attributes"].values()
            for value in _as_strings(values)
        )
        names = {name.lower() for name in re.findall(r"NAME\s+(?:\(\s*)?'([^']+)'", definitions)}
        return [name for name in wanted if name.lower() not in names]

    # ------------------------------------------------------------------ writing

    def write_state(self, dn: str, old: QuotaState, new: QuotaState, has_class: bool, *, noop: bool = False) -> None:
        """One modify setting what changed between ``old`` and ``new``.

        ``isOverQuota`` is written as the strings TRUE/FALSE; ``quotaFreeBytes`` is replaced,
        or deleted when it should be absent. The auxiliary class is added in the same
        modify when the entry lacks it. With ``noop`` the server checks the modify
        (rights, schema) and keeps nothing (No-Op control).
        Raises EntryWriteError for this entry, PermissionDenied/SchemaMissing/
        DirectoryUnavailable for failures that concern every entry.
        """
        changes: Dict[str, List[Tuple[str, List[str]]]] = {}
        if new.over != old.over or noop:
            changes[ATTR_OVER] = [(ldap3.MODIFY_REPLACE, ["TRUE" if new.over else "FALSE"])]
        if new.free_bytes != old.free_bytes or noop:
            changes[ATTR_FREE] = [(ldap3.MODIFY_REPLACE, [] if new.free_bytes is None else [str(new.free_bytes)])]
        if not changes:
            return
        self._modify(dn, changes, has_class, noop=noop)

    def write_sync_time(self, dn: str, epoch: float, *, noop: bool = False) -> None:
        """``quotaSyncTime`` on the status entry. Raises EntryWriteError if it does not exist."""
        entry = self.read_entry(dn, ["objectClass", ATTR_SYNC_TIME])
        if entry is None:
            raise EntryWriteError(f"ldap.status_dn {dn} does not exist; create it to record quotaSyncTime")
        has_class = any(v.lower() == OBJECT_CLASS.lower() for v in entry.values("objectClass"))
        self._modify(dn, {ATTR_SYNC_TIME: [(ldap3.MODIFY_REPLACE, [generalized_time(epoch)])]}, has_class, noop=noop)

    def _modify(self, dn: str, changes: Dict[str, List[Tuple[str, List[str]]]], has_class: bool, *, noop: bool = False) -> None:
        code, result = self._send_modify(dn, changes, add_class=not has_class, noop=noop)
        # Our guess about the class can be wrong both ways (an entry with the class but none
        # of our attributes; an entry whose attributes came with extensibleObject).
        if code == RC_TYPE_OR_VALUE_EXISTS and not has_class:
            code, result = self._send_modify(dn, changes, add_class=False, noop=noop)
        elif code == RC_OBJECT_CLASS_VIOLATION and has_class:
            code, result = self._send_modify(dn, changes, add_class=True, noop=noop)
        if code == RC_SUCCESS or (noop and code == RC_NO_OPERATION):
            return
        if noop and code == RC_UNAVAILABLE_CRITICAL_EXTENSION:
            raise NoOpUnsupported(f"the server does not support the No-Op control ({_describe(result)})")
        described = _describe(result)
        if code == RC_INSUFFICIENT_ACCESS:
            raise PermissionDenied(f"writing {dn} refused: {described}; the bind DN needs write access to "
                                   f"{', '.join(changes)} and objectClass")
        if code == RC_UNDEFINED_TYPE or (code in (RC_INVALID_SYNTAX, RC_OBJECT_CLASS_VIOLATION) and OBJECT_CLASS.lower() in described.lower()):
            raise SchemaMissing(f"the server does not know ldapquota's schema ({described}); load {SCHEMA_FILE}")
        if code in _SERVER_TROUBLE:
            raise DirectoryUnavailable(f"writing {dn} failed: {described}")
        raise EntryWriteError(f"writing {dn} failed: {described}")

    def _send_modify(self, dn: str, changes: Dict[str, List[Tuple[str, List[str]]]], *, add_class: bool, noop: bool) -> Tuple[Optional[int], dict]:
        request = dict(changes)
        if add_class:
            request["objectClass"] = [(ldap3.MODIFY_ADD, [OBJECT_CLASS])]
        controls = [(NOOP_CONTROL_OID, True, None)] if noop else None
        connection = self.connection
        try:
            connection.modify(dn, request, controls=controls)
        except ldap_exc.LDAPException as exc:
            raise DirectoryUnavailable(f"writing {dn} failed: {_explain_exception(exc)}") from None
        result = connection.result or {}
        return result.get("result"), result


def _as_strings(values: object) -> List[str]:
    if isinstance(values, (list, tuple)):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    if isinstance(values, bytes):
        return [values.decode("utf-8", "replace")]
    return [str(values)]


def _describe(result: Optional[dict]) -> str:
    if not result:
        return "no answer"
    text = f"{result.get('description', 'error')} ({result.get('result')})"
    if result.get("message"):
        text += f": {result['message']}"
    return text


def _explain_exception(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, ldap_exc.LDAPStartTLSError):
        return f"StartTLS failed: {text}"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate not trusted (set ldap.ca_file to the CA that signed it): {text}"
    if isinstance(exc, ldap_exc.LDAPSocketOpenError):
        return f"cannot connect: {text}"
    if isinstance(exc, (ldap_exc.LDAPSocketReceiveError, ldap_exc.LDAPSessionTerminatedByServerError)):
        return f"connection lost or timed out: {text}"
    return f"{type(exc).__name__}: {text}"


def _safe_unbind(connection: ldap3.Connection) -> None:
    try:
        connection.unbind()
    except ldap_exc.LDAPException:
        pass
