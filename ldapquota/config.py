"""The YAML config file (docs/contract.md §7) → a validated, frozen :class:`Config`.

Every key is declared once in ``_SCHEMA`` with its converter; its default is the field's
default in :mod:`ldapquota.settings` (the one place for defaults). Unknown keys, wrong
types, bad sizes and unreadable password files raise :class:`ConfigError` naming the file,
the line and the dotted key, so the operator can go straight to the mistake.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional

import yaml

from ldapquota import config_values as kinds
from ldapquota.config_files import (
    CA_FILE_MAX_BYTES,
    CONFIG_MAX_BYTES,
    SECRET_MAX_BYTES,
    Refused,
    check_regular,
    read_regular_file,
)
from ldapquota.errors import ConfigError, clip, excerpt
from ldapquota.paths import PathTemplate
from ldapquota.settings import (
    AccountsConfig,
    Config,
    CyrusConfig,
    DaemonConfig,
    DovecotConfig,
    LdapConfig,
    LoggingConfig,
    MailboxesConfig,
    MetricsConfig,
    MtaConfig,
    PolicyConfig,
)
from ldapquota.units import parse_change_limit, parse_duration, parse_size

DEFAULT_CONFIG_PATH = "/etc/ldapquota/ldapquota.yaml"
CONFIG_ENV = "LDAPQUOTA_CONFIG"


# --------------------------------------------------------------------------- the schema

# section → its dataclass, and key → converter. A key's field has the key's name (but
# ldap.uri → uris); its default is the field's default.
_SECTIONS: Dict[str, type] = {
    "ldap": LdapConfig,
    "accounts": AccountsConfig,
    "mailboxes": MailboxesConfig,
    "policy": PolicyConfig,
    "daemon": DaemonConfig,
    "logging": LoggingConfig,
    "mta": MtaConfig,
    "cyrus": CyrusConfig,
    "dovecot": DovecotConfig,
    "metrics": MetricsConfig,
}
_FIELD_NAMES = {("ldap", "uri"): "uris", ("mta", "uri"): "uris"}

_SCHEMA: Dict[str, Dict[str, Callable[[Any], Any]]] = {
    "ldap": {
        "uri": kinds.uris,
        "bind_dn": kinds.optional_dn,
        "bind_password_file": kinds.optional_file_path,
        "start_tls": kinds.boolean,
        "ca_file": kinds.optional_file_path,
        "base_dn": kinds.dn,
        "filter": kinds.ldap_filter,
        "status_dn": kinds.optional_dn,
        "reader": kinds.reader,
    },
    "accounts": {
        "address_attribute": kinds.attribute,
        "quota_attribute": kinds.optional_attribute,
        "quota_unit": kinds.quota_unit,
        "default_quota": kinds.default_quota,
        "mailbox_attribute": kinds.optional_attribute,
    },
    "mailboxes": {
        "root": kinds.directory_path,
        "source": kinds.source,
        "path": kinds.template,
        "count_trash": kinds.boolean,
        "workers": kinds.workers,
    },
    "policy": {
        "over_percent": kinds.percent,
        "clear_percent": kinds.percent,  # not given: equal to over_percent (no hysteresis)
        "free_margin": parse_size,
        "max_changes": parse_change_limit,
    },
    "daemon": {
        "pidfile": kinds.directory_path,
        "interval": parse_duration,
        "account_refresh": parse_duration,
        "watch": kinds.boolean,
        "user": kinds.optional_string,
        "group": kinds.optional_string,
        "debounce": parse_duration,
        "over_recheck": parse_duration,
        "poll_interval": parse_duration,
    },
    "logging": {
        "target": kinds.log_target,
        "level": kinds.log_level,
    },
    "mta": {
        "uri": kinds.optional_uris,
        "bind_dn": kinds.optional_dn,
        "bind_password_file": kinds.optional_file_path,
        "on_ldap_error": kinds.on_ldap_error,
        "defer_text": kinds.smtp_text("4"),
        "fail_text": kinds.smtp_text("5"),
    },
    "cyrus": {
        "quota_command": kinds.command,
        "imapd_conf": kinds.directory_path,
        "quota_root": kinds.name_template,
        "timeout": parse_duration,
    },
    "dovecot": {
        "doveadm": kinds.command,
        "http_url": kinds.optional_http_url,
        "http_key_file": kinds.optional_file_path,
        "user": kinds.name_template,
        "quota_root": kinds.optional_string,
        "timeout": parse_duration,
    },
    "metrics": {
        "textfile": kinds.optional_absolute_path,
        "listen": kinds.optional_listen_address,
    },
}


def _default(section: str, key: str) -> Any:
    """The key's default (its field's), or ``dataclasses.MISSING`` for a required key."""
    name = _FIELD_NAMES.get((section, key), key)
    for item in dataclasses.fields(_SECTIONS[section]):
        if item.name == name:
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            return item.default
    raise AssertionError(f"{section}.{key} has no field in {_SECTIONS[section].__name__}")


# --------------------------------------------------------------------------- loading


class _Located:
    """Values of one YAML file with the line of every key, for error messages."""

    def __init__(self, path: str):
        self.path = path
        self.values: Dict[str, Dict[str, Any]] = {}
        self.lines: Dict[str, int] = {}

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}, line {line}" if line else self.path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {key}: {message}")


# YAML aliases let a few hundred bytes stand for billions of values (a "billion laughs"
# alias bomb): composing shares the nodes, but anything that walks the value (its repr in
# an error message, a converter) expands them. A config holds a few dozen values, so every
# value is walked first, aliases expanded, against this budget (docs/contract.md §7).
_MAX_NODES = 10_000
_MAX_DEPTH = 20  # a config nests two or three levels
_MAX_KEY_CHARS = 64


def _check_expansion(located: _Located, dotted: str, node: yaml.Node, budget: List[int]) -> None:
    """Count the nodes of ``node`` as its consumers will see them (every alias expanded)
    against what is left of ``budget[0]``; refuse the key past it. Iterative and bounded
    by the budget, so it also ends on a recursive alias (``&a [*a]``)."""
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise located.error(dotted, f"YAML aliases expand beyond {_MAX_NODES} values (an alias bomb?); refused")
        if depth > _MAX_DEPTH:
            raise located.error(dotted, f"nested more than {_MAX_DEPTH} levels deep; refused")
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))


def _compose(path: str, text: str) -> Optional[yaml.Node]:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{line}: not valid YAML: {clip(problem)}") from None
    except RecursionError:  # PyYAML's composer recurses once per level of [[[[...
        raise ConfigError(f"{path}: not valid YAML: nested too deeply for a config file") from None


def _parse_yaml(path: str, text: str) -> _Located:
    located = _Located(path)
    document = _compose(path, text)
    budget = [_MAX_NODES]
    if document is None:
        return located
    if not isinstance(document, yaml.MappingNode):
        raise ConfigError(f"{path}, line {document.start_mark.line + 1}: the file must be a mapping of sections (ldap:, accounts:, ...)")
    constructor = yaml.SafeLoader("")
    for section_node, body in document.value:
        section = _plain_key(path, section_node)
        located.lines[section] = section_node.start_mark.line + 1
        if section not in _SCHEMA:
            raise located.error(str(section), f"unknown section; known sections are {', '.join(_SCHEMA)}")
        if section in located.values:
            raise located.error(section, "section given twice")
        located.values[section] = {}
        if isinstance(body, yaml.ScalarNode) and body.tag == "tag:yaml.org,2002:null":
            continue
        if not isinstance(body, yaml.MappingNode):
            raise located.error(section, "expected a mapping of keys under this section")
        for key_node, value_node in body.value:
            key = _plain_key(path, key_node)
            dotted = f"{section}.{key}"
            located.lines[dotted] = key_node.start_mark.line + 1
            if key not in _SCHEMA[section]:
                known = ", ".join(_SCHEMA[section])
                raise located.error(dotted, f"unknown key; keys of {section}: are {known}")
            if key in located.values[section]:
                raise located.error(dotted, "key given twice")
            _check_expansion(located, dotted, value_node, budget)
            try:
                located.values[section][key] = constructor.construct_object(value_node, deep=True)
            except (yaml.YAMLError, TypeError, ValueError) as exc:
                problem = getattr(exc, "problem", None) or str(exc)
                raise located.error(dotted, f"bad value: {clip(problem)}") from None
    return located


def _plain_key(path: str, node: yaml.Node) -> str:
    """Keys are plain names. YAML merge keys (<<), tags and complex keys are refused with
    their line rather than half-supported."""
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        shown = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__.replace("Node", "").lower()
        raise ConfigError(
            f"{path}, line {node.start_mark.line + 1}: {excerpt(shown)} is not a plain key name "
            "(merge keys <<, tags and complex keys are not supported)"
        )
    if len(node.value) > _MAX_KEY_CHARS:  # none of ours is; messages show keys whole
        raise ConfigError(f"{path}, line {node.start_mark.line + 1}: {excerpt(node.value)} is not a key of this file")
    return str(node.value)


def _convert(located: _Located) -> Dict[str, Dict[str, Any]]:
    """Each given value through its converter; a missing key takes its field's default."""
    converted: Dict[str, Dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        given = located.values.get(section, {})
        converted[section] = {}
        for key, converter in keys.items():
            dotted = f"{section}.{key}"
            if key not in given:
                default = _default(section, key)
                if default is dataclasses.MISSING:
                    raise located.error(dotted, "is required but missing")
                converted[section][key] = default
                continue
            try:
                converted[section][key] = converter(given[key])
            except ValueError as exc:
                raise located.error(dotted, str(exc)) from None
    policy = located.values.get("policy", {})
    if "clear_percent" not in policy:
        converted["policy"]["clear_percent"] = converted["policy"]["over_percent"]
    return converted


def _text(data: bytes) -> str:
    """UTF-8 with universal newlines, as open() in text mode reads it. Raises UnicodeDecodeError."""
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def _read_secret(located: _Located, key: str, path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    try:
        secret = _text(read_regular_file(path, SECRET_MAX_BYTES))
    except Refused as exc:
        raise located.error(key, f"{path} {exc}") from None
    except OSError as exc:
        raise located.error(key, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise located.error(key, f"{path} is not UTF-8 text") from None
    # One trailing newline is what editors and `echo` leave; the password is the rest.
    secret = secret[:-1] if secret.endswith("\n") else secret
    if not secret:
        raise located.error(key, f"{path} is empty")
    return secret


def _cross_checks(located: _Located, values: Dict[str, Dict[str, Any]]) -> None:
    policy = values["policy"]
    if policy["clear_percent"] > policy["over_percent"]:
        raise located.error(
            "policy.clear_percent",
            f"{float(policy['clear_percent']):g} is above over_percent {float(policy['over_percent']):g}; "
            "a mailbox must be cleared at or below the level that sets it",
        )
    ldap = values["ldap"]
    if ldap["bind_password_file"] and not ldap["bind_dn"]:
        raise located.error("ldap.bind_password_file", "given without ldap.bind_dn")
    if ldap["start_tls"] and any(uri.lower().startswith("ldaps://") for uri in ldap["uri"]):
        raise located.error("ldap.start_tls", "cannot be combined with an ldaps:// URI (TLS is already on)")
    if ldap["ca_file"]:
        _check_file(located, "ldap.ca_file", ldap["ca_file"], CA_FILE_MAX_BYTES, must_exist=True)
        if not os.access(ldap["ca_file"], os.R_OK):
            raise located.error("ldap.ca_file", f"cannot read {ldap['ca_file']}")
    mta = values["mta"]
    if mta["bind_password_file"] and not mta["bind_dn"]:
        raise located.error("mta.bind_password_file", "given without mta.bind_dn")
    if mta["bind_password_file"]:
        # Exim reads it, maybe on another host: checked only when it is here (a FIFO there
        # would hang Exim's ${readfile}).
        _check_file(located, "mta.bind_password_file", mta["bind_password_file"], SECRET_MAX_BYTES, must_exist=False)
    template: PathTemplate = values["mailboxes"]["path"]
    if values["accounts"]["mailbox_attribute"] is None and not template.parts:
        raise located.error("mailboxes.path", "is empty")
    _source_cross_checks(located, values)


def _check_file(located: _Located, key: str, path: str, limit: int, must_exist: bool) -> None:
    """A file read by others (OpenSSL, Exim): a regular file of sane size, by its stat
    alone (never opened here, so a FIFO cannot block us)."""
    try:
        status = os.stat(path)
    except OSError as exc:
        if must_exist:
            raise located.error(key, f"cannot read {path}: {exc.strerror}") from None
        return
    try:
        check_regular(status, limit)
    except Refused as exc:
        raise located.error(key, f"{path} {exc}") from None


def _source_cross_checks(located: _Located, values: Dict[str, Dict[str, Any]]) -> None:
    """What a usage source needs (docs/contract.md §7, §10): the maildir source a root,
    the doveadm HTTP API its key."""
    source = values["mailboxes"]["source"]
    if source == "maildir" and values["mailboxes"]["root"] is None:
        raise located.error("mailboxes.root", "is required with mailboxes.source: maildir (where the maildirs are)")
    dovecot = values["dovecot"]
    if dovecot["http_url"] and not dovecot["http_key_file"]:
        raise located.error("dovecot.http_url", "needs dovecot.http_key_file (the file holding Dovecot's doveadm_api_key)")
    if dovecot["http_key_file"] and not dovecot["http_url"]:
        raise located.error("dovecot.http_key_file", "given without dovecot.http_url")


def load_config(path: str) -> Config:
    """Read, validate and freeze the config at ``path``. Raises ConfigError.

    Never blocks and never reads more than CONFIG_MAX_BYTES + 1 bytes (config_files)."""
    try:
        text = _text(read_regular_file(path, CONFIG_MAX_BYTES))
    except Refused as exc:
        raise ConfigError(f"config file {path} {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    return parse_config(text, path)


def parse_config(text: str, path: str = "<config>") -> Config:
    """Validate config text (the body of :func:`load_config`, usable on strings in tests)."""
    located = _parse_yaml(path, text)
    values = _convert(located)
    _cross_checks(located, values)
    fields = {section: _field_values(section, given) for section, given in values.items()}
    fields["ldap"]["bind_password"] = _read_secret(located, "ldap.bind_password_file", fields["ldap"]["bind_password_file"])
    if values["mailboxes"]["source"] == "dovecot":  # the key is read only where it is used
        fields["dovecot"]["http_key"] = _read_secret(located, "dovecot.http_key_file", fields["dovecot"]["http_key_file"])
    return Config(
        path=path,
        ldap=LdapConfig(**fields["ldap"]),
        accounts=AccountsConfig(**fields["accounts"]),
        mailboxes=MailboxesConfig(**fields["mailboxes"]),
        policy=PolicyConfig(**fields["policy"]),
        daemon=DaemonConfig(**fields["daemon"]),
        logging=LoggingConfig(**fields["logging"]),
        mta=MtaConfig(**fields["mta"]),
        cyrus=CyrusConfig(**fields["cyrus"]),
        dovecot=DovecotConfig(**fields["dovecot"]),
        metrics=MetricsConfig(**fields["metrics"]),
    )


def _field_values(section: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """Keys → the section dataclass's field names."""
    return {_FIELD_NAMES.get((section, key), key): value for key, value in given.items()}


def default_config_path(environ: Optional[Dict[str, str]] = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def known_keys() -> List[str]:
    """Every dotted key, for documentation checks."""
    return [f"{section}.{key}" for section, keys in _SCHEMA.items() for key in keys]
