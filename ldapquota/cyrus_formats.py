"""What Cyrus IMAP says, read (pure, no I/O): its JSON quota report, imapd.conf, its event
notifications, and the names of quota roots (docs/contract.md §10,
docs/maildir-and-mta-facts.md §9).

- **The report** (``quota -J``, Cyrus 3.6): ``{root: {"STORAGE": {"used": N, "limit": N},
  "MESSAGE": {...}, ...}}``. STORAGE usage and limit are **bytes** (the text report and
  IMAP say KiB), MESSAGE a count; a resource without a limit has no ``"limit"``.
- **Root names** as the report spells them: ``user.jane``, ``user/jane`` with
  ``unixhierarchysep: yes``, ``user.jane@example.org`` with virtdomains; non-ASCII as
  IMAP's modified UTF-7 (``user.x&AOk-y``).
- **A notification** (Cyrus's ``notify()``, imap/notify.c): one datagram ``method NUL
  class NUL priority NUL user NUL mailbox NUL nopt NUL option NUL... message NUL``; for
  ``class`` EVENT the message is RFC 5423 JSON whose ``uri`` names the mailbox in the
  admin namespace, URL-encoded UTF-8 (``imap://host/user/john.doe%40example.org;UIDVALIDITY=1``).
"""

import base64
import json
import urllib.parse
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ldapquota.paths import PathTemplate
from ldapquota.quota import Limit, Usage

#: The default of imapd.conf's ``event_groups`` (imapd.conf(5), Cyrus 3.6).
DEFAULT_EVENT_GROUPS = ("message", "mailbox")


class RootQuota(NamedTuple):
    """One quota root of the report: what it holds, and Cyrus's own limit on it."""

    usage: Usage
    limit: Limit


class ReportError(ValueError):
    """The text is not Cyrus's JSON quota report."""


# --------------------------------------------------------------------------- the report


