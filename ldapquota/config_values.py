"""The value of each config key: converters from what YAML gives to the typed value.

Each takes the YAML value and returns the typed value or raises ValueError with a
sentence that the loader (:mod:`ldapquota.config`) prefixes with file, line and key.
"""

import math
import os
import re
import shlex
import urllib.parse
from typing import Any, Callable, Optional, Tuple

from ldapquota import sources
from ldapquota.errors import excerpt
from ldapquota.ldap.syntax import check_dn_syntax, check_filter_syntax
from ldapquota.paths import PathTemplate
from ldapquota.quota import Limit, Percent, exact_percent, parse_maildirpp_limit
from ldapquota.units import parse_size


def string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {show(value)}")
    return value.strip()


def optional_string(value: Any) -> Optional[str]:
    return None if value is None else string(value)


def optional_file_path(value: Any) -> Optional[str]:
    """A file name: shown whole in messages, so bounded as the kernel bounds it (PATH_MAX)."""
    if value is None:
        return None
    text = string(value)
    if len(text) >= 4096:
        raise ValueError(f"{excerpt(text)} is too long for a file name")
    return text


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show(value)}")
    return value


def percent(value: Any) -> Percent:
    """100, 90.5 or "90%" → an exact fraction (see quota.Policy)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1].strip()
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise ValueError(f"{excerpt(value)} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a percentage such as 100, got {show(value)}")
    if not math.isfinite(value) or not 0 < value <= 1000:
        raise ValueError(f"a percentage must be above 0 and at most 1000, got {value}")
    return exact_percent(value)


def uris(value: Any) -> Tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("at least one LDAP URI is needed")
    uris = []
    for item in items:
        uri = string(item)
        if not re.match(r"^(ldap|ldaps)://(\[[0-9A-Fa-f:.]+\]|[^/?#:\[\]]+)(:\d{1,5})?/?$", uri, re.IGNORECASE):
            raise ValueError(f"{excerpt(uri)} is not an ldap:// or ldaps:// URI of a server (host[:port])")
        uris.append(uri)
    return tuple(uris)


def optional_uris(value: Any) -> Optional[Tuple[str, ...]]:
    return None if value is None else uris(value)


def ldap_filter(value: Any) -> str:
    """One parenthesised RFC 4515 filter: its outer parentheses close only at the end."""
    text = string(value)
    depth = 0
    well_formed = text.startswith("(") and text.endswith(")")
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0 or (depth == 0 and position != len(text) - 1):
                well_formed = False
                break
    if not well_formed or depth != 0:
        raise ValueError(f"{excerpt(text)} is not one LDAP filter in parentheses, e.g. (&(objectClass=inetOrgPerson)(mail=*))")
    check_filter_syntax(text)
    return text


def dn(value: Any) -> str:
    text = string(value)
    check_dn_syntax(text)
    return text


def optional_dn(value: Any) -> Optional[str]:
    return None if value is None else dn(value)


def attribute(value: Any) -> str:
    text = string(value)
    if not re.match(r"^[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*$", text):
        raise ValueError(f"{excerpt(text)} is not an LDAP attribute name")
    return text


def optional_attribute(value: Any) -> Optional[str]:
    return None if value is None else attribute(value)


def quota_unit(value: Any) -> Optional[int]:
    if isinstance(value, str) and value.strip().lower() in ("maildir++", "maildirpp"):
        return None
    unit = parse_size(value)
    if unit <= 0:
        raise ValueError("quota_unit must be at least 1 byte, or \"maildir++\"")
    return unit


def default_quota(value: Any) -> Optional[Limit]:
    if value is None:
        return None
    if isinstance(value, str) and re.search(r"\d[SC]\b", value.strip()):
        return parse_maildirpp_limit(value)
    return Limit(bytes=parse_size(value))


def directory_path(value: Any) -> str:
    text = string(value)
    if not os.path.isabs(text):
        raise ValueError(f"{excerpt(text)} must be an absolute path")
    return os.path.normpath(text)


def optional_absolute_path(value: Any) -> Optional[str]:
    return None if value is None else directory_path(value)


def optional_listen_address(value: Any) -> Optional[str]:
    """``host:port`` (``[::1]:9100`` for IPv6) for metrics.listen; checked here for form,
    bound at start-up (docs/contract.md §12)."""
    if value is None:
        return None
    text = string(value)
    split_listen_address(text)
    return text


def split_listen_address(text: str) -> Tuple[str, int]:
    """``host:port`` → (host, port). Raises ValueError."""
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]/]+)):(\d{1,5})$", text)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9799 or [::1]:9799)")
    return match.group(1) or match.group(2), int(match.group(3))


def template(value: Any) -> PathTemplate:
    text = string(value)
    if os.path.isabs(text):
        raise ValueError(f"{excerpt(text)} must be relative to mailboxes.root")
    if ".." in text.split("/"):
        raise ValueError(f"{excerpt(text)} steps out of mailboxes.root with '..'")
    return PathTemplate.parse(text)


def command(value: Any) -> Tuple[str, ...]:
    """A command and its options (``doveadm -c /etc/dovecot/alt.conf``), split as a shell
    would split it, but run without one."""
    text = string(value)
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"{text!r} cannot be split into words: {exc}") from None
    if not words:
        raise ValueError("the command is empty")
    return words


def optional_http_url(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = string(value)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not an http:// or https:// URL such as http://127.0.0.1:8080/doveadm/v1")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    return text


def name_template(value: Any) -> PathTemplate:
    """A name built from the account ({address}, {localpart}, {domain}, {attr:NAME})."""
    return PathTemplate.parse(string(value))


def workers(value: Any) -> Optional[int]:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ValueError(f"expected auto or a number of processes from 0 to 64, got {show(value)}")
    return value


def source(value: Any) -> str:
    text = string(value).lower()
    if text not in sources.names():
        raise ValueError(f"expected one of {', '.join(sources.names())}, got {show(value)}")
    return text


def reader(value: Any) -> str:
    text = string(value).lower()
    if text not in ("ldap3", "python-ldap"):
        raise ValueError(f"expected ldap3 or python-ldap, got {show(value)}")
    return text


def on_ldap_error(value: Any) -> str:
    text = string(value).lower()
    if text not in ("defer", "accept"):
        raise ValueError(f"expected defer or accept, got {show(value)}")
    return text


def log_level(value: Any) -> str:
    text = string(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {show(value)}")
    return text


def log_target(value: Any) -> str:
    text = string(value)
    if text not in ("stderr", "syslog") and not os.path.isabs(text):
        raise ValueError(f"expected stderr, syslog or an absolute file path, got {excerpt(text)}")
    return text


def smtp_text(kind: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = string(value)
        if not re.match(rf"^{kind}\d\d \S", text) or "\n" in text or "}" in text:
            raise ValueError(f"expected an SMTP reply such as {kind}52 ... starting with {kind}xx, no newline or braces")
        return text

    return convert


def show(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {excerpt(value)}"
