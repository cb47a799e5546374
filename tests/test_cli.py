"""The command line as an operator meets it: usage errors, --check-config, --show, progress."""

import sys

import pytest
from helpers import config_dict, maildirsize_text, make_maildir, run_cli, run_on_terminal, write_config

# --------------------------------------------------------------------------- no server needed


def test_version_and_help_exit_0():
    assert run_cli(["--version"]).stdout.startswith("ldapquota ")
    assert "--sync" in run_cli(["--help"]).stdout


@pytest.mark.parametrize(
    "args",
    [["--dry-run"], ["--force"], ["--sync", "--show", "a@b"], ["--mode", "fail"], ["--sync", "--foreground"], ["--bogus"]],
)
def test_bad_usage_exits_64(args):
    result = run_cli(args)
    assert result.returncode == 64
    assert "usage: ldapquota" in result.stderr


def test_missing_config_file_exits_78_naming_it(tmp_path):
    result = run_cli(["-c", str(tmp_path / "nope.yaml"), "--sync"])
    assert result.returncode == 78
    assert f"cannot read config file {tmp_path / 'nope.yaml'}" in result.stderr


def test_config_from_environment_variable_is_used(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("ldap:\n  uri: ldap://127.0.0.1:1\n  base_dn: dc=x\n  nonsense: 1\nmailboxes:\n  root: /x\n")
    result = run_cli(["--sync"], env={"LDAPQUOTA_CONFIG": str(path)})
    assert result.returncode == 78
    assert f"{path}, line 4: ldap.nonsense: unknown key" in result.stderr


def test_bad_config_value_exits_78_with_key_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ldap:\n  uri: ldap://127.0.0.1:1\n  base_dn: dc=x\nmailboxes:\n  root: /x\npolicy:\n  free_margin: lots\n")
    result = run_cli(["-c", str(path), "--check-config"])
    assert result.returncode == 78
    assert f"{path}, line 7: policy.free_margin:" in result.stderr


def test_unreadable_password_file_exits_78_with_key_and_line(tmp_path):
    path = tmp_path / "pw.yaml"
    path.write_text(
        "ldap:\n  uri: ldap://127.0.0.1:1\n  base_dn: dc=x\n  bind_dn: cn=x\n"
        f"  bind_password_file: {tmp_path}/absent.secret\nmailboxes:\n  root: /x\n"
    )
    result = run_cli(["-c", str(path), "--sync"])
    assert result.returncode == 78
    assert f"{path}, line 5: ldap.bind_password_file: cannot read {tmp_path}/absent.secret" in result.stderr


# --------------------------------------------------------------------------- with slapd


@pytest.mark.integration
def test_check_config_passes_on_a_good_setup(ldap, mail_root, tmp_path):
    ldap.add_account("a@example.org", quota="1000")
    make_maildir(mail_root, "a@example.org")
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root))
    mark = ldap.log_mark()

    result = run_cli(["-c", str(path), "--check-config"])

    assert result.returncode == 0, result.stdout + result.stderr
    # The rights were tried with the No-Op control: both write checks passed, nothing was kept.
    assert result.stdout.count("checked with the No-Op control; nothing written") == 2
    assert ldap.writes_since(mark) == []
    assert "search of ou=people,dc=example,dc=org for (objectClass=inetOrgPerson) is complete: 1 accounts" in result.stdout
    assert "configuration OK" in result.stdout
    assert ldap.ldapquota_pw not in result.stdout + result.stderr


@pytest.mark.integration
def test_check_config_warns_about_duplicate_addresses(ldap, mail_root, tmp_path):
    ldap.add_account("dup@example.org", uid="dup1")
    ldap.add_account("dup@example.org", uid="dup2")
    make_maildir(mail_root, "dup@example.org")
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root))

    result = run_cli(["-c", str(path), "--check-config"])

    assert "1 addresses belong to more than one account (dup@example.org)" in result.stdout


@pytest.mark.integration
def test_check_config_reports_a_bind_that_may_not_write(ldap, mail_root, tmp_path):
    ldap.add_account("a@example.org", quota="1000")
    make_maildir(mail_root, "a@example.org")
    config = config_dict(ldap, mail_root, ldap={"bind_dn": ldap.exim_dn, "bind_password_file": str(ldap.exim_pw_file)})
    path = write_config(tmp_path / "c.yaml", config)

    result = run_cli(["-c", str(path), "--check-config"])

    assert result.returncode != 0
    assert "FAILED" in result.stdout and "write" in result.stdout


