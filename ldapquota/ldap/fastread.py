"""Reading accounts with python-ldap (``ldap.reader: python-ldap``, the extra
``ldapquota[fast]``): OpenLDAP's libldap decodes the answers in C, where ldap3 decodes BER
in pure Python, which is most of a sync's time at a million accounts (a bare paged search
of a million entries: ldap3 32.4 s, python-ldap 10.0 s, OpenLDAP's ldapsearch 7.55 s).

Only the paged subtree searches of :meth:`LdapStore.search` come here, on a connection of
their own to the server the store's ldap3 connection bound to, opened by the first search
and closed with the store: the same bind, referrals never chased, the connection and every
wait bounded in time (also a read stalled in the middle of a message). Never over TLS:
libldap's TLS handshake has no time limit (store.TLS_NOTE), so with ldaps:// or start_tls
ldap3 reads. Writes stay on ldap3. What goes wrong is judged by :mod:`.results`, as
ldap3's failures are.
"""

import os
import socket
import struct
from typing import Any, Dict, Iterator, List, Optional, Sequence

import ldap
from ldap.controls.libldap import SimplePagedResultsControl
from ldap.ldapobject import LDAPObject

from ldapquota.entry import AccountEntry
from ldapquota.errors import DirectoryUnavailable
from ldapquota.ldap.connection import CONNECT_TIMEOUT
from ldapquota.ldap.results import python_ldap_bind_error, python_ldap_result, python_ldap_search_error, referral_error
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
    """A bound python-ldap connection to ``uri`` (never TLS: see store.TLS_NOTE), every
    wait bounded. Raises DirectoryUnavailable, or PermissionDenied when the bind is refused."""
    if uri.lower().startswith("ldaps://") or config.start_tls:
        raise DirectoryUnavailable(f"{uri}: python-ldap does not read over TLS here (ldap3 does)")
    connection = ldap.initialize(uri)  # no I/O yet: the first operation connects
    connection.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
    connection.set_option(ldap.OPT_REFERRALS, 0)  # a referral is an error here, never followed
    connection.set_option(ldap.OPT_DEREF, ldap.DEREF_ALWAYS)  # as ldap3 searches (libldap's default: never)
    # No limits from ldap.conf, ~/.ldaprc or $LDAPTIMELIMIT: ldap3 asks for none either.
    connection.set_option(ldap.OPT_TIMELIMIT, 0)
    connection.set_option(ldap.OPT_SIZELIMIT, 0)
    connection.set_option(ldap.OPT_NETWORK_TIMEOUT, CONNECT_TIMEOUT)
    connection.set_option(ldap.OPT_TIMEOUT, receive_timeout)
    connection.timeout = receive_timeout  # what python-ldap's synchronous calls wait for
    try:
        try:
            connection.simple_bind_s(config.bind_dn or "", config.bind_password or "")
        except ldap.LDAPError as exc:
            raise python_ldap_bind_error(exc, uri, config.bind_dn) from None
        _bound_socket_waits(connection, receive_timeout)
    except Exception:
        try:
            connection.unbind_s()
        except ldap.LDAPError:
            pass
        raise
    return connection


def _bound_socket_waits(connection: LDAPObject, seconds: float) -> None:
    """Bound every read and write of the connection's socket. The result timeout bounds
    only the wait between whole messages: libldap's socket blocks, so a server or network
    stalling in the middle of a message (a page spans many TCP segments) would block the
    read for ever, in C, past SIGTERM. With SO_RCVTIMEO the read fails instead, libldap
    says TIMEOUT or SERVER_DOWN, and the search is an error (DirectoryUnavailable)."""
    descriptor = connection.get_option(ldap.OPT_DESC)
    if not isinstance(descriptor, int) or descriptor < 0:
        raise DirectoryUnavailable("python-ldap connection without a socket after the bind")
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    # A second socket object on a duplicate descriptor: the options are the socket's,
    # and closing the duplicate leaves libldap's descriptor open.
    with socket.socket(fileno=os.dup(descriptor)) as view:
        view.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        view.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
