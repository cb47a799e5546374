"""``--check-config``: everything that can be verified before a real run, with advice.

Each check yields a Finding; the CLI prints them and exits with the code of the worst.
Writing rights are checked with OpenLDAP's No-Op control where the server offers it: the
server runs the modify through its ACL and schema checks and keeps nothing.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

from ldapquota.accounts import account_from_entry, wanted_attributes
from ldapquota.entry import SCHEMA_FILE, AccountEntry
from ldapquota.errors import (
    EX_CONFIG,
    EX_NOPERM,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    AccountError,
    EntryWriteError,
    LdapQuotaError,
    NoOpUnsupported,
    SafetyRefusal,
)
from ldapquota.flagstore import FlagStore
from ldapquota.quota import QuotaState
from ldapquota.settings import Config
from ldapquota.sources import open_source
from ldapquota.sources.base import UsageSource

OK, WARNING, FAILED = "ok", "warning", "FAILED"
MAILBOX_SAMPLE = 200  # accounts whose maildir path is checked for existence


@dataclass(frozen=True)
class Finding:
    level: str
    message: str
    exit_code: int = EX_OK

    def __str__(self) -> str:
        return f"{self.level:7s} {self.message}"


def run_checks(config: Config, connect: Callable[[], FlagStore]) -> Iterator[Finding]:
    """The checks in order; stops after a failure that makes the rest meaningless."""
    yield Finding(OK, f"config file {config.path} is valid")
    source = open_source(config)
    try:
        yield from _checks(config, connect, source)
    finally:
        source.close()


def _checks(config: Config, connect: Callable[[], FlagStore], source: UsageSource) -> Iterator[Finding]:
    try:
        source.check_ready()
        yield Finding(OK, f"mail store ({config.mailboxes.source}) is ready: " + source.describe_ready())
    except SafetyRefusal as exc:
        yield Finding(FAILED, str(exc).replace(". Use --force to sync anyway", ""), EX_TEMPFAIL)
    except LdapQuotaError as exc:
        yield Finding(FAILED, str(exc), exc.exit_code)

    try:
        directory = connect()
    except LdapQuotaError as exc:
        yield Finding(FAILED, str(exc), exc.exit_code)
        return
    with directory:
        who = config.ldap.bind_dn or "anonymous"
        yield Finding(OK, f"connected to {directory.server} and bound as {who}")
        yield from _reader(config, directory)
        try:
            yield from _schema(directory)
            yield from _accounts(config, directory, source)
        except LdapQuotaError as exc:
            yield Finding(FAILED, str(exc), exc.exit_code)


def _reader(config: Config, directory: FlagStore) -> Iterator[Finding]:
    """Which library reads the accounts (ldap.reader), and whether it is the one asked for."""
    if directory.reader is None:
        return
    if directory.reader != config.ldap.reader:
        note = directory.reader_note or "it cannot be used"
        yield Finding(WARNING, f"ldap.reader is {config.ldap.reader}, but {note}")
    else:
        yield Finding(OK, f"accounts are read with {directory.reader} (ldap.reader)")


def _schema(directory: FlagStore) -> Iterator[Finding]:
    missing = directory.missing_schema()
    if missing:
        yield Finding(
            FAILED,
            f"the directory's schema lacks {', '.join(missing)}: load {SCHEMA_FILE} "
            f"(cn=config: ldapadd -Y EXTERNAL -H ldapi:/// -f {SCHEMA_FILE}; slapd.conf: include "
            "schema/ldapquota.schema)",
            EX_CONFIG,
        )
    else:
        yield Finding(OK, "schema: isOverQuota, quotaFreeBytes, quotaSyncTime and ldapQuotaStatus are known")


def _accounts(config: Config, directory: FlagStore, source: UsageSource) -> Iterator[Finding]:
    address_attribute = config.accounts.address_attribute
    seen: Dict[str, int] = {}
    first_dn = None
    first_state = None
    first_has_class = False
    count = 0
    without_address = 0
    with_quota = 0
    sampled = with_maildir = 0
    quota_attribute = config.accounts.quota_attribute
    attributes = wanted_attributes(config.accounts, source.attributes) + ["objectClass"]
    for entry in directory.search_accounts(attributes):
        count += 1
        if first_dn is None:
            first_dn, first_state, first_has_class = entry.dn, entry.quota_state, entry.has_quota_class
        values = entry.values(address_attribute)
        if not values:
            without_address += 1
        for value in values:
            key = value.lower()
            seen[key] = seen.get(key, 0) + 1
        if quota_attribute and entry.values(quota_attribute):
            with_quota += 1
        if sampled < MAILBOX_SAMPLE:
            found = _has_mailbox(entry, config, source)
            if found is not None:
                sampled += 1
                with_maildir += found
    yield Finding(OK, f"search of {config.ldap.base_dn} for {config.ldap.filter} is complete: {count} accounts")
    if count == 0:
        yield Finding(WARNING, "no account matches ldap.filter under ldap.base_dn (or the bind DN may not see them)")
    if without_address:
        yield Finding(WARNING, f"{without_address} accounts have no {address_attribute}")
    if quota_attribute and count and not with_quota:
        # An ACL that hides the limit from ldapquota would make every mailbox unlimited.
        default = config.accounts.default_quota
        fallback = f"accounts.default_quota ({default})" if default else f"the {source.own_limit}, else no limit"
        yield Finding(WARNING, f"no account has {quota_attribute} (misspelt, or not readable by the bind DN?); "
                               f"every limit will come from {fallback}")
    elif quota_attribute and count:
        yield Finding(OK, f"{with_quota} of {count} accounts have {quota_attribute}")
    if sampled:
        level = WARNING if with_maildir == 0 else OK
        advice = " -- check mailboxes.root and mailboxes.path" if level == WARNING else ""
        yield Finding(level, f"{with_maildir} of the first {sampled} accounts have a maildir where mailboxes.path "
                             f"({config.mailboxes.path.text}) says{advice}")
    duplicates = sorted(address for address, n in seen.items() if n > 1)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        yield Finding(
            WARNING,
            f"{len(duplicates)} addresses belong to more than one account ({shown}); the MTA lookup "
            "must match exactly one entry, so mail to them will be deferred (4xx)",
        )
    if first_dn is not None:
        assert first_state is not None
        yield from _write_rights(config, directory, first_dn, first_state, first_has_class)


def _write_rights(config: Config, directory: FlagStore, dn: str, state: QuotaState, has_class: bool) -> Iterator[Finding]:
    """May the bind write what ldapquota writes? Asked with the No-Op control (nothing kept)."""
    if dn:
        yield from _noop_write(
            f"write isOverQuota and quotaFreeBytes on accounts (tried on {dn})",
            lambda: directory.write_state(dn, state, state, has_class, noop=True),
        )
    status_dn = config.ldap.status_dn
    if status_dn:
        status = directory.read_entry(status_dn, ["objectClass"])
        if status is None:
            yield Finding(FAILED, f"ldap.status_dn {status_dn} does not exist; create it (quotaSyncTime is kept there)", EX_CONFIG)
        else:
            yield from _noop_write(f"write quotaSyncTime on {status_dn}", lambda: directory.write_sync_time(status_dn, 0, noop=True))
    else:
        yield Finding(WARNING, "ldap.status_dn is not set: quotaSyncTime will not be recorded, so MTAs cannot tell stale flags")


def _has_mailbox(entry: AccountEntry, config: Config, source: UsageSource) -> Optional[bool]:
    try:
        account = account_from_entry(entry, config.accounts, source)
    except AccountError:
        return False
    return source.has_mailbox(account.mailbox)


def _noop_write(what: str, attempt: Callable[[], None]) -> Iterator[Finding]:
    try:
        attempt()
    except NoOpUnsupported:
        yield Finding(WARNING, f"could not check that ldapquota may {what}: the server does not support "
                               "the No-Op control; a refused write will end a --sync with exit 77")
    except EntryWriteError as exc:
        yield Finding(FAILED, f"{what}: {exc}", EX_UNAVAILABLE)
    except LdapQuotaError as exc:
        yield Finding(FAILED, f"{what}: {exc}", exc.exit_code if exc.exit_code else EX_NOPERM)
    else:
        yield Finding(OK, f"ldapquota may {what} (checked with the No-Op control; nothing written)")


#: From the least to the most serious: what --check-config exits with when several fail.
_SEVERITY = (EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_NOPERM, EX_CONFIG)


def worst_exit_code(findings: List[Finding]) -> int:
    """The most serious exit code among the findings (a config the operator must fix
    first outranks a server that is down, which outranks a refused run)."""
    codes = [f.exit_code for f in findings if f.exit_code]
    return max(codes, key=lambda code: _SEVERITY.index(code) if code in _SEVERITY else len(_SEVERITY), default=EX_OK)

