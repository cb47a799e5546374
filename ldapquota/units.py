"""Parsing of human-written sizes, durations and change limits (pure, no I/O)."""

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

from ldapquota.errors import excerpt

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_size(value: Union[int, str]) -> int:
    """``50MiB`` → 52428800; a plain integer is bytes.

    Decimal (kB, MB, GB) and binary (KiB, MiB, GiB) suffixes, case-insensitive.
    Raises ValueError with a sentence a config error can carry.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 50MiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative ({excerpt(value)})")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 50MiB, got {type(value).__name__}")
    match = _SIZE_RE.match(value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{excerpt(value)} is not a size; use bytes or a suffix such as 500MB or 50MiB")
    number, unit = match.groups()
    scaled = float(number) * _SIZE_UNITS[unit.lower()] if "." in number else int(number) * _SIZE_UNITS[unit.lower()]
    return int(scaled)


def parse_duration(value: Union[int, float, str]) -> float:
    """``1h`` → 3600.0 seconds; a plain number is seconds. Must be positive."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60s, got a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{excerpt(value)} is not a duration; use seconds or a suffix s, m, h (e.g. 90s, 5m, 1h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 60s, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be a positive, finite number of seconds, got {excerpt(value)}")
    return seconds


@dataclass(frozen=True)
class ChangeLimit:
    """``policy.max_changes``: either an absolute count or a percentage of accounts."""

    count: Union[int, None] = None
    percent: Union[Fraction, None] = None  # exact: 32.48 % of 625 accounts is 203, not 202

    def allowed(self, accounts: int) -> int:
        """How many flips a run over ``accounts`` accounts may make."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return math.floor(accounts * self.percent / 100)

    def __str__(self) -> str:
        if self.count is not None:
            return f"{self.count}"
        assert self.percent is not None
        return f"{float(self.percent):g}%"


def parse_change_limit(value: Union[int, str]) -> ChangeLimit:
    """``10%`` or ``500``."""
    if isinstance(value, bool):
        raise ValueError("expected a count or a percentage such as 10%")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("max_changes cannot be negative")
        return ChangeLimit(count=value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                percent = Fraction(text[:-1].strip())
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"{excerpt(value)} is not a percentage") from None
            if not 0 <= percent <= 100:
                raise ValueError(f"{excerpt(value)}: a percentage must be between 0% and 100%")
            return ChangeLimit(percent=percent)
        if text.isdigit():
            return ChangeLimit(count=int(text))
    raise ValueError(f"{excerpt(value)} is not a count or a percentage such as 10%")
