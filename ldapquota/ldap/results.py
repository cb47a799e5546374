"""ldap3's (and python-ldap's) exceptions and LDAP result codes → the errors of
:mod:`ldapquota.errors`.

The one place where that translation happens, so the rest of the program reasons in
our terms, whichever library read the accounts (``ldap.reader``: python-ldap's errors are
turned into the result ldap3 would have given, then judged by the same functions):

* cannot connect, TLS failure, server gone mid-run  → DirectoryUnavailable (exit 69)
* a search that stops early (size/time/admin limit, referral) → SearchIncomplete (exit 69)
* bind refused, insufficient access                → PermissionDenied (exit 77)
* our attributes or class unknown to the server    → SchemaMissing (exit 78)
* one entry cannot be written (vanished, bad data) → EntryWriteError (counted, run goes on)
* a write referred elsewhere (a read-only replica)  → DirectoryUnavailable, naming the provider
* a conditional write whose entry changed meanwhile → WriteSuperseded (skipped, not an error)
"""

from typing import Any, Dict, Iterable, List, Optional

from ldap3.core import exceptions as ldap_exc
from ldap3.core import results as ldap_results

from ldapquota.entry import ATTR_FREE, ATTR_OVER, OBJECT_CLASS, SCHEMA_FILE
from ldapquota.errors import (
    DirectoryUnavailable,
    EntryWriteError,
    NoOpUnsupported,
    PermissionDenied,
    SchemaMissing,
    SearchIncomplete,
    WriteSuperseded,
)
from ldapquota.quota import QuotaState

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
# The Assertion control (RFC 4528): the entry did not match the asserted filter, so the
# modify was not made.
RC_ASSERTION_FAILED = 122
# OpenLDAP's No-Op control: the server runs a modify through its ACL and schema checks,
# keeps nothing and answers "would have succeeded". slapd honours it without listing it
# in supportedControl, so support is found out by trying.
RC_NO_OPERATION = 16654
# libldap's own codes (negative: nothing came from the server), as python-ldap raises them.
RC_CLIENT_SERVER_DOWN = -1
RC_CLIENT_CONNECT_ERROR = -11

# ldap3 decodes result codes through this table and raises KeyError on one it lacks.
ldap_results.RESULT_CODES.setdefault(RC_NO_OPERATION, "noOperation")

Result = Dict[str, Any]

_INCOMPLETE = {
    RC_TIME_LIMIT: "the server's time limit",
    RC_SIZE_LIMIT: "the server's size limit",
    RC_ADMIN_LIMIT: "an administrative limit",
    RC_REFERRAL: "a referral",
}
_SERVER_TROUBLE = (RC_BUSY, RC_UNAVAILABLE, RC_UNWILLING)

#: What ldap3 raises when the connection or the protocol fails.
LdapLibraryError = ldap_exc.LDAPException


def describe(result: Optional[Result]) -> str:
    if not result:
        return "no answer"
    text = f"{result.get('description', 'error')} ({result.get('result')})"
    if result.get("message"):
        text += f": {result['message']}"
    return text


def explain_exception(exc: Exception) -> str:
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


def unavailable(what: str, exc: Exception) -> DirectoryUnavailable:
    """An ldap3 exception while doing ``what``."""
    return DirectoryUnavailable(f"{what} failed: {explain_exception(exc)}")


def bind_error(uri: str, bind_dn: Optional[str], result: Optional[Result]) -> Exception:
    result = result or {}
    if result.get("result") == RC_INVALID_CREDENTIALS:
        return PermissionDenied(f"{uri}: bind as {bind_dn} refused: invalid credentials")
    if result.get("result") == RC_INSUFFICIENT_ACCESS:
        return PermissionDenied(f"{uri}: bind as {bind_dn} refused: {describe(result)}")
    return DirectoryUnavailable(f"{uri}: bind failed: {describe(result)}")


def check_search_result(result: Result, base: str, server: Optional[str]) -> None:
    """Raise unless a search (or one page of it) ended complete."""
    if result.get("result") != RC_SUCCESS:
        raise search_error(result, base, server)


def search_error(result: Result, base: str, server: Optional[str]) -> Exception:
    """What a search (or one page of it) that did not end in success means."""
    code = result.get("result")
    if code in _INCOMPLETE:
        return SearchIncomplete(
            f"search of {base} stopped early because of {_INCOMPLETE[code]} ({describe(result)}); "
            "nothing is written. Give the bind DN unlimited size/time limits (OpenLDAP: "
            "limits dn.exact=\"<bind dn>\" size=unlimited time=unlimited)"
        )
    if code == RC_INSUFFICIENT_ACCESS:
        return PermissionDenied(f"search of {base} refused: {describe(result)}")
    if code == RC_NO_SUCH_OBJECT:
        return SearchIncomplete(f"ldap.base_dn {base} does not exist on {server} (or the bind DN may not see it)")
    return SearchIncomplete(f"search of {base} failed: {describe(result)}")


def referral_error(base: str, uri: object) -> SearchIncomplete:
    return SearchIncomplete(
        f"search of {base} returned a referral to {uri}; accounts there cannot be seen, so nothing is written"
    )


def check_read_result(result: Result, dn: str) -> bool:
    """A base-scope read: True if the entry may be there, False if it does not exist."""
    code = result.get("result")
    if code == RC_NO_SUCH_OBJECT:
        return False
    if code == RC_INSUFFICIENT_ACCESS:
        raise PermissionDenied(f"reading {dn} refused: {describe(result)}")
    if code != RC_SUCCESS:
        raise DirectoryUnavailable(f"reading {dn} failed: {describe(result)}")
    return True


