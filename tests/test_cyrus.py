"""``mailboxes.source: cyrus`` against a real Cyrus IMAP (tests/servers/cyrus.py) and a real
slapd: mailboxes and quotas made over IMAP as the admin, mail delivered over LMTP and
removed over IMAP as the user; what ldapquota wrote is read back with ldapsearch, what
Cyrus counts with its own report (docs/contract.md §10)."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO, run_cli, write_config
from servers.cyrus import QUOTA_COMMAND, Cyrus, message
from servers.exim import rcpt, secret_for_exim, send
from test_daemon import DaemonProcess, wait_until
from test_sync import flags, summary

from ldapquota.config import parse_config
from ldapquota.exim import render_exim_config, replace_blocks, split_blocks

pytestmark = pytest.mark.integration

KiB = 1024

#: Short intervals; the daemon tests must pass on notifications alone unless they say so.
DAEMON = {"interval": "1h", "account_refresh": "0.5s", "debounce": "0.1s", "over_recheck": "1h", "poll_interval": "1h"}


def cyrus_config(ldap, server: Cyrus, **sections) -> dict:
    config = {
        "ldap": {
            "uri": ldap.uri,
            "bind_dn": ldap.ldapquota_dn,
            "bind_password_file": str(ldap.ldapquota_pw_file),
            "base_dn": ldap.people_dn,
            "status_dn": ldap.ldapquota_dn,
        },
        "accounts": {"quota_attribute": "mailQuota"},
        "mailboxes": {"source": "cyrus"},
        "cyrus": {"quota_command": QUOTA_COMMAND, "imapd_conf": str(server.imapd_conf),
                  "quota_root": server.quota_root_template},
        "policy": {"max_changes": "100%", "free_margin": "1KiB"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


_serial = [0]


def unique(local: str, domain: str = "example.org") -> str:
    """A fresh address: the Cyrus is shared by the whole session, its mailboxes stay."""
    _serial[0] += 1
    return f"{local}{_serial[0]}@{domain}"


def flag(ldap, address):
    return flags(ldap).get(address, (None, None))[0]


def fill(cyrus: Cyrus, address: str, limit_kib: int) -> None:
    """Deliver until Cyrus itself counts the mailbox at its limit (its LMTP lets the message
    that crosses the limit in: lmtp_strict_quota off)."""
    for _ in range(limit_kib):
        refused = cyrus.deliver(address, 3000)
        assert not refused, refused
        usage = cyrus.report()[cyrus.root(address)]["STORAGE"]
        if usage["used"] >= usage["limit"]:
            return
    raise AssertionError(f"{address} never reached its limit")


# --------------------------------------------------------------------------- --sync


def test_sync_reads_bytes_counts_and_limits_from_cyrus(ldap, cyrus, tmp_path):
    full, roomy, counted = unique("full"), unique("roomy"), unique("counted")
    ldaplimit, noroot, nomailbox = unique("ldaplimit"), unique("noroot"), unique("nomailbox")
    ldap.add_account(full)  # Cyrus's own limit: 10 KiB
    ldap.add_account(roomy)  # 1000 KiB
    ldap.add_account(counted)  # 2 messages
    ldap.add_account(ldaplimit, quota=5000)  # bytes in LDAP, 1000 KiB in Cyrus
    ldap.add_account(noroot, extra={"isOverQuota": "TRUE"})  # a mailbox without a quota
    ldap.add_account(nomailbox)
    cyrus.add_user(full, storage_kib=10)
    cyrus.add_user(roomy, storage_kib=1000)
    cyrus.add_user(counted, messages=2)
    cyrus.add_user(ldaplimit, storage_kib=1000)
    cyrus.add_user(noroot)
    fill(cyrus, full, 10)
    for address in (roomy, counted, counted, ldaplimit, ldaplimit, noroot):
        assert not cyrus.deliver(address, 3000)
    report = cyrus.report()
    # The unit the contract relies on: the JSON report counts bytes (two 3000-byte messages).
    assert report[cyrus.root(ldaplimit)]["STORAGE"]["used"] > 6000
    assert report[cyrus.root(ldaplimit)]["STORAGE"]["limit"] == 1000 * KiB
    config = write_config(tmp_path / "ldapquota.yaml", cyrus_config(ldap, cyrus))

    result = run_cli(["-c", str(config), "--sync"])

    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # the accounts without a root
    assert summary(result)["errors"] == 2
    assert f"Cyrus has no quota root {cyrus.root(noroot)!r}" in output
    assert repr(cyrus.root(nomailbox)) in output
    assert flags(ldap) == {
        full: ("TRUE", "0"),
        roomy: (None, None),
        counted: ("TRUE", None),  # no byte limit: no free bytes to publish
        ldaplimit: ("TRUE", "0"),  # 5000 bytes: had the report said KiB, it would be far under
        noroot: ("TRUE", None),  # kept: Cyrus keeps no usage for it
        nomailbox: (None, None),
    }

    assert cyrus.expunge_all(full) > 0
    result = run_cli(["-c", str(config), "--sync"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert flag(ldap, full) == "FALSE"
    assert flag(ldap, counted) == "TRUE"


def test_a_full_sync_reads_the_report_once(ldap, cyrus, tmp_path):
    """docs/contract.md §10: one pass, however many accounts (here more than a batch);
    --report too."""
    runs = tmp_path / "runs"
    counting = f"sh -c 'echo run >> {runs}; exec {QUOTA_COMMAND} \"$@\"' quota"
    many = [unique("many") for _ in range(600)]
    ldap.add_accounts(many)
    cyrus.add_user(many[7], storage_kib=1)
    assert not cyrus.deliver(many[7], 3000)
    config = write_config(tmp_path / "ldapquota.yaml", cyrus_config(ldap, cyrus, cyrus={"quota_command": counting}))

    result = run_cli(["-c", str(config), "--sync"])

    assert result.returncode == 1, result.stderr  # 599 accounts without a root
    assert summary(result)["accounts"] == 600
    assert flag(ldap, many[7]) == "TRUE"
    assert runs.read_text().splitlines() == ["run"]

    report = run_cli(["-c", str(config), "--report", "--json"])
    assert report.returncode == 1, report.stderr
    assert json.loads(report.stdout)[0]["address"] == many[7]  # fullest first (the others: no root)
    assert runs.read_text().splitlines() == ["run", "run"]


@pytest.mark.parametrize("quota_command, why", [
    ("/nonexistent/quota", "not an executable command"),
    ("false", "failed with exit code 1"),
    ("echo", "printed something other than Cyrus's JSON quota report"),
    ("sh -c 'sleep 30' quota", "did not finish within 1s"),
], ids=["missing", "failing", "garbage", "hung"])
def test_a_report_that_cannot_be_read_stops_the_sync_before_any_write(ldap, cyrus, tmp_path, quota_command, why):
    fault = unique("fault")
    ldap.add_account(fault)
    cyrus.add_user(fault, storage_kib=1)
    assert not cyrus.deliver(fault, 3000)  # over: a working sync would write
    config = write_config(tmp_path / "ldapquota.yaml",
                          cyrus_config(ldap, cyrus, cyrus={"quota_command": quota_command, "timeout": "1s"}))
    before = ldap.get_entry(ldap.ldapquota_dn, ["quotaSyncTime"])

    result = run_cli(["-c", str(config), "--sync"])

    assert result.returncode == 69, result.stdout + result.stderr
    assert why in result.stderr
    assert flags(ldap) == {fault: (None, None)}
    assert ldap.get_entry(ldap.ldapquota_dn, ["quotaSyncTime"]) == before


# --------------------------------------------------------------------------- the daemon


SCHEMES = {
    # cyrus.quota_root "user.{localpart}": the shared instance.
    "user.NAME": {},
    # unixhierarchysep: yes (Cyrus 3's default): user/NAME, and names may hold dots.
    "user/NAME": {"unixhierarchysep": True},
    # virtdomains: user.NAME@DOMAIN.
    "user.NAME@DOMAIN": {"virtdomains": True},
}


@pytest.fixture(scope="module", params=list(SCHEMES))
def scheme(request, cyrus, cyrus_factory):
    """The three spellings of quota roots, each in a Cyrus of its own."""
    options = SCHEMES[request.param]
    return cyrus if not options else cyrus_factory(request.param.replace("/", "-").replace("@", "-at-"), **options)


def test_the_daemon_follows_deliveries_and_expunges_through_notifications(ldap, scheme, tmp_path):
    """Over on the LMTP delivery that fills the mailbox, back under on the IMAP expunge:
    with polling and re-checks an hour away, only Cyrus's notifications can say so."""
    address = unique("john.doe" if scheme.unixhierarchysep else "events", "example.net")
    ldap.add_account(address)
    scheme.add_user(address, storage_kib=10)
    config = write_config(tmp_path / "ldapquota.yaml", cyrus_config(ldap, scheme, daemon=dict(DAEMON, pidfile=str(tmp_path / "pid"))))
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    try:
        assert f"Cyrus's event notifications on {scheme.notify_socket}" in daemon.log()
        fill(scheme, address, 10)
        wait_until(lambda: flag(ldap, address) == "TRUE", what=f"{address} flagged\n{daemon.log()}")
        assert scheme.deliver(address, 3000)[address][0] == 452  # Cyrus agrees

        scheme.expunge_all(address)
        wait_until(lambda: flag(ldap, address) == "FALSE", what=f"{address} cleared\n{daemon.log()}")
        assert not scheme.deliver(address, 1000)
    finally:
        daemon.stop()
    assert not scheme.notify_socket.exists()  # the daemon removed its socket


