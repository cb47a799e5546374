"""The validated configuration: one frozen dataclass per section (pure, no I/O).

These classes are the one place where defaults live (docs/contract.md §7): the loader in
:mod:`ldapquota.config` takes a key's default from its field here when the file does not
give it, so the documentation, the example file and the code cannot drift apart.
A field without a default is a required key.
"""

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

from ldapquota.paths import PathTemplate
from ldapquota.quota import Limit, Percent, Policy
from ldapquota.units import ChangeLimit


@dataclass(frozen=True)
class LdapConfig:
    uris: Tuple[str, ...]  # the key is ldap.uri: one URI or a list
    base_dn: str
    bind_dn: Optional[str] = None
    bind_password_file: Optional[str] = None
    # The secret itself: never printed, never in repr() (and so never in a traceback).
    # Not a key of the file: read from bind_password_file.
    bind_password: Optional[str] = field(default=None, repr=False)
    start_tls: bool = False
    ca_file: Optional[str] = None
    filter: str = "(objectClass=inetOrgPerson)"
    status_dn: Optional[str] = None
    # Which client library reads the accounts: "ldap3" (pure Python, always there) or
    # "python-ldap" (libldap decodes in C: a bare search of a million entries is about 3x
    # faster; the optional extra ldapquota[fast]). Writes always go through ldap3.
    reader: str = "ldap3"


@dataclass(frozen=True)
class AccountsConfig:
    address_attribute: str = "mail"
    quota_attribute: Optional[str] = "mailQuota"
    quota_unit: Optional[int] = 1  # bytes per unit; None means "maildir++"
    default_quota: Optional[Limit] = None
    mailbox_attribute: Optional[str] = None


@dataclass(frozen=True)
class MailboxesConfig:
    root: Optional[str] = None  # required with source maildir (a cross-check in config.py)
    source: str = "maildir"  # a name registered in ldapquota.sources
    path: PathTemplate = PathTemplate.parse("{domain}/{localpart}/Maildir")
    count_trash: bool = True
    workers: Optional[int] = None  # None: auto (one per spare core); 0: measure in-process


@dataclass(frozen=True)
class CyrusConfig:
    """``mailboxes.source: cyrus`` (docs/contract.md §10)."""

    quota_command: Tuple[str, ...] = ("/usr/lib/cyrus/bin/quota",)  # the command and its own options, no shell
    imapd_conf: str = "/etc/imapd.conf"
    # The account's quota root, spelt as the report spells it (docs/contract.md §7).
    quota_root: PathTemplate = PathTemplate.parse("user.{localpart}")
    timeout: float = 60.0  # one run of the report, then it counts as hung


@dataclass(frozen=True)
class DovecotConfig:
    """``mailboxes.source: dovecot`` (docs/contract.md §10)."""

    doveadm: Tuple[str, ...] = ("doveadm",)  # the command and its own options (-c FILE), no shell
    http_url: Optional[str] = None  # the doveadm HTTP API instead of the local command
    http_key_file: Optional[str] = None
    # The doveadm_api_key itself: never printed, never in repr(). Read from http_key_file.
    http_key: Optional[str] = field(default=None, repr=False)
    user: PathTemplate = PathTemplate.parse("{address}")
    quota_root: Optional[str] = None  # None: every quota root counts
    timeout: float = 60.0  # one doveadm run or one HTTP request, then it counts as hung


@dataclass(frozen=True)
class PolicyConfig:
    over_percent: Percent = 100
    clear_percent: Percent = 100  # when the file does not say: equal to over_percent
    free_margin: int = 50 * 1024**2
    max_changes: ChangeLimit = ChangeLimit(percent=Fraction(10))

    @property
    def thresholds(self) -> Policy:
        return Policy(self.over_percent, self.clear_percent, self.free_margin)


@dataclass(frozen=True)
class DaemonConfig:
    pidfile: str = "/run/ldapquota/ldapquota.pid"
    interval: float = 3600.0
    account_refresh: float = 60.0
    watch: bool = True
    user: Optional[str] = None
    group: Optional[str] = None
    debounce: float = 0.5  # a burst of changes to one mailbox is measured at most this often
    over_recheck: float = 30.0  # re-measure mailboxes that are over quota this often
    poll_interval: float = 30.0  # stat polling of mailboxes inotify does not watch


@dataclass(frozen=True)
class LoggingConfig:
    target: str = "stderr"  # stderr | syslog | a file path
    level: str = "info"


@dataclass(frozen=True)
class MtaConfig:
    # The LDAP server(s) the MTA asks: its own replica (docs/contract.md §11); the key is
    # mta.uri. None: the servers of ldap.uri.
    uris: Optional[Tuple[str, ...]] = None
    bind_dn: Optional[str] = None
    bind_password_file: Optional[str] = None
    on_ldap_error: str = "defer"  # defer | accept
    defer_text: str = "452 4.2.2 Mailbox full"
    fail_text: str = "552 5.2.2 Mailbox full"


@dataclass(frozen=True)
class MetricsConfig:
    # docs/contract.md §12: Prometheus text format, rewritten atomically after each full sync.
    textfile: Optional[str] = None
    listen: Optional[str] = None  # host:port where the daemon serves GET /metrics


@dataclass(frozen=True)
class Config:
    path: str
    ldap: LdapConfig
    accounts: AccountsConfig
    mailboxes: MailboxesConfig
    policy: PolicyConfig
    daemon: DaemonConfig
    logging: LoggingConfig
    mta: MtaConfig
    cyrus: CyrusConfig = CyrusConfig()
    dovecot: DovecotConfig = DovecotConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def mta_uris(self) -> Tuple[str, ...]:
        """The servers the MTA's lookups ask."""
        return self.mta.uris or self.ldap.uris
