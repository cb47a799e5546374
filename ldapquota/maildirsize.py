"""The Maildir++ ``maildirsize`` file: parsing and the "recalculate?" rules (pure, no I/O).

Rules (Courier's README.maildirquota, as Exim's tf_maildir.c and Dovecot's quota-maildir.c
apply them; see docs/maildir-and-mta-facts.md §1):

* line 1 is the quota definition (``10000000S,1000C``); every later line is ``<bytes> <count>``,
  possibly padded with whitespace (Courier pads lines to 14 bytes);
* usage is the sum of those lines;
* recalculate (walk the maildir) when the file is missing, malformed, at least 5120 bytes,
  has a negative total, or says "over quota" while it holds more than one usage line or is
  15 minutes old or more.

Anything we cannot read with certainty counts as malformed: the walk is always right, it
only costs time.
"""

import functools
import re
from dataclasses import dataclass
from typing import Optional

from ldapquota.quota import Limit, Usage, parse_maildirpp_limit

MAX_FILE_SIZE = 5120  # readers use a 5120-byte buffer; a file that fills it is rebuilt
STALE_SECONDS = 15 * 60  # an "over" verdict from an older file is not trusted

# 30 digits is far beyond any real size, and keeps int() away from Python's 4300-digit cap:
# a longer number is a malformed file (walk), not a crash.
_USAGE_LINE = re.compile(rb"^[ \t]*(-?\d{1,30})[ \t]+(-?\d{1,30})[ \t]*$")


@dataclass(frozen=True)
class MaildirsizeFile:
    """What a ``maildirsize`` file says.

    ``header_limit`` is None when line 1 cannot be read as a quota definition.
    ``usage`` is None when the usage lines cannot be trusted; ``problem`` then says why.
    """

    header_limit: Optional[Limit]
    usage: Optional[Usage]
    usage_lines: int
    problem: Optional[str]


def parse_maildirsize(data: bytes) -> MaildirsizeFile:
    """Parse the bytes of a ``maildirsize`` file (at most MAX_FILE_SIZE are looked at)."""
    header_limit = _parse_header(data)
    if len(data) >= MAX_FILE_SIZE:
        return MaildirsizeFile(header_limit, None, 0, f"file is {MAX_FILE_SIZE} bytes or more")
    if b"\0" in data:
        return MaildirsizeFile(header_limit, None, 0, "file contains a NUL byte")
    if not data.endswith(b"\n"):
        # Every line ends in \n; a missing one is a write in progress or a truncated file.
        return MaildirsizeFile(header_limit, None, 0, "last line is not complete")
    lines = data[:-1].split(b"\n")
    if header_limit is None:
        return MaildirsizeFile(None, None, 0, "first line is not a quota definition")
    total_bytes = total_messages = 0
    for number, line in enumerate(lines[1:], start=2):
        match = _USAGE_LINE.match(line)
        if not match:
            return MaildirsizeFile(header_limit, None, 0, f"line {number} is not '<bytes> <count>'")
        total_bytes += int(match.group(1))
        total_messages += int(match.group(2))
    usage_lines = len(lines) - 1
    if usage_lines == 0:
        return MaildirsizeFile(header_limit, None, 0, "file has no usage line")
    if total_bytes < 0 or total_messages < 0:
        return MaildirsizeFile(header_limit, None, usage_lines, "total is negative")
    return MaildirsizeFile(header_limit, Usage(total_bytes, total_messages), usage_lines, None)


def _parse_header(data: bytes) -> Optional[Limit]:
    return _parse_header_line(data.partition(b"\n")[0])


@functools.lru_cache(maxsize=4096)
def _parse_header_line(first: bytes) -> Optional[Limit]:
    try:
        return parse_maildirpp_limit(first.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def distrust_over_verdict(parsed: MaildirsizeFile, age_seconds: float) -> Optional[str]:
    """Why an "over quota" reading of a well-formed file must be re-checked by a walk.

    Courier's extra rule for over-quota results: trust the file only when it holds a
    single usage line and is less than 15 minutes old.
    """
    if parsed.usage_lines > 1:
        return f"says over quota but has {parsed.usage_lines} usage lines"
    if age_seconds >= STALE_SECONDS:
        return f"says over quota but is {int(age_seconds // 60)} minutes old"
    return None
