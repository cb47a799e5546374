"""LDAP text: filter and DN syntax checks, escaping, GeneralizedTime (no connection)."""

import calendar
import time
from typing import Optional

from ldap3.core import exceptions as ldap_exc
from ldap3.operation.search import compile_filter, parse_filter
from ldap3.utils.asn1 import encode as ber_encode
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from ldapquota.errors import clip, excerpt


def escape_value(value: str) -> str:
    """RFC 4515 escaping of a value placed in a filter (``*``, ``(``, ``)``, ``\\``, NUL)."""
    return str(escape_filter_chars(value))


def account_filter(base_filter: str, attribute: Optional[str] = None, value: Optional[str] = None) -> str:
    """The configured filter, narrowed to one address when asked."""
    if attribute is None:
        return base_filter
    return f"(&{base_filter}({attribute}={escape_value(value or '')}))"


def encode_filter(text: str) -> bytes:
    """A filter as the BER ``Filter`` of RFC 4511 -- what the Assertion control carries
    (RFC 4528) -- compiled by ldap3's own filter compiler, the one its searches use."""
    root = parse_filter(text, None, auto_escape=True, auto_encode=True, validator=None, check_names=False)
    return bytes(ber_encode(compile_filter(root.elements[0])))


def check_filter_syntax(text: str) -> None:
    """Raise ValueError unless ``text`` is an RFC 4515 filter ldap3 can send."""
    try:
        parse_filter(text, None, auto_escape=False, auto_encode=False, validator=None, check_names=False)
    except ldap_exc.LDAPException as exc:
        raise ValueError(f"{excerpt(text)} is not a valid LDAP filter: {clip(str(exc))}") from None


def check_dn_syntax(text: str) -> None:
    """Raise ValueError unless ``text`` is an RFC 4514 DN."""
    try:
        parse_dn(text)
    except ldap_exc.LDAPException as exc:
        raise ValueError(f"{excerpt(text)} is not a valid DN: {clip(str(exc))}") from None


def generalized_time(epoch: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch))


def parse_generalized_time(stamp: Optional[str]) -> Optional[float]:
    """GeneralizedTime (``20240102030405Z``; fractions and offsets ignored: UTC, as LDAP
    servers write it) → seconds since the epoch; None if unreadable."""
    if not stamp or len(stamp) < 14 or not stamp[:14].isdigit():
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp[:14], "%Y%m%d%H%M%S")))
    except ValueError:
        return None