def parse_report(text: str) -> Dict[str, RootQuota]:
    """``quota -J`` output → {root name: RootQuota}. Raises ReportError for anything else."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ReportError(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ReportError(f"a JSON {type(document).__name__}, not an object of quota roots")
    roots: Dict[str, RootQuota] = {}
    for root, resources in document.items():
        if not root or not isinstance(resources, dict):
            raise ReportError(f"quota root {root!r} is not an object of resources")
        used_bytes, limit_bytes = _resource(root, resources, "STORAGE")
        used_messages, limit_messages = _resource(root, resources, "MESSAGE")
        roots[root] = RootQuota(Usage(used_bytes, used_messages), Limit(limit_bytes, limit_messages))
    return roots


def _resource(root: str, resources: Mapping[str, Any], name: str) -> Tuple[int, Optional[int]]:
    item = resources.get(name)
    if not isinstance(item, dict):
        raise ReportError(f"quota root {root!r} has no {name} object")
    used = _count(item.get("used"))
    if used is None:
        raise ReportError(f"quota root {root!r}: {name} used is {item.get('used')!r}, not a count")
    limit = _count(item.get("limit"))
    if limit is None and "limit" in item:
        raise ReportError(f"quota root {root!r}: {name} limit is {item['limit']!r}, not a count")
    return used, limit


def _count(value: object) -> Optional[int]:
    # bool is an int in Python; JSON true is not a count.
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --------------------------------------------------------------------------- imapd.conf


def parse_imapd_conf(text: str) -> Dict[str, str]:
    """``key: value`` lines as Cyrus reads them (keys lower-cased, ``#`` comments; the
    first value of a key counts). ``@include`` is not followed."""
    options: Dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, colon, value = stripped.partition(":")
        if colon and key.strip():
            options.setdefault(key.strip().lower(), value.strip())
    return options


class EventSettings(NamedTuple):
    """Where Cyrus sends its event notifications, and why ldapquota cannot follow them
    (``problem`` None: it can)."""

    socket: Optional[str]
    problem: Optional[str]
    warning: Optional[str] = None
    configdirectory: Optional[str] = None  # whose owner the socket is given to


def event_settings(options: Mapping[str, str]) -> EventSettings:
    """What imapd.conf says about event notifications (imapd.conf(5): ``event_notifier``,
    ``event_groups``, ``notifysocket``)."""
    configdirectory = options.get("configdirectory", "")
    socket = options.get("notifysocket") or "{configdirectory}/socket/notify"
    socket = socket.replace("{configdirectory}", configdirectory)
    groups = options.get("event_groups")
    enabled = groups.split() if groups is not None else list(DEFAULT_EVENT_GROUPS)
    warning = None
    if "quota" in enabled:
        warning = ("imapd.conf has event_groups: quota, which crashes imapd and lmtpd in Cyrus 3.6.1 "
                   "(cyrus-imapd#3831); the message group is all ldapquota needs")
    if not options.get("event_notifier"):
        return EventSettings(None, "imapd.conf sets no event_notifier, so Cyrus sends no event notifications", warning)
    if "message" not in enabled:
        return EventSettings(None, "imapd.conf's event_groups lacks message (MessageNew, MessageExpunge...)", warning)
    if socket.startswith("dlist:"):
        return EventSettings(None, f"notifysocket {socket} is a dlist: stream; ldapquota reads datagrams", warning)
    if not socket.startswith("/"):
        return EventSettings(None, f"notifysocket {socket!r} is not an absolute path", warning)
    return EventSettings(socket, None, warning, configdirectory or None)


# --------------------------------------------------------------------------- notifications


def notification_mailbox(datagram: bytes) -> Optional[str]:
    """The mailbox an EVENT notification is about, spelt as the report spells roots;
    None for anything else (other classes, garbage, events without a mailbox)."""
    fields = datagram.split(b"\0")
    if len(fields) < 7 or fields[1] != b"EVENT":
        return None
    try:
        options = int(fields[5])
    except ValueError:
        return None
    if not 0 <= options <= len(fields) - 7:
        return None
    try:
        message = json.loads(fields[6 + options].decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None
    uri = message.get("uri") if isinstance(message, dict) else None
    return mailbox_from_uri(uri) if isinstance(uri, str) else None


def mailbox_from_uri(uri: str) -> Optional[str]:
    """``imap://host/user/jane%40example.org;UIDVALIDITY=1/;UID=2`` → ``user/jane@example.org``
    (RFC 5092 IMAP URL: UTF-8, URL-encoded; the report spells names in modified UTF-7)."""
    if not uri.lower().startswith("imap://"):
        return None
    _, slash, path = uri[len("imap://"):].partition("/")
    encoded = path.split(";", 1)[0].split("?", 1)[0]
    if not slash or not encoded:
        return None
    try:
        name = urllib.parse.unquote(encoded, errors="strict")
    except ValueError:  # not UTF-8
        return None
    return encode_mutf7(name) if name.isprintable() else None


def governing_roots(mailbox: str) -> List[str]:
    """``mailbox`` and every mailbox above it, the quota roots that may govern it:
    ``user/jane/Sent@example.org`` → ``user@example.org``, ``user/jane@example.org``,
    ``user/jane/Sent@example.org``. Both separators are cut at (a dot may also sit inside
    a name under ``unixhierarchysep: yes``): an extra candidate costs nothing, as only
    those naming an account's root are measured."""
    name, at, domain = mailbox.rpartition("@")
    if not at:
        name, domain = mailbox, ""
    suffix = f"@{domain}" if at else ""
    roots = [name[:index] + suffix for index, char in enumerate(name) if char in "./" and index > 0]
    roots.append(name + suffix)
    return roots


# --------------------------------------------------------------------------- root names


def quota_root(template: PathTemplate, address: Optional[str], attributes: Mapping[str, Sequence[object]]) -> str:
    """The account's quota root (``cyrus.quota_root`` filled in), as the report spells it.

    Raises ValueError when a value is missing, holds control characters, or holds the
    hierarchy separator: with ``user.{localpart}`` a local part ``john.doe`` would name
    the folder ``doe`` of ``john``, someone else's quota root."""
    name = template.fill(address, attributes)
    if not name.isprintable() or name != name.strip() or name.startswith("-"):
        raise ValueError(f"{name!r} holds control characters or edge spaces, or starts with '-'")
    separator = "/" if "/" in _literal_text(template) else "."
    expected = template.fill("x@x", {attribute: ["x"] for attribute in template.attributes})
    if _mailbox_part(name).count(separator) != _mailbox_part(expected).count(separator):
        raise ValueError(f"{name!r}: a value holds the hierarchy separator {separator!r} (for names with dots, "
                         "Cyrus needs unixhierarchysep: yes and a quota_root like user/{localpart})")
    return encode_mutf7(name)


def _literal_text(template: PathTemplate) -> str:
    return "".join(part for part in template.parts if isinstance(part, str))


def _mailbox_part(name: str) -> str:
    """The name without its ``@domain`` (virtdomains), where dots are the domain's own."""
    return name.rpartition("@")[0] if "@" in name else name


def encode_mutf7(text: str) -> str:
    """IMAP's modified UTF-7 (RFC 3501 §5.1.3), the spelling of mailbox names in the report."""
    out: List[str] = []
    pending: List[str] = []

    def flush() -> None:
        if pending:
            packed = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + packed.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in text:
        if " " <= char <= "~":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)
