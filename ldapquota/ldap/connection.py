"""Opening one bound LDAP connection: the first reachable server of ``ldap.uri``, TLS
always verified, a StartTLS that did not happen an error, every wait bounded."""

import ssl
from typing import Any, Dict, List, Tuple

import ldap3

from ldapquota.errors import DirectoryUnavailable, PermissionDenied
from ldapquota.ldap.results import LdapLibraryError, bind_error, describe, explain_exception
from ldapquota.settings import LdapConfig

CONNECT_TIMEOUT = 10  # seconds to open a TCP/TLS connection
RECEIVE_TIMEOUT = 60  # seconds to wait for any one answer (a page, a modify)


def connect(config: LdapConfig, receive_timeout: float = RECEIVE_TIMEOUT) -> Tuple[ldap3.Connection, str]:
    """(connection, URI) of the first server that answers and binds. Raises
    DirectoryUnavailable, or PermissionDenied (a refused bind is not retried elsewhere)."""
    failures: List[str] = []
    for uri in config.uris:
        try:
            return _open(config, uri, receive_timeout), uri
        except DirectoryUnavailable as exc:
            failures.append(str(exc))
    raise DirectoryUnavailable("no LDAP server reachable: " + "; ".join(failures))


def connect_pipelined(config: LdapConfig, uri: str, receive_timeout: float = RECEIVE_TIMEOUT) -> ldap3.Connection:
    """A second connection to ``uri`` (the server the store uses), under the same TLS
    rules, whose operations return at once and are answered later (ldap3's ASYNC
    strategy): for keeping many modifies in flight."""
    return _open(config, uri, receive_timeout, ldap3.ASYNC)


def close(connection: ldap3.Connection) -> None:
    if not connection.strategy.sync:
        # ldap3's ASYNC reader thread retries a failed read for ever while a receive
        # timeout is set, so it would spin at 100 % of a core once the socket is closed:
        # without one, it ends there.
        connection.receive_timeout = None
    try:
        connection.unbind()
    except LdapLibraryError:
        pass  # closing a dead connection: nothing left to do


def _tls(config: LdapConfig) -> ldap3.Tls:
    # ldap3's default is CERT_NONE: verification must be asked for explicitly.
    return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=config.ca_file, version=ssl.PROTOCOL_TLS_CLIENT)


def _open(config: LdapConfig, uri: str, receive_timeout: float, strategy: str = ldap3.SYNC) -> ldap3.Connection:
    secure = uri.lower().startswith("ldaps://") or config.start_tls
    server = ldap3.Server(uri, get_info=ldap3.NONE, tls=_tls(config) if secure else None, connect_timeout=CONNECT_TIMEOUT)
    auth: Dict[str, Any]
    if config.bind_dn:
        auth = {"user": config.bind_dn, "password": config.bind_password, "authentication": ldap3.SIMPLE}
    else:
        auth = {"authentication": ldap3.ANONYMOUS}
    connection = ldap3.Connection(
        server,
        auto_bind=ldap3.AUTO_BIND_NONE,
        client_strategy=strategy,
        raise_exceptions=False,
        auto_referrals=False,
        receive_timeout=receive_timeout,
        return_empty_attributes=False,
        **auth,
    )
    try:
        connection.open()
        # start_tls() can return False without raising; never carry on in clear text.
        if config.start_tls and (not connection.start_tls() or not connection.tls_started):
            raise DirectoryUnavailable(f"{uri}: StartTLS did not happen ({describe(connection.result)})")
        if not connection.bind():
            raise bind_error(uri, config.bind_dn, connection.result)
    except LdapLibraryError as exc:
        close(connection)
        raise DirectoryUnavailable(f"{uri}: {explain_exception(exc)}") from None
    except (DirectoryUnavailable, PermissionDenied):
        close(connection)
        raise
    return connection
