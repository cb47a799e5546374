"""What doveadm says about quota, read and judged (pure, no I/O).

Facts (docs/maildir-and-mta-facts.md §8, checked on Dovecot 2.3.19):

* ``doveadm -f json quota get -F -`` prints one JSON array for a batch of users: one object
  per user, quota root and resource, ``{"username", "root", "type", "value", "limit",
  "percent"}``, every value a string. STORAGE is KiB (rounded up), MESSAGE a count; a
  limit of ``-`` is none; ``error`` is a resource Dovecot could not read.
* A user Dovecot does not know simply has no rows ("User no longer exists, skipping" on
  stderr, exit 0). What else goes wrong for one user shows only on stderr, as
  ``doveadm(USER)<pid><session>: Error: ...``: a mailbox directory it may not enter even
  reads as an empty mailbox, with exit 0. So stderr is read per user too.
* The HTTP API answers ``[["doveadmResponse", rows, tag] | ["error", {"exitCode": N}, tag], ...]``;
  exit code 67 (EX_NOUSER) is an unknown user.

STORAGE in KiB rounded up, times 1024, compared with the limit in bytes, says "over"
exactly when Dovecot's own ``quota_over_flag`` check does (it compares both in KiB, rounded
up), so ldapquota and Dovecot's hooks never disagree at ``policy.over_percent: 100``.
"""

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from ldapquota.errors import SourceUnavailable
from ldapquota.quota import Limit, Usage

KIB = 1024
EX_NOUSER = 67
#: Longest piece of doveadm's output quoted in a message.
EXCERPT = 200
_NUMBER = re.compile(r"^[0-9]{1,20}$")
_LEVEL = re.compile(r"^(?:<[^>]*>)*: (Error|Fatal|Panic): (.*)$")
_BARE_LEVEL = re.compile(r"^(?:[^:]{0,80}: )?(Error|Fatal|Panic): (.*)$")


class ReportError(ValueError):
    """The output is not doveadm's quota report (garbage, or cut short)."""


@dataclass(frozen=True)
class RootQuota:
    """One quota root of one user, as Dovecot counts it."""

    name: str
    usage: Usage  # bytes (KiB × 1024) and messages
    limit: Limit  # Dovecot's own limit for this root


#: Per user: its quota roots, or why it could not be measured.
Outcome = Union[List[RootQuota], str]
SaysOver = Callable[[Usage, Limit], bool]


def excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[: EXCERPT - 3] + "..."


# --------------------------------------------------------------------------- rows


def read_rows(text: str) -> List[Dict[str, str]]:
    """doveadm's JSON report → its rows. Raises ReportError for anything else."""
    try:
        rows = json.loads(text)
    except ValueError:
        raise ReportError(f"not JSON: {excerpt(text) or 'nothing'}") from None
    if not isinstance(rows, list):
        raise ReportError(f"not a JSON array: {excerpt(text)}")
    for row in rows:
        if not isinstance(row, dict) or not all(isinstance(v, str) for v in row.values()):
            raise ReportError(f"a row is not an object of strings: {excerpt(json.dumps(row))}")
        if not {"root", "type", "value", "limit"} <= row.keys():
            raise ReportError(f"a row lacks root, type, value or limit: {excerpt(json.dumps(row))}")
    return rows


def _cell(text: str, what: str, *, dash: bool) -> Optional[int]:
    if dash and text == "-":
        return None
    if _NUMBER.match(text):
        return int(text)
    if text == "error":
        raise ValueError(f"Dovecot could not read its {what}")
    raise ValueError(f"doveadm printed {excerpt(text)!r} as the {what}")


