"""The YAML config file (docs/contract.md §7): defaults, validation, and errors that name file, line, key."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from ldapquota.config import Config, known_keys, load_config, parse_config
from ldapquota.errors import ConfigError
from ldapquota.quota import UNLIMITED, Limit
from ldapquota.units import ChangeLimit

REPO = Path(__file__).resolve().parents[1]
PATH = "/etc/ldapquota/under-test.yaml"

MINIMAL = """\
ldap:
  uri: ldap://127.0.0.1:389
  base_dn: ou=people,dc=example,dc=org
mailboxes:
  root: /var/vmail
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line starting with ``needle`` after its indentation
    (the ``occurrence``-th such line)."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(needle):
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in the test's own text")


def config_error(text: str, key: str, line) -> str:
    """parse_config must fail with a ConfigError naming the file, the line and the key."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    message = str(info.value)
    assert PATH in message, message
    if line is not None:
        assert f"line {line}" in message, message
        assert not re.search(rf"line (?!{line}\b)\d+", message), message
    assert key in message, message
    assert info.value.exit_code == 78
    return message


def with_section(section: str, body: str, base: str = MINIMAL) -> str:
    """``body`` (one key per line) added to ``section``: into it when ``base`` has it."""
    lines = "".join(f"  {line}\n" for line in body.splitlines())
    header = f"{section}:\n"
    if base.startswith(header) or f"\n{header}" in base:
        at = base.index(header) if base.startswith(header) else base.index(f"\n{header}") + 1
        return base[: at + len(header)] + lines + base[at + len(header) :]
    return base + header + lines


# --------------------------------------------------------------------------- good configs


def test_minimal_config():
    config = parse_config(MINIMAL, PATH)
    assert isinstance(config, Config)
    assert config.path == PATH
    assert config.ldap.uris == ("ldap://127.0.0.1:389",)
    assert config.ldap.base_dn == "ou=people,dc=example,dc=org"
    assert config.mailboxes.root == "/var/vmail"


def test_defaults_are_spec_section_7():
    config = parse_config(MINIMAL, PATH)
    ldap = config.ldap
    assert (ldap.bind_dn, ldap.bind_password_file, ldap.bind_password) == (None, None, None)
    assert ldap.start_tls is False
    assert ldap.ca_file is None
    assert ldap.filter == "(objectClass=inetOrgPerson)"
    assert ldap.status_dn is None
    accounts = config.accounts
    assert accounts.address_attribute == "mail"
    assert accounts.quota_attribute == "mailQuota"
    assert accounts.quota_unit == 1
    assert accounts.default_quota is None
    assert accounts.mailbox_attribute is None
    assert config.mailboxes.path.text == "{domain}/{localpart}/Maildir"
    assert config.mailboxes.count_trash is True
    policy = config.policy
    assert policy.over_percent == 100
    assert policy.clear_percent == 100
    assert policy.free_margin == 50 * 1024 * 1024
    assert policy.max_changes == ChangeLimit(percent=10)
    assert policy.max_changes.allowed(1000) == 100
    daemon = config.daemon
    assert daemon.pidfile == "/run/ldapquota/ldapquota.pid"
    assert daemon.interval == 3600
    assert daemon.account_refresh == 60
    assert daemon.watch is True
    assert (daemon.user, daemon.group) == (None, None)
    assert (config.logging.target, config.logging.level) == ("stderr", "info")
    mta = config.mta
    assert (mta.bind_dn, mta.bind_password_file) == (None, None)
    assert mta.on_ldap_error == "defer"
    assert mta.defer_text == "452 4.2.2 Mailbox full"
    assert mta.fail_text == "552 5.2.2 Mailbox full"


SPEC_EXAMPLE = """\
ldap:
  uri: ldap://127.0.0.1:389          # or a list, tried in order; ldaps:// allowed
  bind_dn: cn=ldapquota,ou=services,dc=example,dc=org
  bind_password_file: {secret}
  start_tls: false
  ca_file: null                      # TLS always verifies certificates
  base_dn: ou=people,dc=example,dc=org
  filter: (objectClass=inetOrgPerson)
  status_dn: cn=ldapquota,ou=services,dc=example,dc=org   # where quotaSyncTime goes
