"""``ldapquota --sync`` against a real slapd, checked with ldapsearch (not our LDAP code)."""

import os
import re
import time

import pytest
from helpers import both_readers, config_dict, maildirsize_text, make_maildir, run_cli, write_config

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def config_file(tmp_path, ldap, mail_root, reader):
    """Write the config (with optional overrides, read with ``reader``) and return its path."""

    def make(**sections):
        config = config_dict(ldap, mail_root, **sections)
        config["ldap"]["reader"] = reader
        return str(write_config(tmp_path / "ldapquota.yaml", config))

    return make


def flags(ldap):
    """address → (isOverQuota or None, quotaFreeBytes or None), read with ldapsearch."""
    entries = ldap.ldapsearch(ldap.people_dn, "(mail=*)", ["mail", "isOverQuota", "quotaFreeBytes"])
    out = {}
    for attrs in entries.values():
        lowered = {k.lower(): v for k, v in attrs.items()}
        out[lowered["mail"][0]] = (
            (lowered.get("isoverquota") or [None])[0],
            (lowered.get("quotafreebytes") or [None])[0],
        )
    return out


def csns(ldap):
    """dn → entryCSN: changes whenever an entry is written."""
    entries = ldap.ldapsearch(ldap.people_dn, "(mail=*)", ["entryCSN"])
    return {dn: attrs["entryCSN"][0] for dn, attrs in entries.items()}


