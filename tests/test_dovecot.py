"""Dovecot as the usage source, against a real private Dovecot 2.3 wired by the shipped
examples/dovecot/ (tests/servers/dovecot.py): mail arrives by LMTP, leaves with
``doveadm expunge``; Dovecot's own hooks run ``ldapquota --sync ADDRESS``; the flag is read
back with ldapsearch and usage with doveadm (the oracles)."""

import os
import time

import pytest
from helpers import run_cli
from servers.dovecot import Dovecot

pytestmark = pytest.mark.integration

LIMIT = 100_000  # bytes (mailQuota); Dovecot: 98 KiB


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def state(ldap, address):
    """(isOverQuota or None, quotaFreeBytes or None) as slapd has them."""
    entries = ldap.ldapsearch(ldap.people_dn, f"(mail={address})", ["isOverQuota", "quotaFreeBytes"])
    (attrs,) = entries.values()
    return (attrs.get("isOverQuota") or [None])[0], (attrs.get("quotaFreeBytes") or [None])[0]


def flag(ldap, address):
    return state(ldap, address)[0]


def wait_flag(ldap, dovecot, address, expected, timeout=20.0):
    try:
        wait_until(lambda: flag(ldap, address) == expected, timeout, f"isOverQuota={expected} on {address}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; hook said:\n{dovecot.hook_errors()}") from None


def unique(name):
    """A fresh address per test: the session's Dovecot keeps its mailboxes."""
    return f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}@example.org"


def sync(dovecot, config, *args):
    return run_cli(["-c", str(config), "--sync", *args])


# --------------------------------------------------------------------------- the hooks


def cross_and_come_back(ldap, dovecot: Dovecot, address: str) -> None:
    """Deliveries up to and over the limit set the flag through the shipped hook; an
    expunge clears it again. Usage is checked against doveadm's own report."""
    ldap.add_account(address, quota=LIMIT)
    assert dovecot.deliver(address, 60_000) == 250
    assert flag(ldap, address) is None  # below every threshold: no hook, nothing written
    assert dovecot.deliver(address, 45_000) == 250  # crosses 100 % (within quota_grace)
    wait_flag(ldap, dovecot, address, "TRUE")
    kib, limit_kib = dovecot.quota(address)["STORAGE"]
    assert kib * 1024 >= LIMIT and limit_kib == 98
    assert state(ldap, address) == ("TRUE", "0")
    dovecot.expunge(address)
    wait_flag(ldap, dovecot, address, "FALSE")
    assert dovecot.quota(address)["STORAGE"][0] == 0
    assert state(ldap, address) == ("FALSE", str(LIMIT))


def test_a_delivery_over_the_limit_sets_the_flag_and_an_expunge_clears_it(ldap, dovecot):
    cross_and_come_back(ldap, dovecot, unique("cross"))


@pytest.mark.parametrize("mail_format, backend", [("sdbox", "count"), ("mdbox", "count"), ("maildir", "maildir")])
def test_every_store_format_and_backend_drives_the_flag(ldap, dovecot_factory, mail_format, backend):
    cross_and_come_back(ldap, dovecot_factory(mail_format, backend), unique(f"{mail_format}-{backend}"))


def test_quota_over_flag_repairs_a_flag_set_wrong_by_hand(ldap, dovecot):
    address = unique("repair")
    dn = ldap.add_account(address, quota=LIMIT)
    assert dovecot.deliver(address, 10_000) == 250
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: ldapQuotaStatus\n-\n"
                    "replace: isOverQuota\nisOverQuota: TRUE\n")
    # The next delivery's session finds the flag wrong and runs the hook.
    assert dovecot.deliver(address, 1_000) == 250
    wait_flag(ldap, dovecot, address, "FALSE")


# --------------------------------------------------------------------------- ldapquota asking Dovecot


@pytest.fixture
def ldapquota_config(dovecot, tmp_path):
    """examples/dovecot/ldapquota.yaml for the session's Dovecot; ``extra`` replaces more."""
    secret = tmp_path / "bind.secret"
    secret.write_text(dovecot.slapd.ldapquota_pw)

    def make(*extra):
        return dovecot.write_ldapquota_config(tmp_path / "ldapquota.yaml", secret, extra)

    return make


def http_config(dovecot, ldapquota_config, tmp_path, key):
    key_file = tmp_path / "doveadm.key"
    key_file.write_text(key + "\n")
    return ldapquota_config(("  http_url: null\n", f"  http_url: {dovecot.http_url}\n"),
                            ("  http_key_file: null\n", f"  http_key_file: {key_file}\n"))