accounts:
  address_attribute: mail
  quota_attribute: mailQuota         # null: not in LDAP
  quota_unit: 1                      # bytes per unit; or "maildir++" for strings like 10000000S
  default_quota: null
  mailbox_attribute: null
mailboxes:
  root: /var/vmail
  path: "{{domain}}/{{localpart}}/Maildir"
  count_trash: true
policy:
  over_percent: 100
  clear_percent: 100
  free_margin: 50MiB
  max_changes: 10%
daemon:
  pidfile: /run/ldapquota/ldapquota.pid   # locked; a second instance refuses to start
  interval: 1h                       # full sync, the safety net
  account_refresh: 60s               # pick up new/changed accounts
  watch: true                        # inotify; false = stat polling only
  user: null                         # drop privileges after start
  group: null
logging:
  target: stderr                     # stderr | syslog | a file path
  level: info
mta:                                 # only used to render --exim-config / examples
  bind_dn: null                      # Exim's read-only bind; null = anonymous
  bind_password_file: null           # Exim reads it; its content is never printed
  on_ldap_error: defer               # defer (451, the default) | accept (fail open)
  defer_text: 452 4.2.2 Mailbox full
  fail_text: 552 5.2.2 Mailbox full
"""


def test_spec_example_parses_to_the_defaults(tmp_path):
    secret = tmp_path / "bind.secret"
    secret.write_text("s3cret\n")
    config = parse_config(SPEC_EXAMPLE.format(secret=secret), PATH)
    defaults = parse_config(MINIMAL, PATH)
    assert config.ldap.bind_dn == "cn=ldapquota,ou=services,dc=example,dc=org"
    assert config.ldap.status_dn == "cn=ldapquota,ou=services,dc=example,dc=org"
    assert config.ldap.bind_password == "s3cret"
    for section in ("accounts", "policy", "daemon", "logging", "mta"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.mailboxes.path.text == defaults.mailboxes.path.text
    assert config.mailboxes.count_trash is defaults.mailboxes.count_trash


SPEC_KEYS = (
    {"ldap." + k for k in ("uri", "bind_dn", "bind_password_file", "start_tls", "ca_file", "base_dn", "filter", "status_dn",
                           "reader")}
    | {"accounts." + k for k in ("address_attribute", "quota_attribute", "quota_unit", "default_quota", "mailbox_attribute")}
    | {"mailboxes." + k for k in ("root", "path", "count_trash")}
    | {"policy." + k for k in ("over_percent", "clear_percent", "free_margin", "max_changes")}
    | {"daemon." + k for k in ("pidfile", "interval", "account_refresh", "watch", "user", "group")}
    | {"logging.target", "logging.level"}
    | {"mta." + k for k in ("bind_dn", "bind_password_file", "on_ldap_error", "defer_text", "fail_text")}
)


def test_known_keys_include_every_spec_section_7_key():
    assert set(known_keys()) >= SPEC_KEYS, SPEC_KEYS - set(known_keys())


def test_config_is_frozen():
    config = parse_config(MINIMAL, PATH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.policy = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ldap.base_dn = "dc=evil"  # type: ignore[misc]


def test_empty_section_means_defaults():
    assert parse_config(MINIMAL + "policy:\n", PATH).policy == parse_config(MINIMAL, PATH).policy


def test_list_of_uris_keeps_order():
    text = MINIMAL.replace("uri: ldap://127.0.0.1:389", "uri: [ldap://ldap1.example.org, ldaps://ldap2.example.org:636]")
    assert parse_config(text, PATH).ldap.uris == ("ldap://ldap1.example.org", "ldaps://ldap2.example.org:636")


def test_block_list_of_uris():
    text = MINIMAL.replace("  uri: ldap://127.0.0.1:389\n", "  uri:\n    - ldap://a.example.org\n    - ldap://b.example.org:3890\n")
    assert parse_config(text, PATH).ldap.uris == ("ldap://a.example.org", "ldap://b.example.org:3890")


def test_quota_unit_maildirpp():
    assert parse_config(with_section("accounts", "quota_unit: maildir++"), PATH).accounts.quota_unit is None


@pytest.mark.parametrize("value, expected", [("1KiB", 1024), ("1024", 1024), ("1", 1), ("1kB", 1000)])
def test_quota_unit_sizes(value, expected):
    assert parse_config(with_section("accounts", f"quota_unit: {value}"), PATH).accounts.quota_unit == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1GiB", Limit(1024**3, None)),
        ("500MB", Limit(500 * 10**6, None)),
        ("1048576", Limit(1048576, None)),
        ("10000000S,1000C", Limit(10000000, 1000)),
        ("'10000000S'", Limit(10000000, None)),
        ("1000C", Limit(None, 1000)),
        ("0", UNLIMITED),
    ],
)
def test_default_quota(value, expected):
    assert parse_config(with_section("accounts", f"default_quota: {value}"), PATH).accounts.default_quota == expected


def test_max_changes_count_and_percent():
    assert parse_config(with_section("policy", "max_changes: 25"), PATH).policy.max_changes == ChangeLimit(count=25)
    assert parse_config(with_section("policy", "max_changes: 10%"), PATH).policy.max_changes == ChangeLimit(percent=10)


def test_hysteresis_percentages():
    policy = parse_config(with_section("policy", "over_percent: 100\nclear_percent: 90"), PATH).policy
    assert (policy.over_percent, policy.clear_percent) == (100, 90)
    assert policy.thresholds.clear_percent == 90


def test_clear_percent_defaults_to_over_percent():
    # docs/contract.md §5: "Cleared only when usage < policy.clear_percent % (hysteresis; default equal)".
    policy = parse_config(with_section("policy", "over_percent: 90"), PATH).policy
    assert policy.over_percent == 90
    assert policy.clear_percent == 90


def test_start_tls_with_ldap_uri():
    text = MINIMAL.replace("  base_dn:", "  start_tls: true\n  base_dn:")
    assert parse_config(text, PATH).ldap.start_tls is True


def test_filter_accepted():
    text = MINIMAL.replace("  base_dn:", "  filter: (&(objectClass=inetOrgPerson)(mail=*)(!(x=\\28y\\29)))\n  base_dn:")
    assert parse_config(text, PATH).ldap.filter == "(&(objectClass=inetOrgPerson)(mail=*)(!(x=\\28y\\29)))"


# --------------------------------------------------------------------------- password file


def _with_password_file(path) -> str:
    return MINIMAL.replace(
        "  base_dn:", f"  bind_dn: cn=ldapquota,dc=example,dc=org\n  bind_password_file: {path}\n  base_dn:"
    )


def test_password_trailing_newline_is_stripped(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("pa ss\tword\n")
    assert parse_config(_with_password_file(secret), PATH).ldap.bind_password == "pa ss\tword"


def test_password_without_newline_is_kept_whole(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(" x ")
    assert parse_config(_with_password_file(secret), PATH).ldap.bind_password == " x "


def test_password_never_appears_in_repr_or_str(tmp_path):
    password = "Pw-7f3a9c-UNIQUE-never-print"
    secret = tmp_path / "secret"
    secret.write_text(password + "\n")
    config = parse_config(_with_password_file(secret), PATH)
    assert config.ldap.bind_password == password
    for shown in (repr(config), str(config), repr(config.ldap), str(config.ldap), f"{config}", f"{config.ldap!r}"):
        assert password not in shown
        assert "7f3a9c" not in shown


def test_missing_password_file_is_an_error(tmp_path):
    missing = tmp_path / "no-such-secret"
    text = _with_password_file(missing)
    message = config_error(text, "ldap.bind_password_file", line_of(text, "bind_password_file"))
    assert str(missing) in message


@pytest.mark.parametrize("content", ["", "\n"])
def test_empty_password_file_is_an_error(tmp_path, content):
    secret = tmp_path / "secret"
    secret.write_text(content)
    text = _with_password_file(secret)
    config_error(text, "ldap.bind_password_file", line_of(text, "bind_password_file"))


def test_password_file_without_bind_dn_is_an_error(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x\n")
    text = MINIMAL.replace("  base_dn:", f"  bind_password_file: {secret}\n  base_dn:")
    config_error(text, "ldap.bind_password_file", line_of(text, "bind_password_file"))


# --------------------------------------------------------------------------- errors


def test_unknown_section():
    text = MINIMAL + "policies:\n  over_percent: 100\n"
    config_error(text, "policies", line_of(text, "policies:"))


def test_unknown_key_line_number():
    text = MINIMAL + "policy:\n  over_percent: 100\n  clear_percent: 100\n  max_change: 5\n"
    assert line_of(text, "max_change:") == 9
    config_error(text, "policy.max_change", 9)


def test_unknown_key_in_first_section():
    text = MINIMAL.replace("  base_dn:", "  bind_pw: secret\n  base_dn:")
    message = config_error(text, "ldap.bind_pw", 3)
    assert "secret" not in message.replace("bind_pw", "")


@pytest.mark.parametrize(
    "section, body, key",
    [
        ("mailboxes", 'count_trash: "yes"', "mailboxes.count_trash"),  # string for bool
        ("mailboxes", "count_trash: 1", "mailboxes.count_trash"),
        ("daemon", "watch: 'false'", "daemon.watch"),
        ("accounts", "address_attribute: [mail, uid]", "accounts.address_attribute"),  # list for string
        ("accounts", "quota_attribute: {a: b}", "accounts.quota_attribute"),
        ("accounts", "address_attribute: ''", "accounts.address_attribute"),
        ("accounts", "address_attribute: 'mail attr'", "accounts.address_attribute"),
        ("policy", "free_margin: 50XB", "policy.free_margin"),  # bad size
        ("policy", "free_margin: -5", "policy.free_margin"),
        ("daemon", "interval: 1y", "daemon.interval"),  # bad duration
        ("daemon", "interval: 0", "daemon.interval"),
        ("daemon", "account_refresh: -60s", "daemon.account_refresh"),
        ("policy", "over_percent: abc", "policy.over_percent"),  # bad percent
        ("policy", "over_percent: 0", "policy.over_percent"),
        ("policy", "over_percent: true", "policy.over_percent"),
        ("policy", "max_changes: 150%", "policy.max_changes"),
        ("policy", "max_changes: abc", "policy.max_changes"),
        ("accounts", "quota_unit: 0", "accounts.quota_unit"),
        ("accounts", "quota_unit: bytes", "accounts.quota_unit"),
        ("accounts", "default_quota: lots", "accounts.default_quota"),
        ("accounts", "default_quota: 10S,10S", "accounts.default_quota"),
        ("logging", "level: verbose", "logging.level"),
        ("logging", "target: relative/file.log", "logging.target"),
        ("mta", "on_ldap_error: reject", "mta.on_ldap_error"),
        ("mta", "defer_text: 552 5.2.2 Mailbox full", "mta.defer_text"),
        ("mta", "fail_text: 452 4.2.2 Mailbox full", "mta.fail_text"),
        ("daemon", "pidfile: run/x.pid", "daemon.pidfile"),
    ],
)
def test_bad_values_name_file_line_and_key(section, body, key):
    text = with_section(section, body)
    config_error(text, key, line_of(text, body.split(":")[0] + ":"))


def test_ldap_wrong_types():
    text = MINIMAL.replace("  base_dn: ou=people,dc=example,dc=org", "  base_dn: [a, b]")
    config_error(text, "ldap.base_dn", 3)
    text = MINIMAL.replace("  base_dn:", "  start_tls: 'yes'\n  base_dn:")
    config_error(text, "ldap.start_tls", 3)


def test_clear_percent_above_over_percent():
    text = with_section("policy", "over_percent: 90\nclear_percent: 95")
    config_error(text, "policy.clear_percent", line_of(text, "clear_percent"))


def test_invalid_yaml_names_the_line():
    text = MINIMAL + "policy:\n\tover_percent: 100\n"
    assert line_of(text, "over_percent") == 7
    message = config_error(text, "", 7)
    assert "YAML" in message


def test_invalid_yaml_mapping_in_value_names_the_line():
    text = MINIMAL.replace("  base_dn: ou=people,dc=example,dc=org", "  base_dn: ou=people: dc=example")
    config_error(text, "", 3)


def test_duplicate_key():
    text = MINIMAL + "policy:\n  over_percent: 100\n  over_percent: 90\n"
    config_error(text, "policy.over_percent", line_of(text, "over_percent", 2))


def test_duplicate_section():
    text = MINIMAL + "ldap:\n  filter: (uid=*)\n"
    config_error(text, "ldap", line_of(text, "ldap:", 2))


@pytest.mark.parametrize("text", ["- ldap\n- mailboxes\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text):
    config_error(text, "", 1)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_names_a_missing_required_key(text):
    message = config_error(text, "ldap.uri", None)
    assert "required" in message or "missing" in message


@pytest.mark.parametrize(
    "drop, key",
    [("  uri: ldap://127.0.0.1:389\n", "ldap.uri"), ("  base_dn: ou=people,dc=example,dc=org\n", "ldap.base_dn"), ("mailboxes:\n  root: /var/vmail\n", "mailboxes.root")],
)
def test_each_required_key(drop, key):
    config_error(MINIMAL.replace(drop, ""), key, None)


def test_section_that_is_not_a_mapping():
    text = MINIMAL + "policy: [1, 2]\n"
    config_error(text, "policy", line_of(text, "policy:"))


@pytest.mark.parametrize("uri", ["http://ldap.example.org", "ldap.example.org", "ldap://host/dc=x?cn", "ftp://x", ""])
def test_bad_uri(uri):
    text = MINIMAL.replace("ldap://127.0.0.1:389", repr(uri) if uri == "" else uri)
    config_error(text, "ldap.uri", 2)


def test_bad_uri_in_a_list():
    text = MINIMAL.replace("ldap://127.0.0.1:389", "[ldap://a.example.org, http://b.example.org]")
    config_error(text, "ldap.uri", 2)


def test_empty_uri_list():
    config_error(MINIMAL.replace("ldap://127.0.0.1:389", "[]"), "ldap.uri", 2)


@pytest.mark.parametrize(
    "value",
    ["objectClass=inetOrgPerson", "(objectClass=inetOrgPerson", "objectClass=inetOrgPerson)", "(a=1))(", "((a=1)", "'(a=1)(b=2)'"],
)
def test_bad_filter(value):
    text = MINIMAL.replace("  base_dn:", f"  filter: {value}\n  base_dn:")
    config_error(text, "ldap.filter", 3)


def test_start_tls_with_ldaps_is_rejected():
    text = MINIMAL.replace("ldap://127.0.0.1:389", "ldaps://ldap.example.org").replace("  base_dn:", "  start_tls: true\n  base_dn:")
    config_error(text, "ldap.start_tls", line_of(text, "start_tls"))


def test_start_tls_with_ldaps_in_a_list_is_rejected():
    text = MINIMAL.replace("ldap://127.0.0.1:389", "[ldap://a.example.org, ldaps://b.example.org]").replace(
        "  base_dn:", "  start_tls: true\n  base_dn:"
    )
    config_error(text, "ldap.start_tls", line_of(text, "start_tls"))


@pytest.mark.parametrize(
    "template", ["'{domain}/{user}/Maildir'", "'{domain/{localpart}'", "'{localpart:upper}'", "/abs/{localpart}", "''"]
)
def test_bad_template_names_mailboxes_path_line(template):
    text = MINIMAL + f"  path: {template}\n"
    config_error(text, "mailboxes.path", line_of(text, "path:"))


@pytest.mark.parametrize("root", ["relative/vmail", "''", "[a]"])
def test_bad_root(root):
    text = MINIMAL.replace("root: /var/vmail", f"root: {root}")
    config_error(text, "mailboxes.root", line_of(text, "root:"))


def test_unreadable_ca_file(tmp_path):
    text = MINIMAL.replace("  base_dn:", f"  ca_file: {tmp_path / 'no-ca.pem'}\n  base_dn:")
    config_error(text, "ldap.ca_file", line_of(text, "ca_file"))


def test_yaml_merge_key_is_a_config_error_or_merged_never_a_crash():
    text = MINIMAL + "policy:\n  <<: {over_percent: 100}\n"
    try:
        config = parse_config(text, PATH)
    except ConfigError as exc:
        assert PATH in str(exc) and f"line {line_of(text, '<<')}" in str(exc), str(exc)
    else:
        assert config.policy.over_percent == 100


@pytest.mark.parametrize(
    "text",
    [MINIMAL + "policy:\n  ? [over_percent]\n  : 100\n", "? [ldap, x]\n: 1\n" + MINIMAL],
    ids=["inner-complex-key", "top-complex-key"],
)
def test_non_scalar_key_is_a_config_error_not_a_crash(text):
    line = line_of(text, "? [")
    config_error(text, "", line)


# --------------------------------------------------------------------------- files


def test_load_config_reads_the_file(tmp_path):
    path = tmp_path / "ldapquota.yaml"
    path.write_text(MINIMAL)
    config = load_config(str(path))
    assert config.path == str(path)
    assert config.ldap.base_dn == "ou=people,dc=example,dc=org"


def test_load_config_errors_name_the_real_file(tmp_path):
    path = tmp_path / "ldapquota.yaml"
    text = MINIMAL + "policy:\n  bogus: 1\n"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert f"{path}, line 7" in str(info.value) and "policy.bogus" in str(info.value)


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert info.value.exit_code == 78


def example_configs():
    found = sorted((REPO / "examples").glob("**/ldapquota*.y*ml"))
    assert REPO / "examples" / "ldapquota.yaml" in found and len(found) >= 2
    return found


def example_text(example, secret):
    text = example.read_text()
    text = re.sub(r"(?m)^(\s*bind_password_file:\s*)(?!null\b)(\S+)", rf"\g<1>{secret}", text)
    return re.sub(r"(?m)^(\s*ca_file:\s*)(?!null\b)(\S+)", r"\g<1>null", text)


def test_every_example_config_loads(tmp_path):
    """Every ldapquota config anywhere under examples/ is valid (secret files swapped for a real one)."""
    secret = tmp_path / "bind.secret"
    secret.write_text("example\n")
    for example in example_configs():
        config = parse_config(example_text(example, secret), str(example))
        assert config.ldap.uris and (config.mailboxes.root or config.mailboxes.source != "maildir"), example


def test_the_annotated_example_shows_every_key_at_its_default(tmp_path):
    """examples/ldapquota.yaml is "every key with its default": it names every known key,
    and what it says parses to the defaults of ldapquota.settings (but for the values
    that are site-specific by nature: where LDAP and the mail store are)."""
    secret = tmp_path / "bind.secret"
    secret.write_text("example\n")
    example = REPO / "examples" / "ldapquota.yaml"
    text = example_text(example, secret)
    document = yaml.safe_load(text)
    shown = {f"{section}.{key}" for section, keys in document.items() for key in (keys or {})}
    assert set(known_keys()) <= shown, f"{example} does not show {sorted(set(known_keys()) - shown)}"
    config = parse_config(text, str(example))
    defaults = parse_config(MINIMAL, PATH)
    for section in ("accounts", "policy", "daemon", "logging", "mta", "cyrus", "dovecot"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert dataclasses.replace(config.mailboxes, root=defaults.mailboxes.root) == defaults.mailboxes


def test_example_configs_in_examples_parse(tmp_path):
    """Every ldapquota config in examples/ shows every key of docs/contract.md §7."""
    secret = tmp_path / "bind.secret"
    secret.write_text("example\n")
    for example in sorted((REPO / "examples").glob("ldapquota*.y*ml")):
        text = example.read_text()
        text = re.sub(r"(?m)^(\s*bind_password_file:\s*)(?!null\b)(\S+)", rf"\g<1>{secret}", text)
        text = re.sub(r"(?m)^(\s*ca_file:\s*)(?!null\b)(\S+)", r"\g<1>null", text)
        config = parse_config(text, str(example))
        assert config.ldap.uris and config.mailboxes.root
        document = yaml.safe_load(text)
        undocumented = {key for key in SPEC_KEYS if key.split(".")[1] not in (document.get(key.split(".")[0]) or {})}
        assert not undocumented, f"{example} does not show {sorted(undocumented)}"


@pytest.mark.parametrize("value, expected", [(None, "ldap3"), ("ldap3", "ldap3"), ("Python-LDAP", "python-ldap")])
def test_ldap_reader_is_ldap3_or_python_ldap(value, expected):
    line = f"  reader: {value}\n" if value else ""
    assert parse_config(f"ldap:\n  uri: ldap://h\n  base_dn: dc=x\n{line}mailboxes:\n  root: /x\n").ldap.reader == expected


def test_ldap_reader_rejects_another_library_with_its_line():
    text = "ldap:\n  uri: ldap://h\n  base_dn: dc=x\n  reader: python3-ldap\nmailboxes:\n  root: /x\n"
    with pytest.raises(ConfigError, match=r"line 4: ldap.reader: expected ldap3 or python-ldap, got str 'python3-ldap'"):
        parse_config(text, "f.yaml")


@pytest.mark.parametrize("value, expected", [("auto", None), ("0", 0), ("3", 3)])
def test_mailboxes_workers_accepts_auto_or_a_count(value, expected):
    text = f"ldap:\n  uri: ldap://h\n  base_dn: dc=x\nmailboxes:\n  root: /x\n  workers: {value}\n"
    assert parse_config(text).mailboxes.workers == expected


@pytest.mark.parametrize("value", ["-1", "many", "true", "65"])
def test_mailboxes_workers_rejects_anything_else_with_its_line(value):
    text = f"ldap:\n  uri: ldap://h\n  base_dn: dc=x\nmailboxes:\n  root: /x\n  workers: {value}\n"
    with pytest.raises(ConfigError, match=r"line 6: mailboxes.workers: expected auto or a number"):
        parse_config(text, "f.yaml")


@pytest.mark.parametrize(
    "key, value",
    [("filter", "(foo~~bar)"), ("base_dn", "not a dn"), ("status_dn", "just words"), ("bind_dn", "=x")],
)
def test_filter_and_dn_syntax_is_checked_at_load_time_with_the_line(key, value):
    extra = "  bind_password_file: /dev/null\n" if key == "bind_dn" else ""
    base = "" if key == "base_dn" else "  base_dn: dc=x\n"
    text = f"ldap:\n  uri: ldap://h\n{base}  {key}: '{value}'\n{extra}mailboxes:\n  root: /x\n"
    line = 3 if key == "base_dn" else 4
    with pytest.raises(ConfigError, match=rf"f.yaml, line {line}: ldap.{key}: .* is not a valid"):
        parse_config(text, "f.yaml")


@pytest.mark.parametrize("uri", ["ldap://[::1]:389", "ldaps://[2001:db8::5]", "ldap://ldap.example.org"])
def test_ipv6_literal_and_plain_uris_are_accepted(uri):
    text = f"ldap:\n  uri: '{uri}'\n  base_dn: dc=x\nmailboxes:\n  root: /x\n"
    assert parse_config(text).ldap.uris == (uri,)