def summary(result):
    line = [text for text in result.stdout.splitlines() if "accounts=" in text][-1]
    return {k: float(v) if "." in v else int(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


@both_readers
def test_cold_sync_sets_over_quota_accounts_and_leaves_the_rest_unwritten(ldap, mail_root, config_file):
    ldap.add_account("full@example.org", quota="1000")
    ldap.add_account("fine@example.org", quota="100000000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    make_maildir(mail_root, "fine@example.org", maildirsize=maildirsize_text("100000000S", (1500, 3)))

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 0, result.stderr
    assert flags(ldap) == {"full@example.org": ("TRUE", "0"), "fine@example.org": (None, None)}
    classes = ldap.ldapsearch(ldap.people_dn, "(mail=full@example.org)", ["objectClass"])
    assert "ldapQuotaStatus" in next(iter(classes.values()))["objectClass"]
    counts = summary(result)
    assert (counts["accounts"], counts["over"], counts["set"], counts["cleared"], counts["errors"]) == (2, 1, 1, 0, 0)


@both_readers
def test_second_sync_with_nothing_changed_writes_no_account(ldap, mail_root, config_file):
    ldap.add_account("full@example.org", quota="1000")
    ldap.add_account("near@example.org", quota=str(10 * MiB))
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    make_maildir(mail_root, "near@example.org", maildirsize=maildirsize_text("0S", (9 * MiB, 3)))
    path = config_file()
    assert run_cli(["-c", path, "--sync"]).returncode == 0
    before = csns(ldap)

    result = run_cli(["-c", path, "--sync"])

    assert result.returncode == 0, result.stderr
    assert csns(ldap) == before
    assert summary(result)["writes"] == 0


def test_flag_is_cleared_when_usage_falls_below_the_limit(ldap, mail_root, config_file):
    ldap.add_account("user@example.org", quota="1000")
    maildir = make_maildir(mail_root, "user@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    path = config_file()
    run_cli(["-c", path, "--sync"])
    assert flags(ldap)["user@example.org"][0] == "TRUE"

    with open(maildir / "maildirsize", "a") as handle:
        handle.write("-1000 -2\n")  # the user deleted two messages
    result = run_cli(["-c", path, "--sync"])

    assert result.returncode == 0, result.stderr
    assert flags(ldap)["user@example.org"] == ("FALSE", "500")
    assert summary(result)["cleared"] == 1


def test_free_bytes_are_published_only_within_the_margin(ldap, mail_root, config_file):
    ldap.add_account("near@example.org", quota=str(100 * MiB))
    ldap.add_account("far@example.org", quota=str(100 * MiB))
    make_maildir(mail_root, "near@example.org", maildirsize=maildirsize_text("0S", (90 * MiB, 10)))
    make_maildir(mail_root, "far@example.org", maildirsize=maildirsize_text("0S", (10 * MiB, 10)))

    run_cli(["-c", config_file(policy={"free_margin": "20MiB", "max_changes": "100%"}), "--sync"])

    assert flags(ldap) == {"near@example.org": (None, str(10 * MiB)), "far@example.org": (None, None)}


def test_free_bytes_are_removed_when_the_mailbox_moves_away_from_the_limit(ldap, mail_root, config_file):
    ldap.add_account("user@example.org", quota=str(100 * MiB))
    maildir = make_maildir(mail_root, "user@example.org", maildirsize=maildirsize_text("0S", (90 * MiB, 10)))
    path = config_file(policy={"free_margin": "20MiB"})
    run_cli(["-c", path, "--sync"])
    assert flags(ldap)["user@example.org"] == (None, str(10 * MiB))

    (maildir / "maildirsize").write_text(maildirsize_text("0S", (1 * MiB, 1)))
    run_cli(["-c", path, "--sync"])

    assert flags(ldap)["user@example.org"] == (None, None)


def test_sync_time_is_recorded_on_the_status_entry(ldap, mail_root, config_file):
    ldap.add_account("user@example.org", quota="1000")
    make_maildir(mail_root, "user@example.org", maildirsize=maildirsize_text("1000S", (10, 1)))
    before = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() - 2))

    assert run_cli(["-c", config_file(), "--sync"]).returncode == 0

    status = ldap.ldapsearch(ldap.ldapquota_dn, "(objectClass=*)", ["quotaSyncTime"], scope="base")
    stamp = next(iter(status.values()))["quotaSyncTime"][0]
    assert re.fullmatch(r"\d{14}Z", stamp) and stamp[:14] >= before


def test_dry_run_prints_changes_and_writes_nothing(ldap, mail_root, config_file):
    ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    before = csns(ldap)

    result = run_cli(["-c", config_file(), "--sync", "--dry-run"])

    assert result.returncode == 0, result.stderr
    assert "full@example.org: isOverQuota FALSE -> TRUE" in result.stdout
    assert csns(ldap) == before
    status = ldap.ldapsearch(ldap.ldapquota_dn, "(objectClass=*)", ["quotaSyncTime"], scope="base")
    assert "quotaSyncTime" not in next(iter(status.values()))


def test_limit_forms_attribute_maildirpp_default_header_and_unlimited(ldap, mail_root, config_file):
    # 2000 bytes used everywhere; each account gets its limit a different way.
    cases = {
        "kib@example.org": ("1", None),  # 1 × 1024 (quota_unit 1KiB) → over
        "pp@example.org": ("1000S,100C", None),  # Maildir++ string whatever the unit → over
        "count@example.org": ("10000000S,3C", None),  # count limit reached (3 messages) → over
        "dflt@example.org": (None, None),  # default_quota 1500 → over
        "zero@example.org": ("0", None),  # 0 means unlimited → not over
    }
    for address, (quota, _) in cases.items():
        ldap.add_account(address, quota=quota)
        make_maildir(mail_root, address, maildirsize=maildirsize_text("999999999S", (2000, 3)))

    result = run_cli(["-c", config_file(accounts={"quota_unit": "1KiB", "default_quota": 1500}), "--sync"])

    assert result.returncode == 0, result.stderr
    state = {address: value[0] for address, value in flags(ldap).items()}
    assert state == {
        "kib@example.org": "TRUE",
        "pp@example.org": "TRUE",
        "count@example.org": "TRUE",
        "dflt@example.org": "TRUE",
        "zero@example.org": None,
    }


def test_header_limit_is_used_when_ldap_and_config_give_none(ldap, mail_root, config_file):
    ldap.add_account("hdr@example.org")
    ldap.add_account("nohdr@example.org")
    make_maildir(mail_root, "hdr@example.org", maildirsize=maildirsize_text("1000S", (2000, 1)))
    make_maildir(mail_root, "nohdr@example.org", messages=[("1.x,S=5000:2,S", 5000)])

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 0, result.stderr
    assert {a: v[0] for a, v in flags(ldap).items()} == {"hdr@example.org": "TRUE", "nohdr@example.org": None}


def test_unmeasurable_mailbox_keeps_its_flag_and_is_counted_as_an_error(ldap, mail_root, config_file, tmp_path):
    dn = ldap.add_account("user@example.org", quota="1000")
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: ldapQuotaStatus\n-\nreplace: isOverQuota\nisOverQuota: TRUE\n")
    ldap.add_account("other@example.org", quota="1000")
    make_maildir(mail_root, "other@example.org", maildirsize=maildirsize_text("1000S", (10, 1)))
    # The user's maildir is a symlink leading out of the mail root: refused, not followed.
    outside = make_maildir(tmp_path / "elsewhere", "user@example.org", maildirsize=maildirsize_text("1000S", (1, 1)))
    (mail_root / "example.org" / "user").mkdir(parents=True)
    os.symlink(outside, mail_root / "example.org" / "user" / "Maildir")

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 1
    assert "outside mailboxes.root" in result.stderr
    assert flags(ldap)["user@example.org"][0] == "TRUE"
    assert summary(result)["errors"] == 1


def test_missing_maildir_of_a_flagged_account_keeps_the_flag(ldap, mail_root, config_file):
    dn = ldap.add_account("gone@example.org", quota="1000")
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: ldapQuotaStatus\n-\nreplace: isOverQuota\nisOverQuota: TRUE\n")
    ldap.add_account("new@example.org", quota="1000")  # never got mail: no maildir, no error
    make_maildir(mail_root, "someone@example.org")

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 1
    assert {a: v[0] for a, v in flags(ldap).items()} == {"gone@example.org": "TRUE", "new@example.org": None}
    counts = summary(result)
    assert (counts["errors"], counts["no_mailbox"]) == (1, 1)


@both_readers
def test_addresses_full_of_filter_metacharacters_are_measured_as_themselves(ldap, mail_root, config_file):
    for address, used in (("b*@example.org", 5000), ("x)(mail=*@example.org", 5000), ("bob@example.org", 10)):
        ldap.add_account(address, quota="1000", uid=f"u{abs(hash(address))}")
        make_maildir(mail_root, address, maildirsize=maildirsize_text("1000S", (used, 1)))

    result = run_cli(["-c", config_file(), "--sync"])
    assert result.returncode == 0, result.stderr
    assert {a: v[0] for a, v in flags(ldap).items()} == {
        "b*@example.org": "TRUE",
        "x)(mail=*@example.org": "TRUE",
        "bob@example.org": None,
    }
    shown = run_cli(["-c", config_file(), "--show", "b*@example.org"])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "address:  b*@example.org" in shown.stdout and "bob@" not in shown.stdout


# --------------------------------------------------------------------------- safety rules


def test_mass_flip_is_refused_with_exit_75_and_nothing_written(ldap, mail_root, config_file):
    for n in range(5):
        ldap.add_account(f"u{n}@example.org", quota="1000")
        make_maildir(mail_root, f"u{n}@example.org", maildirsize=maildirsize_text("1000S", (5000, 1)))
    ldap.add_account("ok@example.org", quota="1000")
    make_maildir(mail_root, "ok@example.org", maildirsize=maildirsize_text("1000S", (1, 1)))
    path = config_file(policy={"max_changes": 4})
    before = csns(ldap)

    refused = run_cli(["-c", path, "--sync"])

    assert refused.returncode == 75
    assert "would flip isOverQuota on 5 of 6 accounts" in refused.stderr
    assert "ldapquota: refused: accounts=6 over=5 set=5 cleared=0 unchanged=1 errors=0 writes=0 " in refused.stdout
    assert csns(ldap) == before

    forced = run_cli(["-c", path, "--sync", "--force"])
    assert forced.returncode == 0, forced.stderr
    assert sum(1 for v in flags(ldap).values() if v[0] == "TRUE") == 5


def test_percent_change_limit_counts_flips_against_all_accounts(ldap, mail_root, config_file):
    for n in range(10):
        ldap.add_account(f"u{n}@example.org", quota="1000")
        used = 5000 if n < 2 else 1
        make_maildir(mail_root, f"u{n}@example.org", maildirsize=maildirsize_text("1000S", (used, 1)))

    assert run_cli(["-c", config_file(policy={"max_changes": "10%"}), "--sync"]).returncode == 75
    assert run_cli(["-c", config_file(policy={"max_changes": "20%"}), "--sync"]).returncode == 0


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_mail_root_is_refused_with_exit_75(ldap, mail_root, config_file, state):
    dn = ldap.add_account("user@example.org", quota="1000")
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: ldapQuotaStatus\n-\nreplace: isOverQuota\nisOverQuota: TRUE\n")
    if state == "missing":
        mail_root.rmdir()
    before = csns(ldap)

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 75
    assert f"mailboxes.root {mail_root} " in result.stderr
    assert csns(ldap) == before


# --------------------------------------------------------------------------- directory trouble


@both_readers
def test_truncated_search_ends_with_exit_69_before_any_write(ldap, mail_root, config_file):
    for n in range(6):  # the limited account may see 3 entries
        ldap.add_account(f"u{n}@example.org", quota="1000")
        make_maildir(mail_root, f"u{n}@example.org", maildirsize=maildirsize_text("1000S", (5000, 1)))
    path = config_file(ldap={"bind_dn": ldap.limited_dn, "bind_password_file": str(ldap.limited_pw_file), "status_dn": None})
    before = csns(ldap)

    result = run_cli(["-c", path, "--sync"])

    assert result.returncode == 69, result.stderr
    assert "size limit" in result.stderr and "nothing is written" in result.stderr
    assert csns(ldap) == before
    # The summary counts only what was measured before the search failed.
    assert "ldapquota: failed: accounts=0 over=0 set=0 cleared=0 unchanged=0 errors=0 writes=0 " in result.stdout


def test_ldap_down_exits_69(mail_root, config_file, ldap):
    make_maildir(mail_root, "a@example.org")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    result = run_cli(["-c", config_file(ldap={"uri": f"ldap://127.0.0.1:{port}"}), "--sync"])
    assert result.returncode == 69
    assert "no LDAP server reachable" in result.stderr


@both_readers
def test_second_uri_is_used_when_the_first_is_down(ldap, mail_root, config_file):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))

    result = run_cli(["-c", config_file(ldap={"uri": [f"ldap://127.0.0.1:{dead}", ldap.uri]}), "--sync"])

    assert result.returncode == 0, result.stderr
    assert flags(ldap)["full@example.org"][0] == "TRUE"