def test_message_count_limits_are_followed_too(ldap, cyrus, tmp_path):
    few = unique("few")
    ldap.add_account(few)
    cyrus.add_user(few, messages=2)
    config = write_config(tmp_path / "ldapquota.yaml", cyrus_config(ldap, cyrus, daemon=dict(DAEMON, pidfile=str(tmp_path / "pid"))))
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    try:
        assert not cyrus.deliver(few, 500)
        assert flag(ldap, few) is None
        assert not cyrus.deliver(few, 500)
        wait_until(lambda: flag(ldap, few) == "TRUE", what=f"flagged\n{daemon.log()}")
        cyrus.expunge_all(few)
        wait_until(lambda: flag(ldap, few) == "FALSE", what=f"cleared\n{daemon.log()}")
    finally:
        daemon.stop()


def test_without_notifications_the_report_is_polled(ldap, cyrus, tmp_path):
    """imapd.conf without event_notifier: the daemon says so and reads the report every
    poll_interval, which also catches a limit changed by the admin (Cyrus sends no event)."""
    quiet = tmp_path / "imapd.conf"
    quiet.write_text("".join(line for line in cyrus.imapd_conf.read_text().splitlines(keepends=True)
                             if not line.startswith("event_")))
    polled = unique("polled")
    ldap.add_account(polled)
    cyrus.add_user(polled, storage_kib=1000)
    assert not cyrus.deliver(polled, 3000)
    settings = cyrus_config(ldap, cyrus, cyrus={"imapd_conf": str(quiet)},
                            daemon=dict(DAEMON, poll_interval="1s", pidfile=str(tmp_path / "pid")))
    daemon = DaemonProcess(write_config(tmp_path / "ldapquota.yaml", settings), tmp_path / "daemon.log").start()
    try:
        assert "sets no event_notifier" in daemon.log()
        assert flag(ldap, polled) is None
        cyrus.set_quota(polled, storage_kib=2)
        wait_until(lambda: flag(ldap, polled) == "TRUE", what=f"flagged\n{daemon.log()}")
        cyrus.set_quota(polled, storage_kib=1000)
        wait_until(lambda: flag(ldap, polled) == "FALSE", what=f"cleared\n{daemon.log()}")
    finally:
        daemon.stop()


