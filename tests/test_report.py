"""``ldapquota --report [--json] [--all]`` against a real slapd: measured like a sync, written
nowhere, checked against ``--show`` and ldapsearch (docs/contract.md §6)."""

import json
import os
import sys
from fractions import Fraction

import pytest
from helpers import config_dict, maildirsize_text, make_maildir, run_cli, run_on_terminal, write_config

from ldapquota.quota import Limit, Policy, Usage
from ldapquota.report import JSON_KEYS, NearFull, ReportRow, format_json, format_table, human_size, percent_of, sort_rows

MiB = 1024 * 1024

# --------------------------------------------------------------------------- no server needed


THOUSAND = Limit(1000)


def _row(address, usage=(0, 0), limit=THOUSAND, flag=None, over=False, error=None):
    used = None if usage is None else Usage(*usage)
    percent = percent_of(used, limit) if used is not None and limit is not None else None
    return ReportRow(address, f"uid={address}", used, limit, percent, flag, over, error)


def test_percent_is_the_larger_of_bytes_and_messages_and_none_when_unlimited():
    assert percent_of(Usage(500, 9), Limit(1000, 10)) == 90
    assert percent_of(Usage(950, 1), Limit(1000, 10)) == 95
    assert percent_of(Usage(1, 1), Limit(messages=3)) == Fraction(100, 3)
    assert percent_of(Usage(10**18, 5), Limit()) is None
    # Shown rounded down: short of the limit never reads as 100 %.
    [row] = json.loads(format_json([_row("u@x", (99999, 1), Limit(100000))]))
    assert row["percent"] == 99.99
    assert "99.9%" in format_table([_row("u@x", (99999, 1), Limit(100000))])[1]


def test_rows_go_fullest_first_then_unlimited_then_unmeasured():
    rows = [
        _row("half", (500, 1)),
        _row("broken", None, None, error="bad quota"),
        _row("free", (5, 1), Limit()),
        _row("full", (1500, 1), over=True),
        _row("count", (1, 99), Limit(1000, 100)),
    ]
    assert [row.address for row in sort_rows(rows)] == ["full", "count", "half", "free", "broken"]


def test_near_full_pick_follows_the_margin_and_the_clear_percent():
    from ldapquota.entry import AccountEntry
    from ldapquota.evaluation import Evaluation
    from ldapquota.quota import QuotaState, decide
    from ldapquota.sources.base import Measurement

    policy = Policy(over_percent=100, clear_percent=80, free_margin=100)

    def evaluation(used, limit, stored=None):
        entry = AccountEntry("uid=x", {"isOverQuota": [stored]} if stored else {})
        old = entry.quota_state
        usage = Usage(used, 1)
        return Evaluation(entry, old, None, Measurement(usage, limit, "test", "/x"), decide(usage, limit, old.over, policy))

    pick = NearFull(policy)
    assert pick(evaluation(950, Limit(1000)))  # 50 bytes free: within the margin
    assert pick(evaluation(8000, Limit(10000)))  # 80 %: at the clear percent
    assert not pick(evaluation(7999, Limit(10000)))
    assert not pick(evaluation(10**9, Limit()))  # unlimited
    assert pick(evaluation(10, Limit(10000), stored="TRUE"))  # LDAP says over, the decision not
    assert NearFull(policy, everyone=True)(evaluation(10**9, Limit()))
    assert pick(Evaluation(AccountEntry("uid=y", {}), QuotaState(False, None), error="bad quota"))


def test_table_is_aligned_and_marks_disagreement_and_escapes_control_characters():
    lines = format_table([_row("full@x", (1500, 3), over=True), _row("a\x1b[2J@x", (10, 1), flag=True)])
    assert lines[0].split() == ["ADDRESS", "USAGE", "LIMIT", "PERCENT", "LDAP", "DECISION"]
    assert lines[1].index("150.0%") + len("150.0%") == lines[0].index("PERCENT") + len("PERCENT")
    assert lines[1].endswith("! a sync would set it")
    assert lines[2].endswith("! a sync would clear it")
    assert "\x1b" not in "".join(lines) and "a\\x1b[2J@x" in lines[2]


def test_sizes_are_shown_in_binary_units_for_people():
    assert [human_size(n) for n in (0, 1023, 1536, 100 * MiB, 3 * 1024**4)] == ["0 B", "1023 B", "1.5 KiB", "100.0 MiB", "3.0 TiB"]
    assert format_table([_row("u@x", (1, 1), Limit(1024, 10))])[1].split()[5:9] == ["1.0", "KiB,", "10", "msgs"]


def test_json_has_exactly_the_contract_keys_and_is_one_array():
    assert json.loads(format_json([])) == []
    [parsed] = json.loads(format_json([_row("u@x", (10, 1), Limit(), flag=False)]))
    assert tuple(parsed) == JSON_KEYS
    assert (parsed["limit_bytes"], parsed["limit_messages"], parsed["percent"], parsed["flag"]) == (None, None, None, False)


