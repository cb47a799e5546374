"""The shipped schema (schema/) and ACL example (examples/slapd-acl.ldif),
checked with the real OpenLDAP tools.

Three layers:
- the files themselves: slaptest accepts ldapquota.schema, converts it to
  exactly what ldapquota.ldif says, and every OID sits under one 2.25 arc;
- the live fixture slapd, which loaded the shipped .ldif: the syntax and
  matching rules behave as docs/contract.md §3 promises (TRUE/FALSE only,
  integer ordering, SINGLE-VALUE, the auxiliary class);
- the shipped ACL example, loaded into the same slapd: each service account
  can do exactly what it needs and nothing more, and size limits are set so
  that a big paged search is complete (and a small limit is detectable).

The oracle is the OpenLDAP command line (ldapsearch, ldapmodify, slaptest),
never ldap3, which the product itself uses.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Optional

import pytest
from servers.slapd import (
    PRODUCT_SCHEMA_FILE,
    PRODUCT_SCHEMA_LDIF,
    LdapToolError,
    Slapd,
    find_tool,
    parse_ldif,
    requires_slapd,
)

SCHEMA_ATTRS = ("olcObjectIdentifier", "olcAttributeTypes", "olcObjectClasses")
SPEC_ATTRIBUTES = {
    # name: (syntax, equality, ordering)
    "isOverQuota": ("1.3.6.1.4.1.1466.115.121.1.7", "booleanMatch", None),
    "quotaFreeBytes": ("1.3.6.1.4.1.1466.115.121.1.27", "integerMatch", "integerOrderingMatch"),
    "quotaSyncTime": ("1.3.6.1.4.1.1466.115.121.1.24", "generalizedTimeMatch", "generalizedTimeOrderingMatch"),
}
SPEC_CLASS = "ldapQuotaStatus"


# ---------------------------------------------------------------------------
# helpers: schema definitions as data


def _tokens(definition: str) -> list[str]:
    return re.findall(r"'(?:[^'\\]|\\.)*'|\(|\)|\$|[^\s()$']+", definition)


def parse_definition(definition: str) -> dict[str, object]:
    """An RFC 4512 attribute type / object class description as a dict.

    ``{"oid": ..., "NAME": [...], "DESC": ..., "SINGLE-VALUE": True, "MAY": [...], ...}``
    """
    tokens = _tokens(definition)
    assert tokens[0] == "(" and tokens[-1] == ")", definition
    tokens = tokens[1:-1]
    result: dict[str, object] = {"oid": tokens[0]}
    i = 1
    while i < len(tokens):
        key = tokens[i]
        i += 1
        if i < len(tokens) and tokens[i] == "(":
            end = tokens.index(")", i)
            result[key] = [t.strip("'") for t in tokens[i + 1:end] if t != "$"]
            i = end + 1
        elif i < len(tokens) and (tokens[i].startswith("'") or not tokens[i].isupper()):
            value = tokens[i].strip("'")
            result[key] = [value] if key in ("NAME", "MAY", "MUST", "SUP") else value
            i += 1
        else:
            result[key] = True  # a flag such as SINGLE-VALUE or AUXILIARY
    return result


def _strip_order(value: str) -> str:
    # cn=config's X-ORDERED prefix "{3}" is bookkeeping, not definition.
    return re.sub(r"^\{\d+\}", "", value)


def _normalise(value: str) -> str:
    return " ".join(_strip_order(value).split())


def schema_values(attrs: dict[str, list[str]]) -> dict[str, list[str]]:
    """The definition attributes of a cn=schema entry, normalised, in order."""
    return {name: [_normalise(v) for v in attrs.get(name, [])] for name in SCHEMA_ATTRS}


def shipped_ldif() -> tuple[str, dict[str, list[str]]]:
    records = parse_ldif(PRODUCT_SCHEMA_LDIF.read_text())
    assert len(records) == 1, "schema/ldapquota.ldif must hold exactly one entry"
    return records[0]


def resolve_oid(oid: str, macros: dict[str, str]) -> str:
    """Expand an objectIdentifier macro reference such as ``LdqAttr:1``."""
    name, _, rest = oid.partition(":")
    if name in macros:
        base = resolve_oid(macros[name], macros)
        return f"{base}.{rest}" if rest else base
    return oid


def macros_of(values: list[str]) -> dict[str, str]:
    return dict(v.split(None, 1) for v in values)


def slaptest_convert(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Optional[dict[str, list[str]]]]:
    """Run slaptest on a slapd.conf that includes schema/ldapquota.schema.

    Returns slaptest's result and the cn=config entry it generated for our
    schema (None if it generated none).
    """
    requires_slapd()
    schema_dir = Path("/etc/ldap/schema")
    conf = tmp_path / "slapd.conf"
    conf.write_text(
        "".join(f"include {schema_dir / name}.schema\n" for name in ("core", "cosine", "inetorgperson"))
        + f"include {PRODUCT_SCHEMA_FILE}\n"
    )
    out = tmp_path / "slapd.d"
    out.mkdir()
    slaptest = find_tool("slaptest")
    assert slaptest, "slaptest not found"
    proc = subprocess.run([slaptest, "-f", str(conf), "-F", str(out)], capture_output=True, text=True)
    generated = list((out / "cn=config" / "cn=schema").glob("cn={*}ldapquota.ldif"))
    if not generated:
        return proc, None
    (_, attrs), = parse_ldif(generated[0].read_text())
    return proc, attrs


def subschema(server: Slapd) -> dict[str, dict[str, object]]:
    """The live server's attribute types and object classes, by lower-case name."""
    found = server.ldapsearch(
        "cn=Subschema", "(objectClass=*)", ["attributeTypes", "objectClasses"], scope="base",
        as_dn=server.ldapquota_dn,
    )
    attrs = found["cn=Subschema"]
    defs: dict[str, dict[str, object]] = {}
    for value in attrs["attributeTypes"] + attrs["objectClasses"]:
        parsed = parse_definition(value)
        for name in parsed.get("NAME", []):  # type: ignore[union-attr]
            defs[name.lower()] = parsed
    return defs