def test_a_socket_another_program_listens_on_is_left_alone(ldap, cyrus, tmp_path):
    import socket

    ldap.add_account(unique("taken"))
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    other.bind(str(cyrus.notify_socket))
    try:
        config = write_config(tmp_path / "ldapquota.yaml",
                              cyrus_config(ldap, cyrus, daemon=dict(DAEMON, pidfile=str(tmp_path / "pid"))))
        daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
        daemon.stop()
        assert "another program listens on" in daemon.log()
        assert cyrus.notify_socket.exists()
    finally:
        other.close()
        cyrus.notify_socket.unlink()


def test_cyrus_report_unit_is_bytes_on_the_real_binary(cyrus):
    """The fact docs/contract.md §10 rests on, checked on the installed quota binary."""
    root = cyrus.add_user(unique("unit"), storage_kib=100, messages=7)
    assert cyrus.report()[root]["STORAGE"]["limit"] == 100 * KiB
    assert cyrus.report()[root]["MESSAGE"]["limit"] == 7
    assert shutil.which(QUOTA_COMMAND) and Path(QUOTA_COMMAND).name == "quota"


# --------------------------------------------------------------------------- the Exim side: the 2005 recipe

EXIM_EXAMPLE = REPO / "examples" / "cyrus" / "exim4.conf"