def test_wrong_password_exits_77(ldap, mail_root, config_file, tmp_path):
    make_maildir(mail_root, "a@example.org")
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-password\n")
    result = run_cli(["-c", config_file(ldap={"bind_password_file": str(wrong)}), "--sync"])
    assert result.returncode == 77
    assert "invalid credentials" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_read_only_bind_cannot_write_and_exits_77(ldap, mail_root, config_file):
    ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    ldap.add_account("also@example.org", quota="1000")
    make_maildir(mail_root, "also@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    ldap.add_account("fine@example.org", quota=str(1000 * MiB))  # far from full: nothing to write
    make_maildir(mail_root, "fine@example.org", maildirsize=maildirsize_text(f"{1000 * MiB}S", (15, 3)))
    path = config_file(ldap={"bind_dn": ldap.exim_dn, "bind_password_file": str(ldap.exim_pw_file), "status_dn": None})

    result = run_cli(["-c", path, "--sync"])

    assert result.returncode == 77, result.stdout + result.stderr
    assert "refused" in result.stderr
    assert flags(ldap)["full@example.org"][0] is None
    # Every run ends with its summary line, a failed one too; the two accounts whose
    # writes it never got to are "unreached", not "unchanged".
    assert "ldapquota: failed: accounts=3 over=2 set=0 cleared=0 unchanged=1 errors=0 writes=0 " in result.stdout
    assert re.search(r" no_mailbox=0 unreached=2 seconds=[\d.]+$", result.stdout.rstrip()), result.stdout


def test_most_accounts_without_a_maildir_are_warned_about(ldap, mail_root, config_file):
    ldap.add_accounts([f"u{n}@example.org" for n in range(12)], quota="1000")
    make_maildir(mail_root, "u0@example.org")

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 0, result.stderr
    assert "11 of 12 accounts have no maildir: check mailboxes.root and mailboxes.path" in result.stderr


def test_missing_maildir_of_a_nearly_full_account_keeps_its_free_bytes(ldap, mail_root, config_file):
    # Published quotaFreeBytes says "nearly full"; raising it to the whole limit because
    # the maildir cannot be found would let bigger mail through the MTA's SIZE check.
    dn = ldap.add_account("near@example.org", quota="1000")
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: ldapQuotaStatus\n-\nreplace: quotaFreeBytes\nquotaFreeBytes: 10\n")
    make_maildir(mail_root, "someone@example.org")
    before = csns(ldap)

    result = run_cli(["-c", config_file(), "--sync"])

    assert result.returncode == 1
    assert "does not exist; keeping the stored state" in result.stderr
    assert flags(ldap)["near@example.org"] == (None, "10")
    assert csns(ldap) == before


@both_readers
def test_a_search_matching_no_account_is_refused_and_leaves_the_sync_time_alone(ldap, mail_root, config_file):
    ldap.add_account("a@example.org", quota="1000")
    make_maildir(mail_root, "a@example.org")
    path = config_file(ldap={"filter": "(objectClass=inetOrgPersn)"})  # a typo

    result = run_cli(["-c", path, "--sync"])

    assert result.returncode == 75
    assert "matched no account" in result.stderr
    assert "ldapquota: refused: accounts=0 " in result.stdout
    status = ldap.ldapsearch(ldap.ldapquota_dn, "(objectClass=*)", ["quotaSyncTime"], scope="base")
    assert "quotaSyncTime" not in next(iter(status.values()))


def test_sync_logs_where_the_config_says(ldap, mail_root, config_file, tmp_path):
    ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    log_file = tmp_path / "ldapquota.log"

    result = run_cli(["-c", config_file(logging={"target": str(log_file), "level": "info"}), "--sync"])

    assert result.returncode == 0, result.stderr
    assert "full@example.org: isOverQuota FALSE -> TRUE" in log_file.read_text()
    assert "isOverQuota FALSE -> TRUE" not in result.stderr