def roots_of(rows: Sequence[Mapping[str, str]]) -> Outcome:
    """One user's rows → its quota roots in Dovecot's order, or the first problem."""
    cells: Dict[str, Dict[str, Tuple[Optional[int], Optional[int]]]] = {}
    try:
        for row in rows:
            kind = row["type"].upper()
            if kind not in ("STORAGE", "MESSAGE"):
                continue  # a resource ldapquota has no use for
            what = f"{kind} of quota root {row['root']!r}"
            value = _cell(row["value"], f"{what} usage", dash=False)
            limit = _cell(row["limit"], f"{what} limit", dash=True)
            cells.setdefault(row["root"], {})[kind] = (value, limit)
    except ValueError as exc:
        return str(exc)
    roots = []
    for name, resources in cells.items():
        kib, kib_limit = resources.get("STORAGE", (0, None))
        count, count_limit = resources.get("MESSAGE", (0, None))
        own = Limit(bytes=None if kib_limit is None else kib_limit * KIB, messages=count_limit)
        roots.append(RootQuota(name, Usage((kib or 0) * KIB, count or 0), own))
    if not roots:
        return "doveadm reported no STORAGE or MESSAGE quota for this user (is the quota plugin on?)"
    return roots


def rows_by_user(rows: Sequence[Mapping[str, str]], users: Sequence[str]) -> Dict[str, List[Mapping[str, str]]]:
    """Rows of a batch (``username`` column) grouped by the users asked about. doveadm
    repeats the name as it was given; a differently cased echo still finds its user."""
    wanted = set(users)
    folded = {user.casefold(): user for user in users}
    grouped: Dict[str, List[Mapping[str, str]]] = {}
    for row in rows:
        name = row.get("username")
        if name is None:
            raise ReportError("a row of a batch has no username")
        user = name if name in wanted else folded.get(name.casefold())
        if user is not None:
            grouped.setdefault(user, []).append(row)
    return grouped


# --------------------------------------------------------------------------- stderr


def errors_by_user(stderr: str, users: Sequence[str]) -> Tuple[Dict[str, List[str]], List[str]]:
    """doveadm's stderr → (error messages per user, errors it does not pin on a user).
    A line is a user's when it starts with ``doveadm(USER)``; user names may hold any
    character, so the longest name asked about that fits wins."""
    wanted: Set[str] = set(users)
    mine: Dict[str, List[str]] = {}
    other: List[str] = []
    for line in stderr.splitlines():
        owner, level = _attribute(line, wanted)
        if level is None:
            continue
        message = f"{level.group(1)}: {level.group(2)}"
        if owner is None:
            other.append(message)
        else:
            mine.setdefault(owner, []).append(message)
    return mine, other


def _attribute(line: str, wanted: Set[str]) -> Tuple[Optional[str], Optional["re.Match[str]"]]:
    """(user or None, the level and message, or None when the line is no error)."""
    if line.startswith("doveadm("):
        rest = line[len("doveadm(") :]
        close = len(rest)
        while True:
            close = rest.rfind(")", 0, close)
            if close < 0:
                break
            name = rest[:close]
            if name in wanted:
                return name, _LEVEL.match(rest[close + 1 :])
    return None, _BARE_LEVEL.match(line)


# --------------------------------------------------------------------------- a local run


def local_outcomes(stdout: str, stderr: str, returncode: int, users: Sequence[str]) -> Dict[str, Outcome]:
    """One ``doveadm -f json quota get -F -`` run for ``users`` → an outcome for each.
    Raises SourceUnavailable when doveadm answered for nobody and failed (docs/contract.md §10)."""
    mine, other = errors_by_user(stderr, users)
    failed = f"doveadm failed (exit {returncode})" + (f": {excerpt(other[-1])}" if other else "")
    try:
        rows = read_rows(stdout)
    except ReportError as exc:
        if returncode != 0 and not stdout.strip():
            raise SourceUnavailable(failed) from None
        return dict.fromkeys(users, f"doveadm's output is not its quota report ({exc})")
    try:
        grouped = rows_by_user(rows, users)
    except ReportError as exc:
        return dict.fromkeys(users, f"doveadm's output is not its quota report ({exc})")
    if not grouped and returncode != 0:
        raise SourceUnavailable(failed)
    outcomes: Dict[str, Outcome] = {}
    for user in users:
        if user in mine:
            # Errors while measuring: even rows that look fine may be a mailbox read as empty.
            outcomes[user] = f"Dovecot: {excerpt(mine[user][-1])}"
        elif user in grouped:
            outcomes[user] = roots_of(grouped[user])
        elif returncode != 0:
            outcomes[user] = failed
        else:
            outcomes[user] = "Dovecot does not know this user (check dovecot.user and Dovecot's userdb)"
    return outcomes