@pytest.mark.parametrize("args", [["--json"], ["--all"], ["--sync", "--all"], ["--report", "--sync"], ["--report", "--dry-run"]])
def test_report_options_without_report_exit_64(args):
    result = run_cli(args)
    assert result.returncode == 64, result.stderr
    assert "usage: ldapquota" in result.stderr


# --------------------------------------------------------------------------- with slapd


@pytest.fixture
def accounts(ldap, mail_root):
    """A small directory with one account of each kind; address → dn."""
    dns = {
        "full@example.org": ldap.add_account("full@example.org", quota="1000"),
        "near@example.org": ldap.add_account("near@example.org", quota=str(100 * MiB)),
        "far@example.org": ldap.add_account("far@example.org", quota=str(100 * MiB)),
        "count@example.org": ldap.add_account("count@example.org", quota="100000000S,10C"),  # by messages
        "free@example.org": ldap.add_account("free@example.org", quota="0"),
        "stale@example.org": ldap.add_account("stale@example.org", quota="1000", extra={"isOverQuota": "TRUE"}),
        "set@example.org": ldap.add_account("set@example.org", quota="1000", extra={"isOverQuota": "FALSE"}),
        "bad@example.org": ldap.add_account("bad@example.org", quota="lots"),
    }
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("0S", (1500, 3)))
    make_maildir(mail_root, "near@example.org", maildirsize=maildirsize_text("0S", (95 * MiB, 40)))
    make_maildir(mail_root, "far@example.org", maildirsize=maildirsize_text("0S", (10 * MiB, 4)))
    make_maildir(mail_root, "count@example.org", maildirsize=maildirsize_text("0S", (100, 10)))
    make_maildir(mail_root, "free@example.org", maildirsize=maildirsize_text("0S", (5 * MiB, 4)))
    make_maildir(mail_root, "stale@example.org", maildirsize=maildirsize_text("0S", (10, 1)))
    make_maildir(mail_root, "set@example.org", maildirsize=maildirsize_text("0S", (1000, 2)))
    make_maildir(mail_root, "bad@example.org")
    return dns


@pytest.fixture
def config_path(ldap, mail_root, tmp_path):
    def make(**policy):
        settings = {"free_margin": "10MiB", "max_changes": "100%", **policy}
        return str(write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root, policy=settings)))

    return make


def _report_json(path, *extra):
    result = run_cli(["-c", path, "--report", "--json", *extra])
    assert result.returncode in (0, 1), result.stderr
    return result, json.loads(result.stdout)


def _show(path, address):
    """What --show says about one account: usage, limit, stored flag, decision."""
    lines = dict(line.split(":", 1) for line in run_cli(["-c", path, "--show", address]).stdout.splitlines() if ":" in line)
    return {key: value.strip() for key, value in lines.items()}


@pytest.mark.integration
def test_report_json_agrees_with_show_and_writes_nothing(ldap, accounts, config_path):
    path = config_path()
    mark = ldap.log_mark()
    before = {dn: ldap.entry_meta(dn)["modifyTimestamp"] for dn in accounts.values()}

    result, rows = _report_json(path)

    assert result.returncode == 1  # bad@example.org: an unusable quota value
    assert ldap.writes_since(mark) == []
    assert {dn: ldap.entry_meta(dn)["modifyTimestamp"] for dn in accounts.values()} == before
    status = ldap.ldapsearch(ldap.ldapquota_dn, "(objectClass=*)", ["quotaSyncTime"], scope="base")
    assert "quotaSyncTime" not in next(iter(status.values()))
    # Over, near (margin), disagreeing with LDAP both ways, failed; not far or unlimited.
    assert [row["address"] for row in rows] == [
        "full@example.org", "count@example.org", "set@example.org", "near@example.org", "stale@example.org", "bad@example.org",
    ]
    assert all(tuple(row) == JSON_KEYS for row in rows)
    assert "accounts=8 " in result.stderr and "errors=1 " in result.stderr and "shown=6 " in result.stderr
    for row in rows:
        assert row["dn"] == accounts[row["address"]]
        show = _show(path, row["address"])
        stored = show["stored"].split(",")[0]
        assert stored == f"isOverQuota {'TRUE' if row['flag'] else 'FALSE'}"
        if row["error"] is not None:
            assert row["error"] == show["error"]
            assert row["usage_bytes"] is None and row["over"] is False
            continue
        assert show["usage"].startswith(f"{row['usage_bytes']} bytes, {row['usage_messages']} messages")
        limit = Limit(row["limit_bytes"], row["limit_messages"])
        assert show["limit"].startswith(f"{limit} (from ")
        assert show["decision"].split(",")[0].endswith(f"isOverQuota {'TRUE' if row['over'] else 'FALSE'}")
    by_address = {row["address"]: row for row in rows}
    assert by_address["full@example.org"]["percent"] == 150.0
    assert by_address["count@example.org"]["percent"] == 100.0  # the messages, not the bytes
    assert (by_address["stale@example.org"]["flag"], by_address["stale@example.org"]["over"]) == (True, False)
    assert (by_address["set@example.org"]["flag"], by_address["set@example.org"]["over"]) == (False, True)
    assert by_address["near@example.org"]["flag"] is None
    assert "mailQuota" in by_address["bad@example.org"]["error"] or "lots" in by_address["bad@example.org"]["error"]