def test_the_cyrus_exim_example_holds_what_ldapquota_prints_for_its_config(tmp_path):
    """examples/cyrus/exim4.conf carries the blocks for examples/cyrus/ldapquota.yaml."""
    secret = tmp_path / "bind.secret"
    secret.write_text("x\n")
    yaml_text = (REPO / "examples" / "cyrus" / "ldapquota.yaml").read_text().replace("/etc/ldapquota/bind.secret", str(secret))
    config = parse_config(yaml_text, "examples/cyrus/ldapquota.yaml")
    assert config.mailboxes.source == "cyrus"
    assert split_blocks(EXIM_EXAMPLE.read_text()) == split_blocks(render_exim_config(config, "defer"))


@pytest.fixture
def seed_exim(ldap, cyrus, exim_factory, tmp_path):
    """examples/cyrus/exim4.conf, delivering over LMTP into the test Cyrus, with the blocks
    ldapquota prints for a config pointing at the test slapd."""
    import tempfile

    files = Path(tempfile.mkdtemp(prefix="ldapquota-cyrus-exim-"))
    files.chmod(0o755)
    aliases = files / "aliases"
    aliases.write_text("")
    aliases.chmod(0o644)
    secret = secret_for_exim(ldap.exim_pw)
    settings = cyrus_config(ldap, cyrus, mta={"bind_dn": ldap.exim_dn, "bind_password_file": str(secret)})
    config = write_config(tmp_path / "exim-ldapquota.yaml", settings)
    blocks = run_cli(["-c", str(config), "--exim-config"])
    assert blocks.returncode == 0, blocks.stderr
    macros = {
        "MAIL_DOMAINS": "example.org",
        "LDAP_SERVER": ldap.uri,
        "LDAP_BASE": ldap.people_dn,
        "LDAP_BIND": 'user="%s" pass=${quote:${readfile{%s}{}}}' % (ldap.exim_dn, secret),
        "CYRUS_LMTP_SOCKET": str(cyrus.lmtp_socket),
        "ALIAS_FILE": str(aliases),
    }
    yield exim_factory(replace_blocks(EXIM_EXAMPLE.read_text(), split_blocks(blocks.stdout)), macros, name="exim-cyrus")
    shutil.rmtree(files, ignore_errors=True)