def test_a_full_sync_asks_doveadm_in_one_batch_and_agrees_with_it(ldap, dovecot, ldapquota_config):
    addresses = [unique(f"batch{n}") for n in range(6)]
    ldap.add_accounts(addresses, quota=LIMIT)
    for address, size in zip(addresses, (0, 10_000, 50_000, 96_000, 97_000, 120_000)):
        if size:
            dovecot.deliver(address, size)
    for address in addresses:  # what the hooks wrote on the way does not matter here
        ldap.ldapmodify(f"dn: {ldap.ldapsearch(ldap.people_dn, f'(mail={address})', ['1.1']).popitem()[0]}\n"
                        "changetype: modify\nreplace: mailQuota\nmailQuota: 100000\n")
    result = sync(dovecot, ldapquota_config(), "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    for address in addresses:
        kib, _ = dovecot.quota(address)["STORAGE"]
        expected = "TRUE" if kib * 1024 >= LIMIT else None
        assert flag(ldap, address) in ((expected,) if expected else (None, "FALSE")), (address, kib)
    assert "accounts=6" in result.stdout and "errors=0" in result.stdout


def test_the_doveadm_http_api_gives_the_same_answer(ldap, dovecot, ldapquota_config, tmp_path):
    address = unique("api")
    dn = ldap.add_account(address, quota=LIMIT, extra={"isOverQuota": "TRUE"})  # wrong: nothing there yet
    config = http_config(dovecot, ldapquota_config, tmp_path, dovecot.api_key)
    result = sync(dovecot, config, address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert state(ldap, address) == ("FALSE", str(LIMIT))
    show = run_cli(["-c", str(config), "--show", address])
    assert "Dovecot quota root 'User quota', doveadm HTTP API" in show.stdout, show.stdout
    assert dn


def test_a_wrong_api_key_exits_77_and_writes_nothing(ldap, dovecot, ldapquota_config, tmp_path):
    address = unique("badkey")
    ldap.add_account(address, quota=LIMIT, extra={"isOverQuota": "TRUE"})
    mark = ldap.log_mark()
    started = time.monotonic()
    result = sync(dovecot, http_config(dovecot, ldapquota_config, tmp_path, "not-the-key"), address)
    assert result.returncode == 77, result.stdout + result.stderr
    assert "refused the key in dovecot.http_key_file (HTTP 401)" in result.stderr
    assert time.monotonic() - started < 30  # answered, not waited out (no Connection: close)
    assert ldap.writes_since(mark, under=ldap.people_dn) == []


def test_doveadm_missing_exits_69_and_writes_nothing(ldap, dovecot, ldapquota_config, tmp_path):
    address = unique("nodoveadm")
    ldap.add_account(address, quota=LIMIT, extra={"isOverQuota": "TRUE"})
    mark = ldap.log_mark()
    config = ldapquota_config(("  doveadm: doveadm\n", f"  doveadm: {tmp_path / 'no-such-doveadm'}\n"))
    for args in (["--force"], [address]):
        result = sync(dovecot, config, *args)
        assert result.returncode == 69, result.stdout + result.stderr
        assert "is not an executable command" in result.stderr
    assert ldap.writes_since(mark, under=ldap.people_dn) == []


def test_a_hung_doveadm_times_out_with_69(ldap, dovecot, ldapquota_config, tmp_path):
    address = unique("hung")
    ldap.add_account(address, quota=LIMIT, extra={"isOverQuota": "TRUE"})
    hung = tmp_path / "doveadm"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    config = ldapquota_config(("  doveadm: doveadm\n", f"  doveadm: {hung}\n"), ("  timeout: 60s\n", "  timeout: 1s\n"))
    mark = ldap.log_mark()
    result = sync(dovecot, config, address)
    assert result.returncode == 69, result.stdout + result.stderr
    assert "did not finish within 1s (dovecot.timeout)" in result.stderr
    assert ldap.writes_since(mark, under=ldap.people_dn) == []


def test_garbage_from_doveadm_is_an_error_and_the_flag_stays(ldap, dovecot, ldapquota_config, tmp_path):
    address = unique("garbage")
    ldap.add_account(address, quota=LIMIT, extra={"isOverQuota": "TRUE"})
    liar = tmp_path / "doveadm"
    liar.write_text("#!/bin/sh\ncat >/dev/null\nprintf '[{\"username\":\"%s\",\"root\":\"User quota\",\"ty'\n")
    liar.chmod(0o755)
    result = sync(dovecot, ldapquota_config(("  doveadm: doveadm\n", f"  doveadm: {liar}\n")), address)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not its quota report" in result.stderr
    assert flag(ldap, address) == "TRUE"


def test_a_user_dovecot_does_not_know_is_an_error_and_the_flag_stays(ldap, dovecot, ldapquota_config):
    address = unique("unknown")
    ldap.add_account(address, quota=LIMIT, extra={"isOverQuota": "TRUE"})
    config = ldapquota_config(('  user: "{address}"\n', '  user: "nobody-{localpart}@example.org"\n'))
    result = sync(dovecot, config, address)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Dovecot does not know this user" in result.stderr
    assert flag(ldap, address) == "TRUE"


@pytest.mark.parametrize("api", [False, True], ids=["doveadm", "http-api"])
def test_a_mailbox_dovecot_cannot_open_is_an_error_not_an_empty_mailbox(ldap, dovecot, ldapquota_config, tmp_path, api):
    """Dovecot reads a mail directory it may not enter as an empty mailbox (count
    backend, exit 0): that must keep the flag, not clear it."""
    address = unique("locked")
    ldap.add_account(address, quota=LIMIT)
    assert [dovecot.deliver(address, 60_000), dovecot.deliver(address, 45_000)] == [250, 250]
    wait_flag(ldap, dovecot, address, "TRUE")
    local, domain = address.split("@")
    home = dovecot.mail_root / domain / local
    home.chmod(0)
    try:
        config = http_config(dovecot, ldapquota_config, tmp_path, dovecot.api_key) if api else ldapquota_config()
        result = sync(dovecot, config, address)
    finally:
        home.chmod(0o700)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Permission denied" in result.stderr or "cannot open this user's INBOX" in result.stderr, result.stderr
    assert flag(ldap, address) == "TRUE"


def test_user_names_with_shell_and_http_metacharacters_travel_safely(ldap, dovecot, ldapquota_config, tmp_path):
    """The address is the Dovecot user: on doveadm's stdin, in the API's JSON, in the
    hook's argv, never through a shell (which would have expanded $HOME and `id` and
    found no such account). Only characters an unquoted SMTP local part may hold."""
    address = f"o'k$HOME`id`&x=1%20#?|{{a}}*!~-{os.getpid()}@example.org"
    ldap.add_account(address, quota=LIMIT, uid=f"meta{os.getpid()}")
    assert [dovecot.deliver(address, 60_000), dovecot.deliver(address, 45_000)] == [250, 250]  # the hook, too
    wait_flag(ldap, dovecot, address, "TRUE")
    dovecot.expunge(address)
    wait_flag(ldap, dovecot, address, "FALSE")
    dn = f"uid=meta{os.getpid()},{ldap.people_dn}"
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nreplace: isOverQuota\nisOverQuota: TRUE\n")
    # The API would take * and ? for wildcards (and list users): refused, flag kept.
    result = sync(dovecot, http_config(dovecot, ldapquota_config, tmp_path, dovecot.api_key), address)
    assert result.returncode == 1 and "as wildcards" in result.stderr, result.stdout + result.stderr
    assert flag(ldap, address) == "TRUE"
    result = sync(dovecot, ldapquota_config(), address)  # doveadm -F takes each line as one name
    assert result.returncode == 0 and "cleared=1" in result.stdout, result.stdout + result.stderr
    assert flag(ldap, address) == "FALSE"
    plain = f"a'b$HOME`id`&x=1%20#|{{c}}~!-{os.getpid()}@example.org"  # no wildcard: the API takes it
    ldap.add_account(plain, quota=LIMIT, uid=f"meta2{os.getpid()}", extra={"isOverQuota": "TRUE"})
    result = sync(dovecot, http_config(dovecot, ldapquota_config, tmp_path, dovecot.api_key), plain)
    assert result.returncode == 0 and "cleared=1" in result.stdout, result.stdout + result.stderr


# --------------------------------------------------------------------------- the daemon


def test_the_daemon_follows_hooks_refreshes_and_rechecks_over_quota_users(ldap, dovecot, ldapquota_config, tmp_path):
    """No inotify with Dovecot: a flag written by hand is re-decided when the account
    refresh sees the entry change, and an over-quota mailbox emptied behind Dovecot's
    back (no hook fires) is cleared by the daemon's own asking (daemon.over_recheck, and
    the slow polling of every user)."""
    from test_daemon import DaemonProcess

    fine, full = unique("d-fine"), unique("d-full")
    ldap.add_accounts([fine, full], quota=LIMIT)
    assert dovecot.deliver(fine, 10_000) == 250
    assert [dovecot.deliver(full, 60_000), dovecot.deliver(full, 45_000)] == [250, 250]
    wait_flag(ldap, dovecot, full, "TRUE")
    config = ldapquota_config(
        ("  pidfile: /run/ldapquota/ldapquota.pid\n", f"  pidfile: {tmp_path / 'ldapquota.pid'}\n"),
        ("  account_refresh: 60s\n", "  account_refresh: 0.5s\n  debounce: 0.1s\n  over_recheck: 1s\n"),
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    try:
        assert "Dovecot's hooks (ldapquota --sync ADDRESS), and polling at most 20 users a second" in daemon.log()
        dn = ldap.ldapsearch(ldap.people_dn, f"(mail={fine})", ["1.1"]).popitem()[0]
        daemon.wait_log(r"full sync: ")  # it has written the class (and quotaFreeBytes) by now
        ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nreplace: isOverQuota\nisOverQuota: TRUE\n")
        wait_flag(ldap, dovecot, fine, "FALSE")
        local, domain = full.split("@")
        for message in (dovecot.mail_root / domain / local / "Maildir" / "new").iterdir():
            message.unlink()  # behind Dovecot's back: no quota warning, no hook
        wait_flag(ldap, dovecot, full, "FALSE")
    finally:
        assert daemon.stop() == 0, daemon.log()
