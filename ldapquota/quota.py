"""Limits, usage and the over-quota decision (pure, no I/O).

Everything that decides whether a mailbox is over quota lives here, so that the rules of
docs/contract.md §4 and §5 can be read, and tested, in one place.
"""

import functools
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple, Optional, Union

from ldapquota.errors import excerpt

_MAILDIRPP_ITEM = re.compile(r"^(\d+)([SC])$")
#: 10**30 bytes is beyond any disk: a longer number is a typo, refused as "too large" (a
#: bound also keeps int() well inside Python's digit limit).
_MAX_DIGITS = 30


@dataclass(frozen=True)
class Limit:
    """A quota. ``None`` in either field means no limit of that kind (0 is normalised to None)."""

    bytes: Optional[int] = None
    messages: Optional[int] = None

    def __post_init__(self) -> None:
        # Maildir++, Exim and Dovecot all read a 0 limit as "unlimited".
        if self.bytes == 0:
            object.__setattr__(self, "bytes", None)
        if self.messages == 0:
            object.__setattr__(self, "messages", None)

    @property
    def unlimited(self) -> bool:
        return self.bytes is None and self.messages is None

    def __str__(self) -> str:
        if self.unlimited:
            return "unlimited"
        parts = []
        if self.bytes is not None:
            parts.append(f"{self.bytes}S")
        if self.messages is not None:
            parts.append(f"{self.messages}C")
        return ",".join(parts)


UNLIMITED = Limit()


class Usage(NamedTuple):
    """What a mailbox holds: bytes and number of messages."""

    bytes: int
    messages: int