@pytest.fixture(scope="module")
def slapd_without_schema(slapd_factory):
    return slapd_factory(schema=False)


@pytest.mark.integration
def test_check_config_names_the_schema_file_when_the_schema_is_not_loaded(slapd_without_schema, mail_root, tmp_path):
    make_maildir(mail_root, "a@example.org")
    path = write_config(tmp_path / "c.yaml", config_dict(slapd_without_schema, mail_root))

    result = run_cli(["-c", str(path), "--check-config"])

    assert result.returncode == 78
    assert "lacks isOverQuota, quotaFreeBytes, quotaSyncTime, ldapQuotaStatus: load schema/ldapquota.ldif" in result.stdout


@pytest.mark.integration
def test_sync_without_the_schema_exits_78_naming_the_file(slapd_without_schema, mail_root, tmp_path):
    slapd_without_schema.clear_people()
    slapd_without_schema.add_account("full@example.org")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    config = config_dict(slapd_without_schema, mail_root, accounts={"quota_attribute": None}, ldap={"status_dn": None})
    path = write_config(tmp_path / "c.yaml", config)

    result = run_cli(["-c", str(path), "--sync"])

    assert result.returncode == 78, result.stderr
    assert "load schema/ldapquota.ldif" in result.stderr


@pytest.mark.integration
def test_show_explains_one_account(ldap, mail_root, tmp_path):
    dn = ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root))

    result = run_cli(["-c", str(path), "--show", "full@example.org"])

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"account:  {dn}" in lines
    assert "limit:    1000S (from mailQuota=1000)" in lines
    assert "usage:    1500 bytes, 3 messages (maildirsize)" in lines
    assert "decision: change to isOverQuota TRUE, quotaFreeBytes 0" in lines
    assert any(line.startswith("why:      1500 of 1000 bytes (150.0%)") for line in lines)
    assert ldap.ldapsearch(dn, "(objectClass=*)", ["isOverQuota"], scope="base")[dn].get("isOverQuota") is None


@pytest.mark.integration
def test_show_unknown_address_exits_1(ldap, mail_root, tmp_path):
    make_maildir(mail_root, "a@example.org")
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root))
    result = run_cli(["-c", str(path), "--show", "nobody@example.org"])
    assert result.returncode == 1
    assert "no account with mail=nobody@example.org" in result.stdout


@pytest.mark.integration
def test_sync_on_a_terminal_shows_progress(ldap, mail_root, tmp_path):
    entries = "".join(
        f"dn: uid=p{n},{ldap.people_dn}\nobjectClass: inetOrgPerson\nuid: p{n}\ncn: p{n}\nsn: p{n}\nmail: p{n}@example.org\n\n"
        for n in range(500)
    )
    ldap.ldapadd(entries)
    make_maildir(mail_root, "p0@example.org")
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root, accounts={"quota_attribute": None}))

    output = run_on_terminal([sys.executable, "-m", "ldapquota", "-c", str(path), "--sync"])

    assert "accounts measured" in output
    assert "accounts=500 " in output


@pytest.mark.integration
def test_check_config_warns_when_no_account_has_the_quota_attribute_or_a_maildir(ldap, mail_root, tmp_path):
    ldap.add_account("a@example.org")
    make_maildir(mail_root, "someone-else@example.org")
    config = config_dict(ldap, mail_root, mailboxes={"path": "{domain}/{localpart}/Mail"})
    path = write_config(tmp_path / "c.yaml", config)

    result = run_cli(["-c", str(path), "--check-config"])

    assert "no account has mailQuota (misspelt, or not readable by the bind DN?)" in result.stdout
    assert "0 of the first 1 accounts have a maildir where mailboxes.path ({domain}/{localpart}/Mail) says" in result.stdout


@pytest.mark.integration
def test_show_does_not_echo_control_characters(ldap, mail_root, tmp_path):
    make_maildir(mail_root, "a@example.org")
    path = write_config(tmp_path / "c.yaml", config_dict(ldap, mail_root))
    result = run_cli(["-c", str(path), "--show", "a@example.org\x1b[2J"])
    assert result.returncode == 1
    assert "\x1b" not in result.stdout
    assert "mail='a@example.org\\x1b[2J'" in result.stdout
