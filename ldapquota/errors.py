"""The errors ldapquota reports, each carrying the sysexits code the CLI ends with.

The LDAP library's exceptions are translated into these in one place
(:mod:`ldapquota.directory`), so nothing above that layer imports ldap3.
"""

import os
import reprlib

EX_OK = 0
EX_PARTIAL = 1  # done, but some accounts had errors
EX_USAGE = os.EX_USAGE  # 64
EX_UNAVAILABLE = os.EX_UNAVAILABLE  # 69
EX_SOFTWARE = os.EX_SOFTWARE  # 70
EX_TEMPFAIL = os.EX_TEMPFAIL  # 75
EX_NOPERM = os.EX_NOPERM  # 77
EX_CONFIG = os.EX_CONFIG  # 78


#: How much of a value an error message shows (docs/contract.md §7: never more than a short
#: excerpt; a value may be a megabyte of text, or a structure YAML aliases make enormous).
EXCERPT_CHARS = 60

_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2  # [[...], [...], ...]: enough to see the shape
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = EXCERPT_CHARS


def excerpt(value: object) -> str:
    """``repr(value)``, cut short: a long string shows its start, "…" and its length.

    reprlib looks at only the first items of the first levels, so even a structure of a
    billion shared sublists is shown at once (repr() would expand every one of them).
    """
    if isinstance(value, str):
        if len(value) <= EXCERPT_CHARS:
            return repr(value)
        return f"{value[:EXCERPT_CHARS]!r}… ({len(value)} characters)"
    shown = _SHORT.repr(value)
    return shown if len(shown) <= EXCERPT_CHARS else shown[:EXCERPT_CHARS] + "…"


def clip(text: str, limit: int = 4 * EXCERPT_CHARS) -> str:
    """A message from elsewhere (a parser's complaint) cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + "…"


class LdapQuotaError(Exception):
    """Base class: a failure the operator must see, with the exit code to end on."""

    exit_code = EX_SOFTWARE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(LdapQuotaError):
    """The config file (or a file it names) is unusable. The message names key and line."""

    exit_code = EX_CONFIG


class SchemaMissing(LdapQuotaError):
    """The directory does not know our attributes: schema/ldapquota.ldif is not loaded."""

    exit_code = EX_CONFIG


class DirectoryUnavailable(LdapQuotaError):
    """No LDAP server could be reached, or it failed while we talked to it."""

    exit_code = EX_UNAVAILABLE


class SearchIncomplete(DirectoryUnavailable):
    """A search ended early (size/time limit, referral, error).

    Never read as "the other accounts do not exist": the run stops before any write.
    """


class PermissionDenied(LdapQuotaError):
    """The bind was refused, or the bound identity may not read or write what it must."""

    exit_code = EX_NOPERM


class SourceUnavailable(LdapQuotaError):
    """The usage source cannot be asked at all (its command is missing or fails for
    everyone, its API does not answer or times out): the run stops before any write
    (docs/contract.md §10)."""

    exit_code = EX_UNAVAILABLE


class SourceRefused(SourceUnavailable):
    """The usage source refused our credentials (a wrong doveadm API key), docs/contract.md §10."""

    exit_code = EX_NOPERM


class SafetyRefusal(LdapQuotaError):
    """A safety rule (docs/contract.md §5) refused the run; nothing was written. ``--force`` overrides."""

    exit_code = EX_TEMPFAIL


class AlreadyRunning(LdapQuotaError):
    """Another daemon holds the pidfile lock."""

    exit_code = EX_TEMPFAIL


class SyncBusy(LdapQuotaError):
    """Another full sync of the same store holds the full-sync lock (docs/contract.md §5):
    this one gives up at once and writes nothing."""

    exit_code = EX_TEMPFAIL


class SyncLockUnusable(SyncBusy):
    """The full-sync lock cannot be taken safely (a planted or unreachable lock file): with
    no proof that no other full sync runs, this one writes nothing."""


class MeasureError(Exception):
    """One mailbox could not be measured. Its account keeps its flag; the run goes on."""


class AccountError(Exception):
    """One account's LDAP entry cannot be used (bad quota value, no address, bad path)."""


class EntryWriteError(Exception):
    """One entry could not be written; the others can be."""


class WriteSuperseded(Exception):
    """A planned write was not made because a newer one decides: the entry no longer
    holds the state the run read (someone wrote it meanwhile: the daemon, another run),
    or the daemon measured the account again since its full sync did. Neither a write
    nor an error; the account keeps the newer value."""


class NoOpUnsupported(EntryWriteError):
    """The server refused the No-Op control (a write-rights check is then impossible)."""