def test_the_seed_recipe_answers_452_at_rcpt_for_a_full_cyrus_mailbox(ldap, cyrus, seed_exim, tmp_path):
    """The recipe's SMTP dialogue, without its hour: mail delivered through Exim's LMTP
    transport fills the Cyrus mailbox, the daemon sets the flag on Cyrus's notification,
    RCPT TO gets 452 while the SMTP session is still open; an IMAP expunge brings 250 back."""
    full = unique("seed")
    ldap.add_account(full)
    cyrus.add_user(full, storage_kib=10)
    config = write_config(tmp_path / "ldapquota.yaml", cyrus_config(ldap, cyrus, daemon=dict(DAEMON, pidfile=str(tmp_path / "pid"))))
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    try:
        assert rcpt(seed_exim, full)[0] == 250
        for _ in range(10):
            assert send(seed_exim, [full], message(3000)) == {}
            seed_exim.deliver()
            usage = cyrus.report()[cyrus.root(full)]["STORAGE"]
            if usage["used"] >= usage["limit"]:
                break
        else:
            raise AssertionError(f"Exim's deliveries never filled {full}:\n{seed_exim.logs()}")
        assert seed_exim.queue_count() == 0, seed_exim.logs()  # all went into Cyrus over LMTP
        wait_until(lambda: flag(ldap, full) == "TRUE", what=f"{full} flagged\n{daemon.log()}")

        code, text = rcpt(seed_exim, full)
        assert (code, text) == (452, "4.2.2 Mailbox full"), seed_exim.logs()
        assert rcpt(seed_exim, "nobody@example.org")[0] == 550

        cyrus.expunge_all(full)
        wait_until(lambda: flag(ldap, full) == "FALSE", what=f"{full} cleared\n{daemon.log()}")
        assert rcpt(seed_exim, full)[0] == 250
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- --show, --check-config, outages


def test_show_and_check_config_speak_of_cyrus(ldap, cyrus, tmp_path):
    shown = unique("shown")
    ldap.add_account(shown)
    cyrus.add_user(shown, storage_kib=10, messages=5)
    assert not cyrus.deliver(shown, 3000)
    config = write_config(tmp_path / "ldapquota.yaml", cyrus_config(ldap, cyrus))

    show = run_cli(["-c", str(config), "--show", shown])
    assert show.returncode == 0, show.stderr
    assert "limit:    10240S,5C (from Cyrus's own quota limit)" in show.stdout
    assert f"mailbox:  {cyrus.root(shown)}" in show.stdout
    assert f"(Cyrus quota root {cyrus.root(shown)!r})" in show.stdout

    check = run_cli(["-c", str(config), "--check-config"])
    assert f"event notifications go to {cyrus.notify_socket}" in check.stdout, check.stdout + check.stderr
    assert "quota -J reads" in check.stdout


def test_the_daemon_rides_out_a_report_that_fails(ldap, cyrus, tmp_path):
    """A report that fails while the daemon runs pauses measuring (logged once); the
    daemon stays up and catches up when the report works again (docs/contract.md §10)."""
    broken = tmp_path / "broken"
    wrapper = tmp_path / "quota"
    wrapper.write_text(f"#!/bin/sh\n[ -e {broken} ] && {{ echo 'cyrus is down' >&2; exit 75; }}\nexec {QUOTA_COMMAND} \"$@\"\n")
    wrapper.chmod(0o755)
    address = unique("outage")
    ldap.add_account(address)
    cyrus.add_user(address, storage_kib=10)
    settings = cyrus_config(ldap, cyrus, cyrus={"quota_command": str(wrapper)},
                            daemon=dict(DAEMON, pidfile=str(tmp_path / "pid")))
    daemon = DaemonProcess(write_config(tmp_path / "ldapquota.yaml", settings), tmp_path / "daemon.log").start()
    try:
        broken.touch()
        fill(cyrus, address, 10)
        daemon.wait_log("cyrus is down; measuring paused")
        assert flag(ldap, address) is None
        broken.unlink()
        wait_until(lambda: flag(ldap, address) == "TRUE", timeout=15, what=f"flagged after the outage\n{daemon.log()}")
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
