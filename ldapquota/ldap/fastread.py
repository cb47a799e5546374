"""Reading accounts with python-ldap (``ldap.reader: python-ldap``, the extra
``ldapquota[fast]``): OpenLDAP's libldap decodes the answers in C, where ldap3 decodes BER
in pure Python, which is most of a sync's time at a million accounts (a bare paged search
of a million entries: ldap3 32.4 s, python-ldap 10.0 s, OpenLDAP's ldapsearch 7.55 s).

Only the paged subtree searches of :meth:`LdapStore.search` come here, on a connection of
their own to the server the store's ldap3 connection bound to, opened by the first search
and closed with the store. Its rules are those of :mod:`.connection`: TLS always verified
(certificate and host name), a StartTLS that did not happen an error, the connection and
every answer bounded in time, the same bind, referrals never chased. Writes stay on ldap3.
What goes wrong is judged by :mod:`.results`, as ldap3's failures are.
"""

import ssl
from typing import Any, Dict, Iterator, List, Optional, Sequence

import ldap
from ldap.controls.libldap import SimplePagedResultsControl
from ldap.ldapobject import LDAPObject

from ldapquota.entry import AccountEntry
from ldapquota.ldap.connection import CONNECT_TIMEOUT
from ldapquota.ldap.results import (
    python_ldap_bind_error,
    python_ldap_result,
    python_ldap_search_error,
    python_ldap_start_tls_error,
    referral_error,
)
from ldapquota.settings import LdapConfig

_PAGED = SimplePagedResultsControl.controlType
# Response controls decoded by libldap (C), not by python-ldap's pyasn1 classes.
_RESPONSE_CONTROLS = {_PAGED: SimplePagedResultsControl}
_decode = bytes.decode  # UTF-8, strict


class FastReader:
    """Paged subtree searches on one python-ldap connection to ``uri``."""

    def __init__(self, config: LdapConfig, uri: str, receive_timeout: float):
        self.config = config
        self.uri = uri
        self.receive_timeout = receive_timeout
        self._connection: Optional[LDAPObject] = None

    def search(self, base: str, query: str, attributes: Sequence[str], page_size: int) -> Iterator[AccountEntry]:
        """Every entry under ``base`` matching ``query``, page by page, as
        :meth:`LdapStore.search` gives them (the same entries, the same errors)."""
        if self._connection is None:
            self._connection = connect(self.config, self.uri, self.receive_timeout)
        connection = self._connection
        page = SimplePagedResultsControl(True, size=page_size, cookie=b"")  # critical, as ldap3's
        wanted = list(attributes)
        while True:
            try:
                msgid = connection.search_ext(base, ldap.SCOPE_SUBTREE, query, wanted, serverctrls=[page])
                # One page at a time (all=1): a page is one call into C, and no more than
                # a page is ever held.
                _, data, _, controls = connection.result3(msgid, all=1, timeout=self.receive_timeout,
                                                          resp_ctrl_classes=_RESPONSE_CONTROLS)
            except ldap.LDAPError as exc:
                if python_ldap_result(exc)["result"] < 0:
                    self.close()  # lost or timed out: the next search opens a new connection
                raise python_ldap_search_error(exc, base, self.uri) from None
            for dn, found in data:
                if dn is None:  # a search continuation reference (searchResRef)
                    raise referral_error(base, found)
                yield AccountEntry(dn, decoded(found))
            page.cookie = next((control.cookie for control in controls if control.controlType == _PAGED), b"")
            if not page.cookie:
                return

    def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.unbind_s()
            except ldap.LDAPError:
                pass  # closing a dead connection: nothing left to do


def decoded(attributes: Dict[str, List[bytes]]) -> Dict[str, List[Any]]:
    """The values as ldap3 gives them without a schema: text where they are UTF-8 (all of
    them, in practice), bytes where not."""
    try:
        return {name: list(map(_decode, values)) for name, values in attributes.items()}
    except UnicodeDecodeError:
        return {name: [_text_or_bytes(value) for value in values] for name, values in attributes.items()}


def _text_or_bytes(value: bytes) -> Any:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def connect(config: LdapConfig, uri: str, receive_timeout: float) -> LDAPObject:
    """A bound python-ldap connection to ``uri`` under :mod:`.connection`'s rules. Raises
    DirectoryUnavailable, or PermissionDenied when the bind is refused."""
    secure = uri.lower().startswith("ldaps://") or config.start_tls
    connection = ldap.initialize(uri)  # no I/O yet: the first operation connects
    connection.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
    connection.set_option(ldap.OPT_REFERRALS, 0)  # a referral is an error here, never followed
    connection.set_option(ldap.OPT_DEREF, ldap.DEREF_ALWAYS)  # as ldap3 searches (libldap's default: never)
    connection.set_option(ldap.OPT_NETWORK_TIMEOUT, CONNECT_TIMEOUT)
    connection.set_option(ldap.OPT_TIMEOUT, receive_timeout)
    connection.timeout = receive_timeout  # what python-ldap's synchronous calls wait for
    if secure:
        _verify_tls(connection, config.ca_file)
    try:
        if config.start_tls:
            try:
                connection.start_tls_s()  # raises when TLS did not start: never clear text
            except ldap.LDAPError as exc:
                raise python_ldap_start_tls_error(exc, uri) from None
        try:
            connection.simple_bind_s(config.bind_dn or "", config.bind_password or "")
        except ldap.LDAPError as exc:
            raise python_ldap_bind_error(exc, uri, config.bind_dn, secure=secure) from None
    except Exception:
        try:
            connection.unbind_s()
        except ldap.LDAPError:
            pass
        raise
    return connection


def _verify_tls(connection: LDAPObject, ca_file: Optional[str]) -> None:
    """The TLS rules of :func:`.connection._tls` in libldap's terms, for this connection
    alone (libldap's defaults are process-wide and may come from ldap.conf)."""
    # DEMAND: no certificate, or one not signed by a trusted CA, ends the handshake; libldap
    # then also checks that it names the host of the URI.
    connection.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    # As ldap3's ssl.PROTOCOL_TLS_CLIENT allows (Python >= 3.10): TLS 1.2 and later.
    connection.set_option(ldap.OPT_X_TLS_PROTOCOL_MIN, ldap.OPT_X_TLS_PROTOCOL_TLS1_2)
    if ca_file:
        connection.set_option(ldap.OPT_X_TLS_CACERTFILE, ca_file)
    else:
        # The system's trust store, the one ldap3 (Python's ssl) uses, rather than
        # whatever TLS_CACERT in ldap.conf says.
        system = ssl.get_default_verify_paths()
        if system.cafile:
            connection.set_option(ldap.OPT_X_TLS_CACERTFILE, system.cafile)
        if system.capath:
            connection.set_option(ldap.OPT_X_TLS_CACERTDIR, system.capath)
    connection.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # a context of its own, with the settings above
