"""Where an account's maildir is: the path template and the "stay under the root" rule.

The template (``mailboxes.path``) is parsed once at config time; rendering and the
lexical containment check are pure. Symlinks are checked where the maildir is opened
(:func:`ldapquota.mailbox.open_maildir`).
"""

import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

from ldapquota.errors import excerpt

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ATTR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*(;[A-Za-z0-9-]+)*$")
_FIELDS = ("localpart", "domain", "address")


@dataclass(frozen=True)
class _Field:
    name: str  # "localpart", "domain", "address" or "attr"
    attribute: Optional[str]  # for "attr"
    lower: bool


@dataclass(frozen=True)
class PathTemplate:
    """A parsed ``mailboxes.path`` such as ``{domain}/{localpart:lower}/Maildir``."""

    text: str
    parts: Tuple[object, ...]  # str literals and _Field placeholders, in order

    @classmethod
    def parse(cls, text: str) -> "PathTemplate":
        """Raises ValueError naming the bad placeholder."""
        if "{" not in text and "}" not in text:
            return cls(text, (text,))
        parts: List[object] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            literal = text[position : match.start()]
            if "{" in literal or "}" in literal:
                raise ValueError(f"unbalanced brace in {excerpt(text)}")
            if literal:
                parts.append(literal)
            parts.append(_parse_field(match.group(1)))
            position = match.end()
        tail = text[position:]
        if "{" in tail or "}" in tail:
            raise ValueError(f"unbalanced brace in {excerpt(text)}")
        if tail:
            parts.append(tail)
        return cls(text, tuple(parts))

    @property
    def attributes(self) -> Tuple[str, ...]:
        """LDAP attributes the template needs besides the address."""
        return tuple(p.attribute for p in self.parts if isinstance(p, _Field) and p.attribute)

    @property
    def needs_address(self) -> bool:
        return any(isinstance(p, _Field) and p.name != "attr" for p in self.parts)

    def fill(self, address: Optional[str], attributes: Mapping[str, Sequence[object]]) -> str:
        """The template filled in as plain text (a name, not a path: no path rules).
        Raises ValueError when a value is missing."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            assert isinstance(part, _Field)
            value = _field_value(part, address, attributes)
            out.append(value.lower() if part.lower else value)
        return "".join(out)

    def render(self, address: Optional[str], attributes: Mapping[str, Sequence[object]]) -> str:
        """The relative path for one account. Raises ValueError when a value is missing or
        could step out of its path component (``/``, NUL, ``.``/``..``)."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            assert isinstance(part, _Field)
            value = _field_value(part, address, attributes)
            if part.lower:
                value = value.lower()
            if not value or "/" in value or "\0" in value or value in (".", ".."):
                raise ValueError(f"{{{_describe(part)}}} is {excerpt(value)}, which cannot be part of a path")
            out.append(value)
        return "".join(out)


def _describe(field: _Field) -> str:
    name = f"attr:{field.attribute}" if field.attribute else field.name
    return name + (":lower" if field.lower else "")


def _parse_field(body: str) -> _Field:
    pieces = body.split(":")
    lower = False
    if len(pieces) > 1 and pieces[-1] == "lower":
        lower = True
        pieces = pieces[:-1]
    if len(pieces) == 1 and pieces[0] in _FIELDS:
        return _Field(pieces[0], None, lower)
    if len(pieces) == 2 and pieces[0] == "attr" and _ATTR_NAME.match(pieces[1]):
        return _Field("attr", pieces[1], lower)
    raise ValueError(
        f"unknown placeholder {{{body}}}; use {{localpart}}, {{domain}}, {{address}} or "
        "{attr:NAME}, optionally with :lower"
    )


def _field_value(field: _Field, address: Optional[str], attributes: Mapping[str, Sequence[object]]) -> str:
    if field.name == "attr":
        assert field.attribute is not None
        values = attribute_values(attributes, field.attribute)
        if not values:
            raise ValueError(f"the entry has no {field.attribute} attribute for the mailbox path")
        return str(values[0])
    if not address:
        raise ValueError("the entry has no address for the mailbox path")
    if field.name == "address":
        return address
    localpart, at, domain = address.rpartition("@")
    if not at or not localpart or not domain:
        raise ValueError(f"address {excerpt(address)} is not localpart@domain")
    return localpart if field.name == "localpart" else domain


def attribute_values(attributes: Mapping[str, Sequence[object]], name: str) -> Sequence[object]:
    """The values of attribute ``name``: LDAP attribute names are case-insensitive."""
    found = attributes.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    for key, values in attributes.items():
        if key.lower() == lowered:
            return values
    return ()


def lexically_under_root(root_real: str, path: str) -> str:
    """``path`` (relative to the root, or absolute) joined and normalised, without touching
    the disk. Raises ValueError when ``..`` or an absolute path leads outside the root.

    Symbolic links are checked later, on the opened directory (see mailbox.open_maildir).
    """
    joined = os.path.normpath(os.path.join(root_real, path))
    if not is_under(root_real, joined):
        raise ValueError(f"{excerpt(path)} leads to {excerpt(joined)}, outside mailboxes.root {root_real}")
    return joined


def is_under(root_real: str, path: str) -> bool:
    """Is ``path`` strictly below ``root_real`` (both normalised)?"""
    return path != root_real and path.startswith(root_real.rstrip("/") + "/")


def strip_mail_location(value: str) -> str:
    """A mailbox attribute may hold a Dovecot-style location: ``maildir:/path:INDEX=…``."""
    if value.startswith("maildir:"):
        value = value[len("maildir:") :]
        # Dovecot options follow the path after a colon (":INDEX=", ":CONTROL=", ...).
        value = value.split(":", 1)[0]
    return value

