"""``render_exim_config`` as text: no Exim, no LDAP. What Exim makes of it is in test_exim.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from ldapquota.config import parse_config
from ldapquota.exim import (
    BLOCK_NAMES,
    EximConfigError,
    nettime,
    render_exim_config,
    render_query,
    replace_blocks,
    split_blocks,
    url_encode,
)

PASSWORD = "s3cret-Pa55-that-must-never-show"


def make_config(tmp_path: Path, **sections) -> object:
    """A config from YAML snippets per section (``ldap="uri: ..."``) over sane defaults."""
    secret = tmp_path / "exim.secret"
    secret.write_text(PASSWORD + "\n")
    defaults = {
        "ldap": "uri: ldap://ldap.example.org:389\nbase_dn: ou=people,dc=example,dc=org",
        "mailboxes": f"root: {tmp_path}",
        "mta": f"bind_dn: cn=exim,ou=services,dc=example,dc=org\nbind_password_file: {secret}",
    }
    defaults.update(sections)
    text = "".join(
        f"{name}:\n" + "".join(f"  {line}\n" for line in body.splitlines()) for name, body in defaults.items()
    )
    return parse_config(text, str(tmp_path / "ldapquota.yaml"))


def code_lines(text: str) -> str:
    """The text without comment lines (what Exim acts on)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


# --------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("mode", ["defer", "fail"])
def test_three_blocks_each_opened_by_its_marker(config, mode):
    text = render_exim_config(config, mode)
    starts = [line for line in text.splitlines() if line.startswith("# ldapquota: ")]
    assert starts == ["# ldapquota: main", "# ldapquota: acl_smtp_rcpt", "# ldapquota: routers"]
    blocks = split_blocks(text)
    assert list(blocks) == list(BLOCK_NAMES)
    for name, block in blocks.items():
        assert block.splitlines()[0] == f"# ldapquota: {name}"
        assert block.splitlines()[-1] == f"# ldapquota end: {name}"
    assert "".join(blocks.values()).count("\n") <= text.count("\n")


def test_split_without_end_lines_runs_to_the_next_marker():
    blocks = split_blocks("junk\n# ldapquota: main\nA = 1\n\n# ldapquota: routers\nr:\n  driver = accept\n")
    assert blocks == {"main": "# ldapquota: main\nA = 1\n", "routers": "# ldapquota: routers\nr:\n  driver = accept\n"}


def test_replace_blocks_swaps_regions_and_insists_on_all(config):
    rendered = split_blocks(render_exim_config(config, "fail"))
    skeleton = "a\n# ldapquota: main\nOLDSTUFF\n# ldapquota end: main\nb\n  # ldapquota: acl_smtp_rcpt\n  OLDSTUFF\n  # ldapquota end: acl_smtp_rcpt\nc\n# ldapquota: routers\n# ldapquota end: routers\n"
    out = replace_blocks(skeleton, rendered)
    assert "OLDSTUFF" not in out and out.startswith("a\n") and "\nb\n" in out and "\nc\n" in out
    assert split_blocks(out) == rendered
    empty = replace_blocks(skeleton, dict.fromkeys(BLOCK_NAMES, ""))
    assert empty == "a\nb\nc\n"
    with pytest.raises(ValueError):
        replace_blocks("a\n", rendered)
    with pytest.raises(ValueError):
        replace_blocks("# ldapquota: main\nno end\n", {"main": ""})


# --------------------------------------------------------------------------- the lookup


def test_every_tainted_value_goes_through_quote_ldap(config, tmp_path):
    for mode in ("defer", "fail"):
        for on_error in ("defer", "accept"):
            cfg = make_config(tmp_path, mta=f"bind_dn: cn=exim,dc=x\non_ldap_error: {on_error}")
            code = code_lines(render_exim_config(cfg, mode))
            quoted = code.count("${quote_ldap:$local_part@$domain}")
            assert quoted >= 1
            rest = code.replace("${quote_ldap:$local_part@$domain}", "")
            for tainted in ("$local_part", "$domain", "$sender", "$h_", "$rcpt", "$recipient", "$acl_arg"):
                assert tainted not in rest, (mode, on_error, tainted)


def test_the_query_combines_the_config_filter_with_the_address_match(tmp_path):
    cfg = make_config(
        tmp_path,
        ldap="uri: ldap://ldap.example.org\nbase_dn: ou=people,dc=example,dc=org\nfilter: (&(objectClass=inetOrgPerson)(accountStatus=active))",
        accounts="address_attribute: mailLocalAddress",
    )
    query = render_query(cfg)
    url = query.split()[-1]
    assert url == (
        "ldap://ldap.example.org:389/ou=people,dc=example,dc=org?isOverQuota,quotaFreeBytes,mailLocalAddress?sub?"
        "(&(&(objectClass=inetOrgPerson)(accountStatus=active))(mailLocalAddress=${quote_ldap:$local_part@$domain}))"
    )


