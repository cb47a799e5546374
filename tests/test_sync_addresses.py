"""``ldapquota --sync ADDRESS ...`` (docs/contract.md §6): only those accounts, decided as a
full sync decides, cheap enough for a mail-server hook: one bind, one search per address,
one modify per change. Checked with ldapsearch and slapd's own log of operations."""

import re

import pytest
from helpers import config_dict, maildirsize_text, make_maildir, run_cli, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def config_file(tmp_path, ldap, mail_root):
    def make(**sections):
        return str(write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root, **sections)))

    return make


def flag(ldap, address):
    entries = ldap.ldapsearch(ldap.people_dn, f"(mail={address})", ["isOverQuota"])
    (attrs,) = entries.values()
    return (attrs.get("isOverQuota") or [None])[0]


def operations_since(ldap, mark):
    """(binds, searches under ou=people, modifies) slapd logged for connections that bound
    as ldapquota's DN since ``mark``."""
    ldap.writes_since(mark)  # waits until slapd has logged everything answered so far
    with open(ldap.log_file, "rb") as log:
        log.seek(mark)
        text = log.read().decode("utf-8", "replace")
    ours = set(re.findall(rf'conn=(\d+) op=\d+ BIND dn="{re.escape(ldap.ldapquota_dn)}"', text))
    binds = searches = modifies = 0
    # slapd logs a bind twice (method=, then mech=): count the first line only
    for conn, rest in re.findall(r"conn=(\d+) op=\d+ (BIND dn=\"[^\"]*\" method=|SRCH base=\"[^\"]*\"|MOD dn=)", text):
        if conn not in ours:
            continue
        binds += rest.startswith("BIND")
        searches += rest.startswith("SRCH") and ldap.people_dn in rest
        modifies += rest.startswith("MOD")
    return binds, searches, modifies


def over(mail_root, address):
    make_maildir(mail_root, address, maildirsize=maildirsize_text("1000S", (1500, 3)))


def test_only_the_named_accounts_one_bind_one_search_each_one_modify_per_change(ldap, mail_root, config_file):
    for name in ("a", "b", "c"):
        ldap.add_account(f"{name}@example.org", quota="1000")
        over(mail_root, f"{name}@example.org")
    make_maildir(mail_root, "d@example.org", maildirsize=maildirsize_text("1000S", (10, 1)))
    ldap.add_account("d@example.org", quota="1000", extra={"isOverQuota": "FALSE", "quotaFreeBytes": "990"})
    mark = ldap.log_mark()

    result = run_cli(["-c", config_file(), "-q", "--sync", "a@example.org", "b@example.org", "d@example.org"])

    assert result.returncode == 0, result.stderr
    assert [flag(ldap, f"{n}@example.org") for n in "abcd"] == ["TRUE", "TRUE", None, "FALSE"]
    assert operations_since(ldap, mark) == (1, 3, 2)  # d is unchanged: no modify
    assert "accounts=3 over=2 set=2 cleared=0 unchanged=1 errors=0 writes=2" in result.stdout
    # not a complete sync: quotaSyncTime is not written
    assert "quotaSyncTime" not in (ldap.get_entry(ldap.ldapquota_dn, ["quotaSyncTime"]) or {})


def test_max_changes_does_not_apply_to_named_accounts(ldap, mail_root, config_file):
    for name in ("a", "b"):
        ldap.add_account(f"{name}@example.org", quota="1000")
        over(mail_root, f"{name}@example.org")
    path = config_file(policy={"max_changes": 0})
    assert run_cli(["-c", path, "--sync"]).returncode == 75  # a full sync would be refused

    result = run_cli(["-c", path, "--sync", "a@example.org", "b@example.org"])

    assert result.returncode == 0, result.stderr
    assert [flag(ldap, "a@example.org"), flag(ldap, "b@example.org")] == ["TRUE", "TRUE"]


def test_an_address_with_no_account_or_several_is_an_error_for_it_alone(ldap, mail_root, config_file):
    ldap.add_account("a@example.org", quota="1000")
    over(mail_root, "a@example.org")
    ldap.add_account("twin@example.org", uid="twin1")
    ldap.add_account("twin@example.org", uid="twin2")

    result = run_cli(["-c", config_file(), "--sync", "nobody@example.org", "twin@example.org", "*", "a@example.org"])

    assert result.returncode == 1, result.stderr
    assert "nobody@example.org: no account with mail=nobody@example.org" in result.stderr
    assert "twin@example.org: 2 accounts with mail=twin@example.org" in result.stderr
    assert "*: no account" in result.stderr  # a filter metacharacter is the address itself
    assert "accounts=1 over=1 set=1" in result.stdout and "errors=3" in result.stdout
    assert flag(ldap, "a@example.org") == "TRUE"


def test_dry_run_with_addresses_prints_and_writes_nothing(ldap, mail_root, config_file):
    ldap.add_account("a@example.org", quota="1000")
    over(mail_root, "a@example.org")
    mark = ldap.log_mark()

    result = run_cli(["-c", config_file(), "--sync", "--dry-run", "a@example.org"])

    assert result.returncode == 0, result.stderr
    assert "would change a@example.org: isOverQuota FALSE -> TRUE" in result.stdout
    assert ldap.writes_since(mark) == []


def test_an_address_that_looks_like_an_option_goes_after_double_dash(ldap, mail_root, config_file):
    ldap.add_account("-x@example.org", quota="1000", uid="dash")
    over(mail_root, "-x@example.org")
    result = run_cli(["-c", config_file(), "--sync", "--", "-x@example.org"])
    assert result.returncode == 0, result.stderr
    assert flag(ldap, "-x@example.org") == "TRUE"


def test_addresses_without_sync_are_a_usage_error(config_file):
    result = run_cli(["-c", config_file(), "a@example.org"])
    assert result.returncode == 64 and "addresses go with --sync" in result.stderr


def test_a_running_full_sync_never_holds_up_named_accounts(ldap, mail_root, config_file, tmp_path):
    """The full-sync lock (docs/contract.md §5) makes a second full sync give up; a hook's
    --sync ADDRESS goes on regardless."""
    from ldapquota.config import load_config
    from ldapquota.synclock import FullSyncLock

    ldap.add_account("a@example.org", quota="1000")
    over(mail_root, "a@example.org")
    path = config_file(daemon={"pidfile": str(tmp_path / "ldapquota.pid")})
    with FullSyncLock(load_config(path)):
        assert run_cli(["-c", path, "--sync"]).returncode == 75
        result = run_cli(["-c", path, "--sync", "a@example.org"])
    assert result.returncode == 0, result.stderr
    assert flag(ldap, "a@example.org") == "TRUE"
