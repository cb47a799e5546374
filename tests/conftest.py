"""Shared pytest fixtures: real servers started privately on 127.0.0.1.

slapd (tests/servers/slapd.py):
    slapd_server      session: a started Slapd, no TLS.
    slapd_tls_server  session: a started Slapd(tls=True) with ldaps:// and a CA.
    slapd_factory     session: make more servers, e.g. slapd_factory(schema=False).
    ldap              function: slapd_server, running, with an empty ou=people
                      and a pristine status entry (Slapd.reset()).

reader: the ldap.reader a test runs with (ldap3; both with helpers.both_readers).

Work directories (config, data, slapd.log) are removed at the end of the
session, unless a test failed: then they are kept and their paths printed in
the terminal summary, so slapd.log can be read.

A missing slapd skips these tests on a developer machine but fails them on CI
(env CI set), where a missing server means a broken set-up, not a choice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

# tests/ holds the `servers` helpers; make them importable however pytest
# was started (rootdir, importmode, a future tests/__init__.py).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from helpers import python_ldap_available  # noqa: E402
from servers.slapd import Slapd, requires, requires_slapd  # noqa: E402  (requires: for other fixtures)

_FAILED = pytest.StashKey[bool]()
_KEPT = pytest.StashKey["list[str]"]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Remember whether anything failed (setup, call or teardown), so session
    # fixtures know to keep their work directories for a post-mortem.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        item.config.stash[_FAILED] = True


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.section("kept server directories (a test failed)")
        for line in kept:
            terminalreporter.write_line(line)


def _finish(server: Slapd, config: pytest.Config) -> None:
    server.stop()
    if config.stash.get(_FAILED, False):
        config.stash.setdefault(_KEPT, []).append(f"{server.workdir}  (log: {server.log_file})")
    else:
        server.cleanup()


@pytest.fixture(scope="session")
def slapd_factory(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Callable[..., Slapd]]:
    """``make(tls=False, schema=True) -> Slapd``: start another private slapd.

    Every server made is stopped at the end of the session (and kept on
    failure like the others); a test may also stop() it earlier.
    """
    servers: list[Slapd] = []

    def make(tls: bool = False, schema: bool = True) -> Slapd:
        requires_slapd()
        name = "slapd" + ("-tls" if tls else "") + ("" if schema else "-noschema")
        server = Slapd(tmp_path_factory.mktemp(name), tls=tls, schema=schema)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        _finish(server, pytestconfig)


@pytest.fixture(scope="session")
def slapd_server(slapd_factory: Callable[..., Slapd]) -> Slapd:
    """The shared slapd (plain ldap:// and ldapi://), started once per session."""
    return slapd_factory()


@pytest.fixture(scope="session")
def slapd_tls_server(slapd_factory: Callable[..., Slapd]) -> Slapd:
    """A slapd with ldaps:// (``ldaps_uri``) and StartTLS; trust ``ca_file``."""
    return slapd_factory(tls=True)


@pytest.fixture
def ldap(slapd_server: Slapd) -> Slapd:
    """The shared slapd, running, with an empty ou=people and a status entry
    without quotaSyncTime, for this test.

    Earlier tests may have stopped or paused it (outage tests); that is
    undone here rather than in each of them.
    """
    slapd_server.ensure_running()
    slapd_server.reset()
    return slapd_server


@pytest.fixture
def reader(request: pytest.FixtureRequest) -> str:
    """ldap.reader for a test's config: ldap3 unless the test is parametrized over
    ``helpers.READERS`` (``@both_readers``). python-ldap missing skips, but fails on CI."""
    name: str = getattr(request, "param", "ldap3")
    if name == "python-ldap":
        requires(python_ldap_available(), "python-ldap (pip install -e '.[fast]')")
    return name


@pytest.fixture
def mail_root(tmp_path: Path) -> Path:
    """An empty mail root (mailboxes.root) for one test."""
    root = tmp_path / "vmail"
    root.mkdir()
    return root


# --------------------------------------------------------------------------- Exim
# tests/servers/exim.py: a private exim4-daemon-heavy on 127.0.0.1 (needs root for -bd).

from servers.exim import Exim, exim_available  # noqa: E402


def requires_exim() -> None:
    usable, why = exim_available()
    requires(usable, why or "exim4-daemon-heavy")


@pytest.fixture(scope="session")
def exim_factory(pytestconfig: pytest.Config) -> Iterator[Callable[..., Exim]]:
    """``make(config_text, macros=None, name="exim") -> Exim``: start a private Exim daemon.

    All are stopped at the end of the session; their directories (config, spool, logs)
    are removed, or kept and listed in the terminal summary if a test failed.
    """
    daemons: list[Exim] = []

    def make(config: str, macros: dict[str, str] | None = None, name: str = "exim") -> Exim:
        requires_exim()
        daemon = Exim(config, macros, name=name)
        daemons.append(daemon)
        return daemon.start()

    yield make
    for daemon in daemons:
        daemon.stop()
        if pytestconfig.stash.get(_FAILED, False):
            pytestconfig.stash.setdefault(_KEPT, []).append(f"{daemon.workdir}  (Exim logs: {daemon.log_dir})")
        else:
            daemon.cleanup()


# --------------------------------------------------------------------------- replication
# tests/servers/replica.py: a provider (syncprov) and a consumer (syncrepl) on loopback.

from servers.replica import ConsumerSlapd, ProviderSlapd  # noqa: E402


@pytest.fixture(scope="session")
def replica_pair(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[tuple[Slapd, Slapd]]:
    """(provider, consumer), started once per session; both load the shipped schema and ACL."""
    requires_slapd()
    provider = ProviderSlapd(tmp_path_factory.mktemp("slapd-provider"))
    provider.start()
    consumer = ConsumerSlapd(tmp_path_factory.mktemp("slapd-consumer"), provider)
    try:
        consumer.start()
        yield provider, consumer
    finally:
        for server in (consumer, provider):
            _finish(server, pytestconfig)


# --------------------------------------------------------------------------- Cyrus
# tests/servers/cyrus.py: a private Cyrus IMAP master (cyrus-imapd) on 127.0.0.1.

from servers.cyrus import Cyrus, cyrus_available  # noqa: E402


def requires_cyrus() -> None:
    usable, why = cyrus_available()
    requires(usable, why or "cyrus-imapd")


@pytest.fixture(scope="session")
def cyrus_factory(pytestconfig: pytest.Config) -> Iterator[Callable[..., Cyrus]]:
    """``make(name, unixhierarchysep=False, virtdomains=False, events=True) -> Cyrus``: start
    a private Cyrus. All are stopped (by PID) at the end of the session; their directories
    are removed, or kept and listed if a test failed."""
    servers: list[Cyrus] = []

    def make(name: str = "cyrus", **options: bool) -> Cyrus:
        requires_cyrus()
        server = Cyrus(name, **options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
        if pytestconfig.stash.get(_FAILED, False):
            pytestconfig.stash.setdefault(_KEPT, []).append(f"{server.workdir}  (Cyrus config and master.log)")
        else:
            server.cleanup()


@pytest.fixture(scope="session")
def cyrus(cyrus_factory: Callable[..., Cyrus]) -> Cyrus:
    """The shared Cyrus: roots spelt user.NAME, event notifications on."""
    return cyrus_factory("cyrus")


# --------------------------------------------------------------------------- Dovecot
# tests/servers/dovecot.py: a private Dovecot (LMTP on a unix socket, LDAP userdb against
# the shared slapd, examples/dovecot/ as shipped). Needs root and dovecot-ldap/-lmtpd.

from servers.dovecot import Dovecot, dovecot_available  # noqa: E402


@pytest.fixture(scope="session")
def dovecot_factory(slapd_server: Slapd, pytestconfig: pytest.Config) -> Iterator[Callable[..., Dovecot]]:
    """``make(mail_format="maildir", backend="count", http=False) -> Dovecot``: one started
    Dovecot per combination for the whole session (a start costs about half a second)."""
    started: dict[tuple[str, str, bool], Dovecot] = {}

    def make(mail_format: str = "maildir", backend: str = "count", http: bool = False) -> Dovecot:
        usable, why = dovecot_available()
        requires(usable, why or "dovecot")
        key = (mail_format, backend, http)
        if key not in started:
            slapd_server.ensure_running()
            started[key] = Dovecot(slapd_server, mail_format=mail_format, backend=backend, http=http,
                                   name=f"dovecot-{mail_format}-{backend}").start()
        return started[key]

    yield make
    for server in started.values():
        server.stop()
        if pytestconfig.stash.get(_FAILED, False):
            pytestconfig.stash.setdefault(_KEPT, []).append(f"{server.workdir}  (log: {server.log_file})")
        else:
            server.cleanup()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot], ldap: Slapd) -> Dovecot:
    """The session's main Dovecot (maildir store, count backend, doveadm HTTP API on),
    with an empty ou=people in the slapd (``ldap``)."""
    return dovecot_factory(http=True)