def test_exactly_one_entry_lookups_only(config):
    code = code_lines(render_exim_config(config))
    assert "${lookup ldap{" in code
    assert not re.search(r"lookup ldap(m|dn)\b", code)
    # No SIZE= limit: a size limit of 1 would hide a duplicate instead of failing on it.
    assert not re.search(r"\bsize=", render_query(config), re.IGNORECASE)


def test_config_text_cannot_inject_into_the_expansion(tmp_path):
    cfg = make_config(
        tmp_path,
        ldap="uri: ldap://ldap.example.org\nbase_dn: ou=Mail ${run{/bin/x}} users,dc=example,dc=org\nfilter: \"(&(objectClass=*)(description=a?b%c #d\\\\2a))\"",
        mta='bind_dn: cn=Exim \\"MTA\\" \\5C ${x},dc=example,dc=org\ndefer_text: 452 4.2.2 Full $run \\N',
    )
    query = render_query(cfg)
    options, url = query.rsplit(" ", 1)
    base, attrs, scope, search = url.split("/", 3)[3].split("?")
    assert base == "ou=Mail%20%24%7Brun%7B%2Fbin%2Fx%7D%7D%20users,dc=example,dc=org"
    assert search.startswith("(&(&(objectClass=*)(description=a%3Fb%25c%20%23d%5C2a))(")
    assert r'user="cn=Exim \\\\\\"MTA\\\\\\" \\\\5C \$\{x\},dc=example,dc=org"' in options
    text = render_exim_config(cfg)
    assert "Full \\$run \\\\N" in text
    assert "${run" not in text


def test_url_encode_keeps_filter_syntax_and_encodes_the_rest():
    assert url_encode("(&(a=b*)(!(c>=1)))") == "(&(a=b*)(!(c>=1)))"
    assert url_encode("ü ?#%$/{}\\") == "%C3%BC%20%3F%23%25%24%2F%7B%7D%5C"


def test_the_password_is_read_by_exim_and_never_printed(config, tmp_path):
    for mode in ("defer", "fail"):
        text = render_exim_config(config, mode)
        assert PASSWORD not in text
        secret = str(tmp_path / "exim.secret")
        assert "pass=${quote:${readfile{%s}{}}}" % secret in text


def test_hide_guards_the_option_holding_the_credentials(config):
    routers = split_blocks(render_exim_config(config))["routers"]
    data = [line for line in routers.splitlines() if re.match(r"\s*(hide\s+)?data\s*=", line)]
    assert len(data) == 1 and data[0].split()[0] == "hide"


def test_anonymous_bind_has_no_user_or_pass(tmp_path):
    cfg = make_config(tmp_path, mta="on_ldap_error: defer")
    query = render_query(cfg)
    assert "user=" not in query and "pass=" not in query


def test_short_network_and_search_timeouts(tmp_path):
    one = make_config(tmp_path)
    assert "nettime=3 time=3 " in render_query(one)
    many = make_config(
        tmp_path,
        ldap="uri: [ldap://a.example.org, ldap://b.example.org:3389, ldap://c.example.org]\nbase_dn: dc=example,dc=org",
        mta="on_ldap_error: accept",
    )
    # Three servers tried in turn, two lookups (router and ACL) in fail-open mode: the
    # worst case must stay under the 10 s of docs/contract.md §8.
    seconds = nettime(many)
    assert seconds * 3 * 2 <= 10
    query = render_query(many)
    assert f"nettime={seconds} time={seconds} " in query
    assert "servers=a.example.org::389:b.example.org::3389:c.example.org::389 ldap:///dc=example,dc=org?" in query


# --------------------------------------------------------------------------- TLS