# Limits repeat across thousands of accounts (same plan, same header): parse each text once.
# Limit is immutable, so sharing one object between accounts is safe.
@functools.lru_cache(maxsize=4096)
def parse_maildirpp_limit(text: str) -> Limit:
    """Parse a Maildir++ quota definition: ``10000000S,1000C``, ``10000000S`` or ``1000C``.

    This is the first line of ``maildirsize`` and the form Courier keeps in LDAP.
    Surrounding whitespace is allowed; anything else raises ValueError.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty quota definition")
    found = {}
    for item in text.split(","):
        match = _MAILDIRPP_ITEM.match(item.strip())
        if not match:
            raise ValueError(f"{excerpt(item.strip())} is not <number>S or <number>C")
        number, kind = match.groups()
        if len(number) > _MAX_DIGITS:
            raise ValueError(f"{excerpt(item.strip())} is too large (more than {_MAX_DIGITS} digits)")
        if kind in found:
            raise ValueError(f"{kind} given twice in {excerpt(text)}")
        found[kind] = int(number)
    return Limit(bytes=found.get("S"), messages=found.get("C"))


@functools.lru_cache(maxsize=4096)
def parse_limit_value(value: str, unit: Optional[int]) -> Limit:
    """An account's quota attribute value → Limit.

    A bare integer is multiplied by ``unit`` (bytes per unit); with ``unit`` None
    (``quota_unit: maildir++``) a bare integer is taken as bytes. A Maildir++ string is read
    as such whatever the unit. Raises ValueError for anything else (negative, garbage).
    """
    text = value.strip()
    if text.isdecimal():  # what int() reads (isdigit() would also let "²" through)
        if len(text) > _MAX_DIGITS:
            raise ValueError(f"too large (more than {_MAX_DIGITS} digits)")
        return Limit(bytes=int(text) * (unit or 1))
    if text.startswith("-") and text[1:].isdecimal():
        raise ValueError(f"negative quota {excerpt(text)}")
    return parse_maildirpp_limit(text)


Percent = Union[int, float, Fraction]


def exact_percent(value: Union[int, float, str, Fraction]) -> Union[int, Fraction]:
    """A percentage as an exact number: ``32.48`` is 3248/100, not the nearest float.

    Whole percentages (the usual case) come back as int: the comparison runs for every
    account, and int arithmetic is several times faster than Fraction's.
    """
    exact = value if isinstance(value, Fraction) else Fraction(str(value))
    return int(exact) if exact.denominator == 1 else exact


@dataclass(frozen=True)
class Policy:
    """The thresholds of docs/contract.md §5 (from ``policy:`` in the config).

    Percentages are exact fractions, so the comparison at a 10**18-byte limit is exact too.
    """

    over_percent: Percent = 100
    clear_percent: Percent = 100
    free_margin: int = 50 * 1024 * 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "over_percent", exact_percent(self.over_percent))
        object.__setattr__(self, "clear_percent", exact_percent(self.clear_percent))

    @property
    def count_clear_percent(self) -> Union[int, Fraction]:
        """The message limit is "reached" at 100 %; hysteresis scales it like the bytes
        (clear at clear/over of the limit), so equal thresholds mean no hysteresis."""
        return exact_percent(Fraction(100) * self.clear_percent / self.over_percent)


def _reaches(used: int, limit: Optional[int], percent: Percent) -> bool:
    return limit is not None and used * 100 >= percent * limit


def exceeds_over_threshold(usage: Usage, limit: Limit, policy: Policy) -> bool:
    """Would a mailbox with no flag be set over quota? (bytes ≥ over %, or count limit reached)"""
    return _reaches(usage.bytes, limit.bytes, policy.over_percent) or _reaches(
        usage.messages, limit.messages, 100
    )


def below_clear_threshold(usage: Usage, limit: Limit, policy: Policy) -> bool:
    """May a flagged mailbox be cleared? Only once every dimension is below its clear point."""
    return not (
        _reaches(usage.bytes, limit.bytes, policy.clear_percent)
        or _reaches(usage.messages, limit.messages, policy.count_clear_percent)
    )


class QuotaState(NamedTuple):
    """What ldapquota keeps on an account entry. ``over`` False also stands for "absent"."""

    over: bool
    free_bytes: Optional[int]  # None: the attribute is absent


class Decision(NamedTuple):
    """The state an account should have, and what it was decided from."""

    state: QuotaState
    usage: Usage
    limit: Limit
    was_over: bool
    policy: "Policy"

    @property
    def reason(self) -> str:
        """One line a human can check (built only when shown: most decisions never are)."""
        if self.limit.unlimited:
            return "no limit"
        return _explain(self.usage, self.limit, self.state.over, self.was_over, self.policy)


def decide(usage: Usage, limit: Limit, currently_over: bool, policy: Policy) -> Decision:
    """The state an account should have.

    Hysteresis: a mailbox becomes over at ``over_percent`` and is cleared only below
    ``clear_percent``; in between it keeps what it had.
    """
    if limit.unlimited:
        return Decision(QuotaState(False, None), usage, limit, currently_over, policy)
    if currently_over:
        over = not below_clear_threshold(usage, limit, policy)
    else:
        over = exceeds_over_threshold(usage, limit, policy)
    return Decision(QuotaState(over, free_bytes(usage, limit, policy)), usage, limit, currently_over, policy)


def free_bytes(usage: Usage, limit: Limit, policy: Policy) -> Optional[int]:
    """Bytes left under the byte limit, published only within ``free_margin`` of it."""
    if limit.bytes is None:
        return None
    left = max(0, limit.bytes - usage.bytes)
    return left if left <= policy.free_margin else None


def _explain(usage: Usage, limit: Limit, over: bool, was_over: bool, policy: Policy) -> str:
    parts = []
    if limit.bytes is not None:
        parts.append(f"{usage.bytes} of {limit.bytes} bytes ({100.0 * usage.bytes / limit.bytes:.1f}%)")
    if limit.messages is not None:
        parts.append(f"{usage.messages} of {limit.messages} messages")
    measured = ", ".join(parts)
    if over and was_over:
        rule = f"still at or above the clear threshold ({float(policy.clear_percent):g}%)"
    elif over:
        rule = f"reached the over threshold ({float(policy.over_percent):g}%, or the message limit)"
    elif was_over:
        rule = f"below the clear threshold ({float(policy.clear_percent):g}%)"
    else:
        rule = f"below the over threshold ({float(policy.over_percent):g}%)"
    return f"{measured}: {rule}"
