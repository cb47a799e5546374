"""docs/contract.md §5, "a limit we don't know is not the same as no limit": ``--sync``
against a real slapd, with no quota attribute and no default, so the ``maildirsize``
headers are the only limits; some of them are there but cannot be read."""

import os

import pytest
from helpers import config_dict, maildirsize_text, make_maildir, run_cli, write_config

pytestmark = pytest.mark.integration


def _sparse_nul_file(path):
    with open(path, "wb") as handle:
        handle.truncate(1 << 20)  # a hole: a megabyte of NULs, no block on disk


def test_an_unreadable_header_keeps_the_flag_and_counts_an_error(ldap, mail_root, tmp_path):
    planted = {
        "fifo@example.org": (os.mkfifo, "a FIFO"),
        "dir@example.org": (os.mkdir, "a directory"),
        "sparse@example.org": (_sparse_nul_file, "its first line holds NUL bytes"),
    }
    for address, (plant, _) in planted.items():
        ldap.add_account(address, extra={"isOverQuota": "TRUE"})  # no mailQuota
        maildir = make_maildir(mail_root, address, messages=[("1.host,S=100", 100)])
        plant(str(maildir / "maildirsize"))
    # Controls: a header that reads (under its limit) and no maildirsize at all
    # (no header: unlimited) are both cleared.
    ldap.add_account("readable@example.org", extra={"isOverQuota": "TRUE"})
    make_maildir(mail_root, "readable@example.org", maildirsize=maildirsize_text("1000S", (100, 1)))
    ldap.add_account("nofile@example.org", extra={"isOverQuota": "TRUE"})
    make_maildir(mail_root, "nofile@example.org", messages=[("1.host,S=100", 100)])
    config = config_dict(ldap, mail_root)
    assert "default_quota" not in config["accounts"]
    config["accounts"].pop("quota_attribute")
    path = write_config(tmp_path / "ldapquota.yaml", config)

    result = run_cli(["-c", str(path), "--sync"])

    assert result.returncode == 1, result.stdout + result.stderr
    # over=3: the three kept flags are still TRUE.
    assert "accounts=5 over=3 set=0 cleared=2 " in result.stdout and " errors=3 " in result.stdout
    entries = ldap.ldapsearch(ldap.people_dn, "(mail=*)", ["mail", "isOverQuota"])
    got = {attrs["mail"][0]: attrs.get("isOverQuota", [None])[0] for attrs in entries.values()}
    assert got == {"fifo@example.org": "TRUE", "dir@example.org": "TRUE", "sparse@example.org": "TRUE",
                   "readable@example.org": "FALSE", "nofile@example.org": "FALSE"}
    for address, (_, said) in planted.items():
        assert f"{address}: {mail_root}/example.org/{address.split('@')[0]}/Maildir/maildirsize is there but " \
               f"its quota line cannot be read ({said})" in result.stderr
    assert result.stderr.count("flag kept (TRUE)") == 3