def modify(dn: str, *changes: str) -> str:
    """A modify change record; each change is e.g. "replace: mail\\nmail: x"."""
    return f"dn: {dn}\nchangetype: modify\n" + "-\n".join(c.rstrip("\n") + "\n" for c in changes)


def refused(server: Slapd, ldif: str, **kw: object) -> int:
    """The LDAP result code of an ldapmodify that must fail."""
    with pytest.raises(LdapToolError) as info:
        server.ldapmodify(ldif, **kw)  # type: ignore[arg-type]
    return info.value.result_code


def attr(entry: Optional[dict[str, list[str]]], name: str) -> list[str]:
    """Values of ``name`` in an entry, whatever case the server used."""
    for key, values in (entry or {}).items():
        if key.lower() == name.lower():
            return values
    return []


# ---------------------------------------------------------------------------
# the files


def test_schema_file_is_accepted_by_slaptest(tmp_path: Path) -> None:
    proc, generated = slaptest_convert(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert generated is not None, "slaptest produced no cn=config entry for ldapquota.schema"


def test_ldif_defines_what_slaptest_makes_of_schema_file(tmp_path: Path) -> None:
    # The two files are maintained by hand; this keeps them from drifting.
    proc, generated = slaptest_convert(tmp_path)
    assert generated is not None, proc.stdout + proc.stderr
    _, shipped = shipped_ldif()
    assert schema_values(shipped) == schema_values(generated)


def test_ldif_is_a_plain_cn_config_schema_entry() -> None:
    # What ldapadd -Y EXTERNAL needs: no {n} in the DN, no operational
    # attributes (entryUUID, createTimestamp... are refused on add).
    dn, attrs = shipped_ldif()
    assert dn == "cn=ldapquota,cn=schema,cn=config"
    assert attrs["objectClass"] == ["olcSchemaConfig"]
    assert attrs["cn"] == ["ldapquota"]
    assert set(attrs) == {"objectClass", "cn", *SCHEMA_ATTRS}
    assert not any(v.startswith("{") for name in SCHEMA_ATTRS for v in attrs[name])


def test_all_oids_sit_under_one_uuid_arc() -> None:
    _, attrs = shipped_ldif()
    macros = macros_of(attrs["olcObjectIdentifier"])
    oids = [
        resolve_oid(str(parse_definition(v)["oid"]), macros)
        for v in attrs["olcAttributeTypes"] + attrs["olcObjectClasses"]
    ]
    matches = [re.match(r"^2\.25\.(\d+)\.\d+(\.\d+)*$", oid) for oid in oids]
    assert all(matches), f"OIDs not under a 2.25.<uuid> arc: {oids}"
    arcs = {m.group(1) for m in matches if m}
    assert len(arcs) == 1, f"OIDs under more than one arc: {oids}"
    (arc,) = arcs
    assert arc.isdigit() and int(arc) < 2**128, f"{arc} is not a UUID as an integer"
    assert len(set(oids)) == len(oids), f"duplicate OIDs: {oids}"
    # The .schema file uses the same root.
    assert f"2.25.{arc}" in PRODUCT_SCHEMA_FILE.read_text()


def test_both_files_say_how_to_load_them_and_suggest_the_index() -> None:
    schema_text = PRODUCT_SCHEMA_FILE.read_text()
    ldif_text = PRODUCT_SCHEMA_LDIF.read_text()
    for text in (schema_text, ldif_text):
        assert "ldapadd -Y EXTERNAL -H ldapi:/// -f schema/ldapquota.ldif" in text
        assert "isOverQuota eq" in text
    assert re.search(r"^#\s+slapd\.conf:\s+include\s+\S*ldapquota\.schema", schema_text, re.MULTILINE)


def test_ldif_loads_into_a_running_slapd_with_ldapadd_external(slapd_factory) -> None:
    # The documented cn=config route, on a directory that lacks our schema.
    server = slapd_factory(schema=False)
    try:
        assert "isoverquota" not in subschema(server)
        proc = server.ldap_tool("ldapadd", "-f", str(PRODUCT_SCHEMA_LDIF), external=True)
        assert proc.returncode == 0, proc.stderr
        defs = subschema(server)
        assert {"isoverquota", "quotafreebytes", "quotasynctime", "ldapquotastatus"} <= set(defs)
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# the live directory: what slapd made of the shipped .ldif


def test_live_definitions_follow_spec(ldap: Slapd) -> None:
    defs = subschema(ldap)
    for name, (syntax, equality, ordering) in SPEC_ATTRIBUTES.items():
        definition = defs[name.lower()]
        assert definition["SYNTAX"] == syntax, name
        assert definition["EQUALITY"] == equality, name
        assert definition.get("ORDERING") == ordering, name
        assert definition.get("SINGLE-VALUE") is True, name
        assert str(definition["oid"]).startswith("2.25."), name
    cls = defs[SPEC_CLASS.lower()]
    assert cls.get("AUXILIARY") is True
    assert [s.lower() for s in cls["SUP"]] == ["top"]  # type: ignore[union-attr]
    assert sorted(cls["MAY"]) == sorted(SPEC_ATTRIBUTES)  # type: ignore[arg-type]
    assert "MUST" not in cls


def test_boolean_accepts_exactly_TRUE_and_FALSE(ldap: Slapd) -> None:
    over = ldap.add_account("over@example.org", extra={"isOverQuota": "TRUE"})
    under = ldap.add_account("under@example.org", extra={"isOverQuota": "FALSE"})
    assert attr(ldap.get_entry(over), "isOverQuota") == ["TRUE"]
    assert attr(ldap.get_entry(under), "isOverQuota") == ["FALSE"]


@pytest.mark.parametrize("spelling", ["true", "yes", "True", "false", "1", ""])
def test_boolean_rejects_other_spellings(ldap: Slapd, spelling: str) -> None:
    dn = ldap.add_account("a@example.org", extra={"isOverQuota": "FALSE"})
    before = ldap.entry_meta(dn)
    code = refused(ldap, modify(dn, f"replace: isOverQuota\nisOverQuota: {spelling}"))
    assert code == 21  # invalidAttributeSyntax
    assert ldap.entry_meta(dn) == before


def test_boolean_filter_TRUE_matches_only_true_entries(ldap: Slapd) -> None:
    over = ldap.add_account("over@example.org", extra={"isOverQuota": "TRUE"})
    ldap.add_account("under@example.org", extra={"isOverQuota": "FALSE"})
    ldap.add_account("plain@example.org")
    assert set(ldap.ldapsearch(ldap.people_dn, "(isOverQuota=TRUE)", ["1.1"])) == {over}


def test_boolean_filter_lowercase_true_matches_nothing(ldap: Slapd) -> None:
    # The trap MTA configs must avoid: the assertion value is not a BOOLEAN.
    ldap.add_account("over@example.org", extra={"isOverQuota": "TRUE"})
    assert ldap.ldapsearch(ldap.people_dn, "(isOverQuota=true)", ["1.1"]) == {}


def test_quota_free_bytes_holds_two_to_the_40(ldap: Slapd) -> None:
    dn = ldap.add_account("big@example.org", extra={"quotaFreeBytes": 2**40})
    assert attr(ldap.get_entry(dn), "quotaFreeBytes") == [str(2**40)]


def test_quota_free_bytes_ordering_filter(ldap: Slapd) -> None:
    dns = {n: ldap.add_account(f"u{n}@example.org", extra={"quotaFreeBytes": n}) for n in (0, 100, 101, 2**40)}
    found = ldap.ldapsearch(ldap.people_dn, "(quotaFreeBytes<=100)", ["1.1"])
    # Numeric, not string, ordering: "1099511627776" <= "100" as text would be false anyway,
    # but "101" vs "100" and 0 pin the boundary.
    assert set(found) == {dns[0], dns[100]}


def test_quota_sync_time_is_generalized_time_with_ordering(ldap: Slapd) -> None:
    early = ldap.add_account("early@example.org", extra={"quotaSyncTime": "20240101000000Z"})
    ldap.add_account("late@example.org", extra={"quotaSyncTime": "20250601120000Z"})
    found = ldap.ldapsearch(ldap.people_dn, "(quotaSyncTime<=20250101000000Z)", ["1.1"])
    assert set(found) == {early}
    assert refused(ldap, modify(early, "replace: quotaSyncTime\nquotaSyncTime: 2025-01-01")) == 21


@pytest.mark.parametrize(
    "attribute, values",
    [("isOverQuota", ["TRUE", "FALSE"]), ("quotaFreeBytes", ["1", "2"]),
     ("quotaSyncTime", ["20240101000000Z", "20250101000000Z"])],
)
def test_attributes_are_single_valued(ldap: Slapd, attribute: str, values: list[str]) -> None:
    dn = ldap.add_account("a@example.org", extra={"objectClass": "ldapQuotaStatus"})
    change = f"replace: {attribute}\n" + "".join(f"{attribute}: {v}\n" for v in values)
    assert refused(ldap, modify(dn, change)) == 19  # constraintViolation


def test_flag_needs_the_auxiliary_class(ldap: Slapd) -> None:
    dn = ldap.add_account("a@example.org")
    assert refused(ldap, modify(dn, "replace: isOverQuota\nisOverQuota: TRUE")) == 65  # objectClassViolation


def test_auxiliary_class_and_flag_in_one_modify(ldap: Slapd) -> None:
    dn = ldap.add_account("a@example.org")
    ldap.ldapmodify(modify(dn, "add: objectClass\nobjectClass: ldapQuotaStatus", "replace: isOverQuota\nisOverQuota: TRUE"))
    entry = ldap.get_entry(dn)
    assert "ldapQuotaStatus" in attr(entry, "objectClass")
    assert attr(entry, "isOverQuota") == ["TRUE"]
    assert attr(entry, "structuralObjectClass") == ["inetOrgPerson"]


# ---------------------------------------------------------------------------
# the ACL example: what each identity may do


def test_ldapquota_writes_flag_attributes_and_auxiliary_class(ldap: Slapd) -> None:
    dn = ldap.add_account("a@example.org", quota=1000)
    ldap.ldapmodify(
        modify(dn, "add: objectClass\nobjectClass: ldapQuotaStatus", "replace: isOverQuota\nisOverQuota: TRUE",
               "replace: quotaFreeBytes\nquotaFreeBytes: 0"),
        as_dn=ldap.ldapquota_dn,
    )
    entry = ldap.get_entry(dn)
    assert attr(entry, "isOverQuota") == ["TRUE"]
    assert attr(entry, "quotaFreeBytes") == ["0"]
    assert attr(entry, "modifiersName") == [ldap.ldapquota_dn]
    # ...and can take it all away again (clearing a flag, dropping the margin).
    ldap.ldapmodify(modify(dn, "replace: isOverQuota\nisOverQuota: FALSE", "delete: quotaFreeBytes"),
                    as_dn=ldap.ldapquota_dn)
    entry = ldap.get_entry(dn)
    assert attr(entry, "isOverQuota") == ["FALSE"]
    assert attr(entry, "quotaFreeBytes") == []


@pytest.mark.parametrize(
    "change",
    [
        "replace: mail\nmail: thief@example.org",
        "replace: userPassword\nuserPassword: secret",
        "replace: cn\ncn: someone else",
        "replace: mailQuota\nmailQuota: 999999999",
        "replace: mailMessageStore\nmailMessageStore: /etc",
        "add: objectClass\nobjectClass: posixAccount",  # any class but ldapQuotaStatus
        "delete: objectClass\nobjectClass: testMailAccount",
        "replace: quotaSyncTime\nquotaSyncTime: 20250101000000Z",  # only on its status entry
    ],
)
def test_ldapquota_cannot_write_other_attributes(ldap: Slapd, change: str) -> None:
    dn = ldap.add_account("a@example.org", quota=1000, extra={"mailMessageStore": "/var/vmail/a",
                                                              "objectClass": "ldapQuotaStatus",
                                                              "userPassword": "old"})
    before = ldap.entry_meta(dn)
    assert refused(ldap, modify(dn, change), as_dn=ldap.ldapquota_dn) == 50  # insufficientAccessRights
    assert ldap.entry_meta(dn) == before


def test_ldapquota_cannot_set_flags_outside_people(ldap: Slapd) -> None:
    change = modify(ldap.exim_dn, "add: objectClass\nobjectClass: ldapQuotaStatus", "replace: isOverQuota\nisOverQuota: TRUE")
    assert refused(ldap, change, as_dn=ldap.ldapquota_dn) == 50


def test_ldapquota_writes_sync_time_on_its_own_entry(ldap: Slapd) -> None:
    ldap.ldapmodify(
        modify(ldap.ldapquota_dn, "add: objectClass\nobjectClass: ldapQuotaStatus",
               "replace: quotaSyncTime\nquotaSyncTime: 20250101120000Z"),
        as_dn=ldap.ldapquota_dn,
    )
    assert attr(ldap.get_entry(ldap.ldapquota_dn), "quotaSyncTime") == ["20250101120000Z"]
    # The MTA may read it to tell stale flags.
    seen = ldap.ldapsearch(ldap.ldapquota_dn, attrs=["quotaSyncTime"], scope="base", as_dn=ldap.exim_dn)
    assert attr(seen[ldap.ldapquota_dn], "quotaSyncTime") == ["20250101120000Z"]


def test_ldapquota_reads_accounts_but_not_passwords(ldap: Slapd) -> None:
    dn = ldap.add_account("a@example.org", quota="10000000S,1000C",
                          extra={"mailMessageStore": "/var/vmail/a", "userPassword": "secret"})
    seen = ldap.ldapsearch(ldap.people_dn, "(mail=a@example.org)", ["*"], as_dn=ldap.ldapquota_dn)
    entry = seen[dn]
    assert attr(entry, "mail") == ["a@example.org"]
    assert attr(entry, "uid") == ["a"]
    assert attr(entry, "mailQuota") == ["10000000S,1000C"]
    assert attr(entry, "mailMessageStore") == ["/var/vmail/a"]
    assert attr(entry, "userPassword") == []


def test_exim_reads_only_what_lookups_need(ldap: Slapd) -> None:
    dn = ldap.add_account("a@example.org", quota=1000,
                          extra={"isOverQuota": "TRUE", "quotaFreeBytes": 0, "userPassword": "secret"})
    seen = ldap.ldapsearch(ldap.people_dn, "(&(objectClass=inetOrgPerson)(mail=a@example.org))", ["*"],
                           as_dn=ldap.exim_dn)
    assert list(seen) == [dn]
    assert {k.lower() for k in seen[dn]} == {"objectclass", "mail", "isoverquota", "quotafreebytes"}
    assert attr(seen[dn], "isOverQuota") == ["TRUE"]


@pytest.mark.parametrize(
    "target, change",
    [
        ("account", "replace: isOverQuota\nisOverQuota: FALSE"),
        ("account", "replace: quotaFreeBytes\nquotaFreeBytes: 1000000"),
        ("account", "delete: objectClass\nobjectClass: ldapQuotaStatus"),
        ("account", "replace: mail\nmail: other@example.org"),
        ("status", "add: objectClass\nobjectClass: ldapQuotaStatus\n-\nreplace: quotaSyncTime\nquotaSyncTime: 20250101000000Z"),
        ("self", "replace: description\ndescription: changed"),
    ],
)
def test_exim_cannot_write(ldap: Slapd, target: str, change: str) -> None:
    account = ldap.add_account("a@example.org", extra={"isOverQuota": "TRUE", "quotaFreeBytes": 10})
    dn = {"account": account, "status": ldap.ldapquota_dn, "self": ldap.exim_dn}[target]
    before = ldap.entry_meta(dn)
    assert refused(ldap, modify(dn, change), as_dn=ldap.exim_dn) == 50
    assert ldap.entry_meta(dn) == before


def test_anonymous_cannot_see_accounts(ldap: Slapd) -> None:
    ldap.add_account("a@example.org", extra={"isOverQuota": "TRUE"})
    with pytest.raises(LdapToolError) as info:
        ldap.ldapsearch(ldap.people_dn, "(mail=*)", ["mail", "isOverQuota"], as_dn=None)
    # Not even the existence of ou=people is disclosed.
    assert info.value.result_code == 32  # noSuchObject
    assert info.value.entries == {}


def test_password_is_for_binding_and_owner_changes_only(ldap: Slapd, tmp_path: Path) -> None:
    dn = ldap.add_account("a@example.org", extra={"userPassword": "first"})
    other = ldap.add_account("b@example.org", extra={"userPassword": "second"})
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("first")
    second.write_text("second")
    # Anonymous may use it to bind...
    whoami = ldap.ldap_tool("ldapwhoami", as_dn=dn, password_file=first)
    assert whoami.returncode == 0 and dn in whoami.stdout, whoami.stderr
    # ...the owner may change it...
    ldap.ldapmodify(modify(dn, "replace: userPassword\nuserPassword: changed"), as_dn=dn, password_file=first)
    # ...nobody else may, nor read it.
    assert refused(ldap, modify(dn, "replace: userPassword\nuserPassword: x"), as_dn=other, password_file=second) == 50
    for reader in (ldap.ldapquota_dn, ldap.exim_dn):
        seen = ldap.ldapsearch(dn, attrs=["userPassword"], scope="base", as_dn=reader)
        assert attr(seen.get(dn), "userPassword") == [], reader


def test_size_limited_paged_search_is_reported_as_exceeded(ldap: Slapd) -> None:
    # More accounts than cn=limited's size limit: the search must say so
    # (result 4), not just return fewer entries.
    ldap.add_accounts(f"u{i}@example.org" for i in range(ldap.limited_size_limit + 2))
    with pytest.raises(LdapToolError) as info:
        ldap.ldapsearch(ldap.people_dn, "(objectClass=inetOrgPerson)", ["mail"], as_dn=ldap.limited_dn, paged=100)
    assert info.value.result_code == 4  # sizeLimitExceeded
    assert len(info.value.entries) == ldap.limited_size_limit


def test_ldapquota_paged_search_returns_all_of_600_accounts(ldap: Slapd) -> None:
    # 600 > OpenLDAP's default size limit of 500: only olcLimits makes this complete.
    dns = ldap.add_accounts(f"user{i:04d}@example.org" for i in range(600))
    found = ldap.ldapsearch(ldap.people_dn, "(objectClass=inetOrgPerson)", ["mail"], as_dn=ldap.ldapquota_dn, paged=100)
    assert set(found) == set(dns)


def test_noop_modify_checks_write_rights_without_writing(ldap: Slapd) -> None:
    # The LDAP No-Op control (1.3.6.1.4.1.4203.1.10.2): slapd runs every check
    # of a modify, then answers 16654 instead of applying it. ldapquota can
    # use it to verify its rights without touching data.
    dn = ldap.add_account("a@example.org", extra={"isOverQuota": "FALSE"})
    before = ldap.entry_meta(dn)
    allowed = refused(ldap, modify(dn, "replace: isOverQuota\nisOverQuota: TRUE", "replace: quotaFreeBytes"),
                      as_dn=ldap.ldapquota_dn, controls=["!noop"])
    forbidden = refused(ldap, modify(dn, "replace: mail\nmail: x@example.org"),
                        as_dn=ldap.ldapquota_dn, controls=["!noop"])
    assert (allowed, forbidden) == (16654, 50)  # noOperation, insufficientAccessRights
    assert ldap.entry_meta(dn) == before
    assert attr(ldap.get_entry(dn), "isOverQuota") == ["FALSE"]