# --------------------------------------------------------------------------- the HTTP API


def http_outcomes(body: str, quota_tags: Mapping[str, str], probe_tags: Mapping[str, str]) -> Dict[str, Outcome]:
    """One doveadm HTTP API answer → an outcome for each user. ``quota_tags`` maps the tag
    of each ``quotaGet`` to its user, ``probe_tags`` that of each INBOX status (which fails
    where Dovecot cannot open the mailbox; the quota alone would read as empty there)."""
    users = list(quota_tags.values())
    try:
        answers = _http_answers(body)
    except ReportError as exc:
        return dict.fromkeys(users, f"the doveadm API's answer is not its report ({exc})")
    outcomes: Dict[str, Outcome] = {}
    for tag, user in quota_tags.items():
        answer = answers.get(tag)
        if answer is None:
            outcomes[user] = "the doveadm API gave no answer for this user"
        elif answer[0] == "error":
            outcomes[user] = _http_error(answer[1])
        else:
            outcomes[user] = _http_rows(answer[1])
    for tag, user in probe_tags.items():
        answer = answers.get(tag)
        if isinstance(outcomes.get(user), list) and answer is not None and answer[0] == "error":
            outcomes[user] = f"Dovecot cannot open this user's INBOX ({_http_error(answer[1])})"
    return outcomes


def _http_answers(body: str) -> Dict[str, Tuple[str, object]]:
    try:
        answers = json.loads(body)
    except ValueError:
        raise ReportError(f"not JSON: {excerpt(body) or 'nothing'}") from None
    if not isinstance(answers, list):
        raise ReportError(f"not a JSON array: {excerpt(body)}")
    found: Dict[str, Tuple[str, object]] = {}
    for answer in answers:
        if not (isinstance(answer, list) and len(answer) == 3 and answer[0] in ("doveadmResponse", "error")
                and isinstance(answer[2], str)):
            raise ReportError(f"not [kind, payload, tag]: {excerpt(json.dumps(answer))}")
        found[answer[2]] = (answer[0], answer[1])
    return found


def _http_error(payload: object) -> str:
    code = payload.get("exitCode") if isinstance(payload, dict) else None
    if code == EX_NOUSER:
        return "Dovecot does not know this user (check dovecot.user and Dovecot's userdb)"
    return f"the doveadm API failed for this user (exit code {code})"


def _http_rows(payload: object) -> Outcome:
    try:
        rows = read_rows(json.dumps(payload))
    except ReportError as exc:
        return f"the doveadm API's answer is not its quota report ({exc})"
    return roots_of(rows)


# --------------------------------------------------------------------------- judging


def fullness(usage: Usage, limit: Limit) -> Fraction:
    """The larger of the byte and message fractions of the limit (0 when unlimited)."""
    parts = [Fraction(0)]
    if limit.bytes:
        parts.append(Fraction(usage.bytes, limit.bytes))
    if limit.messages:
        parts.append(Fraction(usage.messages, limit.messages))
    return max(parts)


def choose_root(roots: Sequence[RootQuota], configured: Optional[Limit], quota_root: Optional[str],
                says_over: SaysOver) -> Tuple[RootQuota, Limit]:
    """The root that decides, and the limit it is judged by (docs/contract.md §4, §10).

    The limit is the configured one (LDAP attribute, else accounts.default_quota) when
    there is one, else the root's own. With ``dovecot.quota_root`` set only that root
    counts; without, any root over its limit makes the account over, so a root that is
    over wins, then the fullest (bytes or messages, whichever is fuller), then the first.
    Raises ValueError when the named root is not among them."""
    if quota_root is not None:
        roots = [root for root in roots if root.name == quota_root]
        if not roots:
            raise ValueError(f"Dovecot reports no quota root {quota_root!r} for this user (dovecot.quota_root)")
    best: Optional[Tuple[Tuple[bool, Fraction], RootQuota, Limit]] = None
    for root in roots:
        limit = configured if configured is not None else root.limit
        key = (says_over(root.usage, limit), fullness(root.usage, limit))
        if best is None or key > best[0]:
            best = (key, root, limit)
    if best is None:
        raise ValueError("Dovecot reports no quota root for this user")
    return best[1], best[2]