def check_modify_result(result: Result, dn: str, attributes: Iterable[str], *, noop: bool) -> None:
    """Raise the error a failed modify means (nothing for success, or No-Op's "would work")."""
    code = result.get("result")
    if code == RC_SUCCESS or (noop and code == RC_NO_OPERATION):
        return
    if noop and code == RC_UNAVAILABLE_CRITICAL_EXTENSION:
        raise NoOpUnsupported(f"the server does not support the No-Op control ({describe(result)})")
    described = describe(result)
    if code == RC_REFERRAL:
        # A read-only replica (OpenLDAP: olcUpdateRef) refers writes to its provider.
        # Every write would be refused the same way: the run ends here (docs/contract.md §11).
        referrals = [str(uri) for uri in result.get("referrals") or ()]
        where = ", ".join(referrals) if referrals else "its provider"
        raise DirectoryUnavailable(
            f"writing {dn} was refused with a referral to {where}: ldap.uri names a read-only replica; "
            "point ldap.uri at the server that takes writes (the provider); nothing was written there"
        )
    if code == RC_INSUFFICIENT_ACCESS:
        raise PermissionDenied(f"writing {dn} refused: {described}; the bind DN needs write access to "
                               f"{', '.join(attributes)} and objectClass")
    if code == RC_UNDEFINED_TYPE or (
        code in (RC_INVALID_SYNTAX, RC_OBJECT_CLASS_VIOLATION) and OBJECT_CLASS.lower() in described.lower()
    ):
        raise SchemaMissing(f"the server does not know ldapquota's schema ({described}); load {SCHEMA_FILE}")
    if code in _SERVER_TROUBLE:
        raise DirectoryUnavailable(f"writing {dn} failed: {described}")
    raise EntryWriteError(f"writing {dn} failed: {described}")


def assertion_failed(dn: str, expected: QuotaState, stored: Optional[QuotaState]) -> Exception:
    """A modify refused with assertionFailed (122): the entry no longer holds ``expected``
    (what the run read). ``stored`` is what it holds now, read again: if that is still
    ``expected``, the server could not evaluate the assertion (an ACL without read or
    compare on our attributes?) and the write failed -- it is not taken for a newer one."""
    if stored is None:
        return EntryWriteError(f"writing {dn} failed: the entry is gone")
    if stored == expected:
        return EntryWriteError(
            f"writing {dn} failed: the server found its state changed (assertionFailed) although it still holds "
            f"{describe_state(stored)}; the bind DN needs read access to {ATTR_OVER} and {ATTR_FREE}")
    return WriteSuperseded(f"changed in LDAP since this run read it (now {describe_state(stored)}, read as "
                           f"{describe_state(expected)}); the newer value stays")


def describe_state(state: QuotaState) -> str:
    free = "absent" if state.free_bytes is None else str(state.free_bytes)
    return f"{ATTR_OVER}={'TRUE' if state.over else 'FALSE/absent'}, {ATTR_FREE}={free}"


# --------------------------------------------------------------------------- python-ldap
# The reader of ldap.reader: python-ldap (ldapquota/ldap/fastread.py). Its LDAPError
# carries a dict (result, desc, info, matched, ...); a negative result is libldap's own
# (-1 server down, -5 timeout, -11 connect error: nothing came from the server). Judged
# here without importing python-ldap, which may not be installed.


def python_ldap_result(exc: Exception) -> Result:
    """A python-ldap LDAPError as the result ldap3 would have given: the code named as
    ldap3 names it, the server's diagnostic message, the referrals."""
    details: Dict[str, Any] = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    # A timeout raised by python-ldap itself has no dict, only its errnum (-5).
    code = details.get("result", getattr(exc, "errnum", -1))
    message = str(details.get("info") or "")
    referrals: List[str] = []
    if code == RC_REFERRAL and message.startswith("Referral:\n"):
        # python-ldap puts the referral where the server's message goes; ldap3 keeps
        # them apart.
        referrals, message = message.split("\n")[1:], ""
    description = ldap_results.RESULT_CODES.get(code) if code >= 0 else None
    return {"result": code, "description": description or details.get("desc") or type(exc).__name__,
            "message": message, "referrals": referrals}


def python_ldap_client_error(exc: Exception) -> Optional[str]:
    """Why libldap gave up without an answer from the server (down, gone, timed out), or
    None when the server answered (judge its result instead)."""
    result = python_ldap_result(exc)
    if result["result"] >= 0:
        return None
    text = f"{result['description']} ({result['result']})"
    if result["message"]:
        text += f": {result['message']}"
    return text


def python_ldap_search_error(exc: Exception, base: str, server: Optional[str]) -> Exception:
    """A python-ldap LDAPError from a paged search: the same errors as ldap3's."""
    why = python_ldap_client_error(exc)
    if why is not None:
        return DirectoryUnavailable(f"search of {base} failed: {why}")
    return search_error(python_ldap_result(exc), base, server)


def python_ldap_bind_error(exc: Exception, uri: str, bind_dn: Optional[str]) -> Exception:
    """A python-ldap LDAPError from a simple bind: the same errors as ldap3's."""
    why = python_ldap_client_error(exc)
    if why is not None:
        return DirectoryUnavailable(f"{uri}: {why}")
    return bind_error(uri, bind_dn, python_ldap_result(exc))