def test_ldaps_and_starttls_turn_on_certificate_checks(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    plain = code_lines(split_blocks(render_exim_config(make_config(tmp_path)))["main"])
    assert "ldap_require_cert" not in plain and "ldap_start_tls" not in plain
    ldaps = make_config(tmp_path, ldap=f"uri: ldaps://ldap.example.org\nbase_dn: dc=example,dc=org\nca_file: {ca}")
    main = code_lines(split_blocks(render_exim_config(ldaps))["main"])
    assert "ldap_require_cert = demand" in main and f"ldap_ca_cert_file = {ca}" in main
    assert "ldap_start_tls" not in main
    assert "ldaps://ldap.example.org:636/" in render_query(ldaps)
    starttls = make_config(tmp_path, ldap="uri: ldap://ldap.example.org\nbase_dn: dc=example,dc=org\nstart_tls: true")
    main = code_lines(split_blocks(render_exim_config(starttls))["main"])
    assert "ldap_start_tls = true" in main and "ldap_require_cert = demand" in main


def test_mixed_schemes_cannot_be_one_exim_lookup(tmp_path):
    cfg = make_config(tmp_path, ldap="uri: [ldaps://a.example.org, ldap://b.example.org]\nbase_dn: dc=x")
    with pytest.raises(EximConfigError, match="one scheme"):
        render_exim_config(cfg)


# --------------------------------------------------------------------------- modes and texts


def test_modes_answer_with_the_configured_texts(tmp_path):
    cfg = make_config(
        tmp_path,
        mta="defer_text: 452 4.2.2 Quota exceeded, try later\nfail_text: 552 5.2.2 Quota exceeded, sorry",
    )
    defer = code_lines(render_exim_config(cfg, "defer"))
    assert ":defer:452 4.2.2 Quota exceeded, try later" in defer
    assert re.search(r"^  defer\s+domains\s+= \+local_domains$", defer, re.MULTILINE)
    assert "message   = 452 4.2.2 Quota exceeded, try later" in defer
    assert ":fail:" not in defer and "552" not in defer
    fail = code_lines(render_exim_config(cfg, "fail"))
    assert ":fail:552 5.2.2 Quota exceeded, sorry" in fail
    assert re.search(r"^  deny\s+domains\s+= \+local_domains$", fail, re.MULTILINE)
    assert "message   = 552 5.2.2 Quota exceeded, sorry" in fail
    assert ":defer:" not in fail and "452" not in fail
    with pytest.raises(ValueError):
        render_exim_config(cfg, "bounce")


def test_the_router_only_verifies_and_may_defer_or_fail(config):
    routers = code_lines(split_blocks(render_exim_config(config))["routers"])
    lines = [line.strip() for line in routers.splitlines()]
    assert "ldapquota:" in lines and "driver      = redirect" in lines
    for option in ("verify_only", "allow_defer", "allow_fail"):
        assert option in lines


def test_the_size_check_needs_a_declared_size_and_a_published_free_space(config):
    acl = code_lines(split_blocks(render_exim_config(config))["acl_smtp_rcpt"])
    assert "condition = ${if >{$message_size}{0}}" in acl
    # quotaFreeBytes absent: compared with $message_size itself, which is never larger.
    assert "{${extract{quotaFreeBytes}{$value}{$value}{$message_size}}}{$message_size}}" in acl


def test_fail_closed_never_swallows_a_lookup_in_a_warn(config):
    code = code_lines(render_exim_config(config))
    assert "warn" not in code and "${acl{" not in code


def test_fail_open_resets_acl_variables_before_setting_them(tmp_path):
    cfg = make_config(tmp_path, mta="on_ldap_error: accept")
    text = render_exim_config(cfg)
    acl = code_lines(split_blocks(text)["acl_smtp_rcpt"])
    reset = acl.index("warn    set acl_m_ldapquota_free =\n")
    assign = acl.index("set acl_m_ldapquota_free = ${lookup")
    assert reset < assign
    main = code_lines(split_blocks(text)["main"])
    inline = main[main.index("LDAPQUOTA_OVER_ACL = "):].splitlines()[0]
    statements = re.findall(r"\\N(.*?)\\N", inline)
    assert statements[0] == "warn set acl_m_ldapquota_over = FALSE"
    assert statements[1].startswith("warn set acl_m_ldapquota_over = ${lookup ldap{LDAPQUOTA_QUERY}")
    assert statements[2:] == ["accept condition = $acl_m_ldapquota_over"]
    assert inline.endswith("\\N\\nmessage = :defer:452 4.2.2 Mailbox full")
    assert "hide data   = ${acl{LDAPQUOTA_OVER_ACL}}" in split_blocks(text)["routers"]


def test_macro_names_do_not_contain_each_other(tmp_path):
    text = code_lines(render_exim_config(make_config(tmp_path, mta="on_ldap_error: accept")))
    names = re.findall(r"^([A-Z][A-Z0-9_]*) = ", text, re.MULTILINE)
    assert len(names) == 2
    for a in names:
        for b in names:
            assert a == b or a not in b


# --------------------------------------------------------------------------- the shipped example


def test_the_example_exim_config_holds_what_ldapquota_prints_for_its_config(tmp_path):
    """examples/exim/exim4.conf carries the blocks for examples/exim/ldapquota.yaml."""
    yaml_text = (REPO / "examples" / "exim" / "ldapquota.yaml").read_text()
    secret = tmp_path / "bind.secret"
    secret.write_text("x\n")
    yaml_text = yaml_text.replace("/etc/ldapquota/bind.secret", str(secret))
    config = parse_config(yaml_text, "examples/exim/ldapquota.yaml")
    example = (REPO / "examples" / "exim" / "exim4.conf").read_text()
    assert split_blocks(example) == split_blocks(render_exim_config(config, "defer"))


def test_the_cli_prints_the_rendering(tmp_path):
    cfg = make_config(tmp_path)
    path = tmp_path / "ldapquota.yaml"
    path.write_text(
        f"ldap:\n  uri: ldap://ldap.example.org:389\n  base_dn: ou=people,dc=example,dc=org\n"
        f"mailboxes:\n  root: {tmp_path}\n"
        f"mta:\n  bind_dn: cn=exim,ou=services,dc=example,dc=org\n  bind_password_file: {tmp_path / 'exim.secret'}\n"
    )
    for mode in ("defer", "fail"):
        args = ["-c", str(path), "--exim-config"] + (["--mode", mode] if mode != "defer" else [])
        result = run_cli(args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == render_exim_config(cfg, mode)
        assert PASSWORD not in result.stdout + result.stderr