@pytest.mark.integration
def test_report_all_lists_every_account_with_null_percent_when_unlimited(ldap, accounts, config_path):
    result, rows = _report_json(config_path(), "--all")

    assert sorted(row["address"] for row in rows) == sorted(accounts)
    free = next(row for row in rows if row["address"] == "free@example.org")
    assert (free["percent"], free["limit_bytes"], free["limit_messages"], free["usage_bytes"]) == (None, None, None, 5 * MiB)
    percents = [row["percent"] for row in rows if row["percent"] is not None]
    assert percents == sorted(percents, reverse=True)
    assert [row["address"] for row in rows][-2:] == ["free@example.org", "bad@example.org"]


@pytest.mark.integration
def test_clear_percent_brings_in_accounts_short_of_the_margin(ldap, accounts, config_path):
    path = config_path(clear_percent=10, over_percent=100)

    _, rows = _report_json(path)

    assert "far@example.org" in {row["address"] for row in rows}  # 10 %: at the clear percent
    _, rows = _report_json(config_path(clear_percent=11, over_percent=100))
    assert "far@example.org" not in {row["address"] for row in rows}


@pytest.mark.integration
def test_report_text_is_a_table_with_the_summary_on_stdout(ldap, accounts, config_path):
    result = run_cli(["-c", config_path(), "--report"])

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "USAGE", "LIMIT", "PERCENT", "LDAP", "DECISION"]
    assert lines[1].split()[:6] == ["full@example.org", "1.5", "KiB,", "3", "msgs", "1000"]
    assert lines[1].endswith("! a sync would set it")
    assert any(line.startswith("stale@example.org") and line.endswith("! a sync would clear it") for line in lines)
    assert any(line.startswith("bad@example.org") and "error: " in line for line in lines)
    assert lines[-1].startswith("ldapquota: report: accounts=8 over=3 set=3 cleared=1 ")


@pytest.mark.integration
def test_truncated_search_exits_69_with_no_report(ldap, mail_root, tmp_path):
    for n in range(6):  # the limited account may see 3 entries
        ldap.add_account(f"u{n}@example.org", quota="1000")
        make_maildir(mail_root, f"u{n}@example.org", maildirsize=maildirsize_text("1000S", (5000, 1)))
    config = config_dict(ldap, mail_root, ldap={"bind_dn": ldap.limited_dn, "bind_password_file": str(ldap.limited_pw_file)})
    path = write_config(tmp_path / "c.yaml", config)

    result = run_cli(["-c", str(path), "--report", "--json"])

    assert result.returncode == 69, result.stderr
    assert "size limit" in result.stderr
    assert result.stdout == ""


@pytest.mark.integration
def test_report_on_a_terminal_shows_progress_and_keeps_stdout_pure_json(ldap, mail_root, tmp_path):
    # 600 accounts: more than one batch, so the worker processes measure (and carry --all back).
    addresses = [f"p{n}@example.org" for n in range(600)]
    ldap.add_accounts(addresses, quota="1000")
    make_maildir(mail_root, "p0@example.org", maildirsize=maildirsize_text("0S", (2000, 1)))
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root, mailboxes={"workers": 2}))
    out = tmp_path / "stdout.json"

    with open(out, "w") as stdout:
        terminal = run_on_terminal([sys.executable, "-m", "ldapquota", "-c", str(path), "--report", "--json", "--all"], stdout=stdout)

    assert "accounts measured" in terminal
    assert "report: accounts=600 over=1 " in terminal
    rows = json.loads(out.read_text())
    assert len(rows) == 600 and rows[0]["address"] == "p0@example.org"
    assert sorted(row["address"] for row in rows) == sorted(addresses)


@pytest.mark.integration
def test_unmounted_mail_root_is_refused_not_reported_empty(ldap, mail_root, config_path):
    ldap.add_account("a@example.org", quota="1000")
    path = config_path()
    os.rmdir(mail_root)

    result = run_cli(["-c", path, "--report", "--json"])

    assert result.returncode == 75
    assert "does not exist" in result.stderr and result.stdout == ""

