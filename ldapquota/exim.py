"""``ldapquota --exim-config``: the Exim side of ldapquota, rendered from the config (docs/contract.md §8).

The output is three blocks, each opened by a line ``# ldapquota: NAME`` and closed by a line
``# ldapquota end: NAME``, to be pasted into the matching part of an existing Exim
configuration:

``main``
    Macros holding the one LDAP query both checks use (server, bind, timeouts, base, filter),
    plus the global LDAP TLS options when the config asks for TLS.
``acl_smtp_rcpt``
    An RCPT ACL statement, meant to follow ``require verify = recipient``: it refuses a
    message whose declared ``SIZE=`` is larger than the recipient's ``quotaFreeBytes``.
``routers``
    A ``verify_only`` redirect router, placed after the alias and forward routers and just
    before the routers that deliver to local mailboxes, so that the flag is checked for the
    *final* mailbox of an alias. Over quota it answers ``:defer:`` (``--mode defer``,
    452 by default) or ``:fail:`` (``--mode fail``, 552).

Both checks ask LDAP the same question (the same query text for the same address), so for an
address that is itself an account Exim's per-process lookup cache answers the ACL statement
without a second round trip.

LDAP outages (``mta.on_ldap_error``):

``defer`` (fail closed, the default)
    A lookup that cannot complete (server down or hung, bind refused, the address held by
    more than one entry) makes the router or ACL statement DEFER: the client gets
    ``451 Temporary local problem``. Never a 5xx.
``accept`` (fail open)
    The lookups run where a failure is swallowed and logged: in ``warn ... set acl_m_...``
    statements (a ``warn`` whose ``set`` fails is skipped and logged, and the ACL goes on),
    each variable reset first because ``acl_m`` values outlive one RCPT. The ACL statement
    does that directly; the router does it in a small inline ACL it runs through
    ``${acl{...}}`` (a router cannot catch a failed lookup itself). Mail is accepted while
    LDAP is unusable, and still refused for over-quota mailboxes while it works.

Everything that comes from the config is escaped for the layer it lands in: LDAP filter and
base DN are URL-encoded (so no Exim expansion character survives in them), the bind DN is
escaped for Exim's quoted ``user="..."`` syntax, the SMTP texts for Exim expansion. Every
tainted value (``$local_part``, ``$domain``) goes through ``${quote_ldap:}``. The bind
password is never read here: Exim reads ``mta.bind_password_file`` itself with
``${readfile}``, so the rendered text holds only the file's name.

This module is pure: it reads no files and talks to nothing.
"""

import re
from typing import Dict, List, Tuple
from urllib.parse import urlsplit

from ldapquota.errors import ConfigError
from ldapquota.settings import Config

BLOCK_NAMES: Tuple[str, ...] = ("main", "acl_smtp_rcpt", "routers")
START_MARKER = "# ldapquota: {}"
END_MARKER = "# ldapquota end: {}"
MODES = ("defer", "fail")

#: The attributes the lookup asks for (docs/contract.md §3), before the address attribute. Both checks
#: ask for all of them, so that they share one query text and therefore Exim's lookup
#: cache. The address attribute is asked for too: every matching entry has it, so the
#: lookup finds an account even when it carries no quota attributes, and an account
#: router can reuse the very same query (and its cached answer) for the mailbox.
ATTRIBUTES = ("isOverQuota", "quotaFreeBytes")


def attributes(config: Config) -> Tuple[str, ...]:
    return ATTRIBUTES + (config.accounts.address_attribute,)

#: Macro names. Exim replaces a macro name wherever it appears in later lines, so no name
#: here may contain another as a substring.
MACRO_QUERY = "LDAPQUOTA_QUERY"
MACRO_FLAG_ACL = "LDAPQUOTA_OVER_ACL"

#: Time budget (seconds) for the LDAP lookups of one RCPT when the directory hangs; docs/contract.md §8
#: wants the 4xx within 10 s. NETTIME applies per server tried and per lookup.
_HANG_BUDGET = 8
_MAX_NETTIME = 3

# Characters left as they are when URL-encoding a DN or filter for an LDAP URL: letters,
# digits and the punctuation LDAP filters and DNs are made of. Everything else, including
# every character Exim's expansion treats specially ($ { } \) and the URL delimiters
# (? # % space), is %XX-encoded; libldap decodes it again.
_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!*'()=,&|:@+;<>")


class EximConfigError(ConfigError, ValueError):
    """The config cannot be expressed as an Exim lookup (e.g. mixed ldap:// and ldaps://).
    A ConfigError, so the CLI reports it with exit 78."""


# --------------------------------------------------------------------------- escaping


def url_encode(text: str) -> str:
    """Percent-encode ``text`` (UTF-8) for the DN or filter part of an LDAP URL."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append(char if char in _URL_SAFE else f"%{byte:02X}")
    return "".join(out)


def expansion_escape(text: str) -> str:
    """Make literal ``text`` survive Exim string expansion unchanged."""
    return re.sub(r"([\\${}])", r"\\\1", text)


def _aux_quote(value: str) -> str:
    """A value for a ``name="value"`` LDAP auxiliary setting (USER=): Exim reads it with
    backslash escapes inside double quotes, and then removes URL quoting, so ``%`` must be
    encoded too. The result still needs :func:`expansion_escape` (done by the caller)."""
    value = value.replace("%", "%25")
    value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


# --------------------------------------------------------------------------- the query


def _servers(config: Config) -> Tuple[str, List[Tuple[str, int]]]:
    """(scheme, [(host, port)]) of the MTA's servers (``mta.uri``, else ``ldap.uri``),
    with explicit default ports."""
    schemes = set()
    servers = []
    for uri in config.mta_uris:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        schemes.add(scheme)
        host = parts.hostname or "localhost"
        port = parts.port or (636 if scheme == "ldaps" else 389)
        servers.append((host, port))
    if len(schemes) > 1:
        key = "mta.uri" if config.mta.uris else "ldap.uri"
        raise EximConfigError(
            f"{config.path}: {key}: mixes ldap:// and ldaps://; Exim uses one scheme for all the servers of "
            "a lookup; use one scheme (or ldap:// with ldap.start_tls: true)"
        )
    return schemes.pop(), servers


def nettime(config: Config) -> int:
    """Seconds for Exim's NETTIME (connect and each wait for an answer) and TIME (the
    server-side search limit), so that a hung directory gives a 4xx within the budget
    however many servers Exim tries and however many lookups run for the failing RCPT."""
    lookups = 2 if config.mta.on_ldap_error == "accept" else 1
    servers = len(config.mta_uris)
    return max(1, min(_MAX_NETTIME, _HANG_BUDGET // (servers * lookups)))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_query(config: Config) -> str:
    """The LDAP query text (auxiliary settings and URL) for ``$local_part@$domain``."""
    scheme, servers = _servers(config)
    seconds = nettime(config)
    options = [f"nettime={seconds}", f"time={seconds}"]
    if config.mta.bind_dn:
        options.append("user=" + expansion_escape(_aux_quote(config.mta.bind_dn)))
        if config.mta.bind_password_file:
            password_file = expansion_escape(config.mta.bind_password_file)
            # readfile with an empty end-of-line string drops the trailing newline.
            options.append("pass=${quote:${readfile{%s}{}}}" % password_file)
    if len(servers) == 1:
        authority = _host_port(*servers[0])
    else:
        # One list for this query only: a colon inside an item is doubled.
        listed = ":".join(f"{host}:{port}".replace(":", "::") for host, port in servers)
        options.append(f"servers={listed}")
        authority = ""
    address_filter = "(%s=${quote_ldap:$local_part@$domain})" % config.accounts.address_attribute
    search_filter = "(&" + url_encode(config.ldap.filter) + address_filter + ")"
    url = f"{scheme}://{authority}/{url_encode(config.ldap.base_dn)}?{','.join(attributes(config))}?sub?{search_filter}"
    return " ".join(options + [url])


# --------------------------------------------------------------------------- the blocks


def _texts(config: Config, mode: str) -> Tuple[str, str, str]:
    """(redirect item, ACL verb, SMTP text) for ``mode``."""
    if mode == "defer":
        return ":defer:", "defer", expansion_escape(config.mta.defer_text)
    return ":fail:", "deny", expansion_escape(config.mta.fail_text)


def _main_block(config: Config, mode: str) -> List[str]:
    scheme, _servers_ = _servers(config)
    fail_open = config.mta.on_ldap_error == "accept"
    redirect_item, _verb, text = _texts(config, mode)
    lines = [
        START_MARKER.format("main"),
        f"# Generated by `ldapquota --exim-config --mode {mode}` from {config.path}.",
        "# Paste into the main section, before the first `begin`. Debian split config:",
        "#   /etc/exim4/conf.d/main/05_ldapquota",
        "# The router and the RCPT ACL statement ldapquota prints with this block use these",
        "# macros. Both ask LDAP one question per address: the account entry matching",
        f"# {config.ldap.filter} whose {config.accounts.address_attribute} is the address,",
        f"# reading {', '.join(attributes(config))}. `ldap` (not `ldapm`) demands exactly one",
        "# entry: an address held by two entries is a lookup error, never a guess.",
        f"# An account router may reuse {MACRO_QUERY} (same text, so Exim's lookup cache",
        f"# answers it): ${{extract{{{config.accounts.address_attribute}}}{{$value}}}} is the account's address.",
        f"# NETTIME/TIME = {nettime(config)} s per server tried, so a hung directory is noticed",
        "# within 10 s.",
    ]
    if config.mta.bind_password_file:
        lines += [
            "# Exim reads the bind password from the file itself (trailing newline dropped);",
            "# the Exim user (Debian-exim) must be able to read it, nobody else should.",
        ]
    if fail_open:
        lines += [
            "# mta.on_ldap_error: accept (fail open): when LDAP cannot answer, mail is accepted.",
            f"# {MACRO_FLAG_ACL} is an inline ACL the router runs through ${{acl}}: its lookup",
            "# sits in a `warn` statement, which Exim skips (and logs) when LDAP fails.",
        ]
    else:
        lines += [
            "# mta.on_ldap_error: defer (fail closed): when LDAP cannot answer, RCPT gets 451.",
        ]
    if scheme == "ldaps" or config.ldap.start_tls:
        lines += [
            "# LDAP over TLS, certificate verified. These are global options: they apply to",
            "# every LDAP lookup of this Exim. `demand` (not `hard`): both make the library",
            "# check the certificate, but Exim also passes `hard` on as \"TLS from the first",
            "# byte\", which breaks StartTLS on an ldap:// port.",
        ]
        if config.ldap.start_tls:
            lines.append("ldap_start_tls = true")
        lines.append("ldap_require_cert = demand")
        if config.ldap.ca_file:
            lines.append(f"ldap_ca_cert_file = {config.ldap.ca_file}")
    lines.append(f"{MACRO_QUERY} = {render_query(config)}")
    if fail_open:
        lookup = "${lookup ldap{%s}{${extract{isOverQuota}{$value}}}{FALSE}}" % MACRO_QUERY
        statements = [
            # acl_m values outlive one RCPT: reset, so a failed lookup cannot reuse the
            # previous recipient's answer.
            "warn set acl_m_ldapquota_over = FALSE",
            # A warn whose set fails (LDAP down) is skipped and logged; the ACL goes on.
            "warn set acl_m_ldapquota_over = " + lookup,
            "accept condition = $acl_m_ldapquota_over",
        ]
        # ${acl} expands its name argument before running it as ACL text. \N...\N is copied
        # without expansion, so each lookup runs inside the ACL (the macro in it must not be
        # touched); the message line instead carries its text escaped twice, so that no
        # backslash in it can end a \N region. \n separates the ACL's lines.
        acl_lines = ["\\N%s\\N" % statement for statement in statements]
        acl_lines.append("message = " + expansion_escape(redirect_item + text))
        acl_text = "\\n".join(acl_lines)
        lines.append(f"{MACRO_FLAG_ACL} = {acl_text}")
    lines.append(END_MARKER.format("main"))
    return lines


def _acl_block(config: Config, mode: str) -> List[str]:
    _item, verb, text = _texts(config, mode)
    free = "${lookup ldap{%s}{${extract{quotaFreeBytes}{$value}}}}" % MACRO_QUERY
    lines = [
        START_MARKER.format("acl_smtp_rcpt"),
        "# Paste into the RCPT ACL (acl_smtp_rcpt) right after `require verify = recipient`.",
        "# Debian split config: put it in a file named by CHECK_RCPT_LOCAL_ACL_FILE.",
        "# Refuses a message whose declared size (MAIL FROM ... SIZE=) is larger than the",
        "# recipient's quotaFreeBytes. $message_size is -1 when no SIZE was given; an account",
        "# without quotaFreeBytes (far from full) is never refused here.",
    ]
    if config.mta.on_ldap_error == "accept":
        lines += [
            "# Fail open: the lookup runs in a `warn` statement, so an LDAP failure is logged",
            "# and skipped. The variable is reset first: acl_m values outlive one RCPT.",
            "  warn    set acl_m_ldapquota_free =",
            "  warn    domains   = +local_domains",
            "          condition = ${if >{$message_size}{0}}",
            f"          set acl_m_ldapquota_free = {free}",
            f"  {verb:<7} condition = "
            "${if and{{>{$message_size}{0}}{!eq{$acl_m_ldapquota_free}{}}"
            "{>{$message_size}{$acl_m_ldapquota_free}}}}",
            f"          message   = {text}",
        ]
    else:
        lines += [
            "# Fail closed: if LDAP cannot answer, the condition defers and RCPT gets 451.",
            f"  {verb:<7} domains   = +local_domains",
            "          condition = ${if >{$message_size}{0}}",
            "          condition = ${if >{$message_size}{%s}}"
            % ("${lookup ldap{%s}{${extract{quotaFreeBytes}{$value}{$value}{$message_size}}}{$message_size}}" % MACRO_QUERY),
            f"          message   = {text}",
        ]
    lines.append(END_MARKER.format("acl_smtp_rcpt"))
    return lines


def _router_block(config: Config, mode: str) -> List[str]:
    redirect_item, _verb, text = _texts(config, mode)
    if config.mta.on_ldap_error == "accept":
        data = "${acl{%s}}" % MACRO_FLAG_ACL
    else:
        data = "${if bool{${lookup ldap{%s}{${extract{isOverQuota}{$value}}}}}{%s%s}}" % (
            MACRO_QUERY,
            redirect_item,
            text,
        )
    what = "defers (4xx)" if mode == "defer" else "fails (5xx)"
    return [
        START_MARKER.format("routers"),
        "# Paste into the routers section after the alias and .forward routers and right",
        "# before the routers that deliver to local mailboxes, so that an alias is resolved",
        "# first and the flag of the final mailbox is checked. Debian split config:",
        "#   /etc/exim4/conf.d/router/650_ldapquota (after 600_exim4-config_userforward).",
        "# verify_only: it runs only for `verify = recipient` at RCPT time, so mail that was",
        f"# already accepted is never bounced because of the flag. Over quota it {what};",
        "# otherwise its data is empty and it declines, and routing goes on.",
        "# `hide`: -bP shows this option only to admin users (it holds the bind credentials).",
        "ldapquota:",
        "  driver      = redirect",
        "  domains     = +local_domains",
        "  verify_only",
        "  allow_defer",
        "  allow_fail",
        f"  hide data   = {data}",
        END_MARKER.format("routers"),
    ]


def render_exim_config(config: Config, mode: str = "defer") -> str:
    """The three blocks for ``config`` and ``mode`` ("defer": 452 text, "fail": 552 text)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    blocks = [_main_block(config, mode), _acl_block(config, mode), _router_block(config, mode)]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


# --------------------------------------------------------------------------- splitting


def split_blocks(text: str) -> Dict[str, str]:
    """Block name → block text (marker lines included) of ``render_exim_config`` output.

    A block runs from its ``# ldapquota: NAME`` line to its ``# ldapquota end: NAME`` line,
    or, for text without end lines, to the next start line or the end of the text."""
    blocks: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        start = _marker(line, START_MARKER)
        if start is not None:
            if start in blocks:
                raise ValueError(f"block {start!r} appears twice")
            current = start
            blocks[current] = [line]
            continue
        if current is None:
            continue
        blocks[current].append(line)
        if _marker(line, END_MARKER) == current:
            current = None
    for lines in blocks.values():
        while lines and not lines[-1].strip():
            lines.pop()
    return {name: "\n".join(lines) + "\n" for name, lines in blocks.items()}


def replace_blocks(exim_config: str, blocks: Dict[str, str]) -> str:
    """``exim_config`` with each ``# ldapquota: NAME`` ... ``# ldapquota end: NAME`` region
    replaced by ``blocks[NAME]`` (an empty string removes the region). Every region of the
    configuration must have a replacement and every replacement a region."""
    out: List[str] = []
    lines = exim_config.splitlines()
    index = 0
    done = set()
    while index < len(lines):
        name = _marker(lines[index], START_MARKER)
        if name is None:
            out.append(lines[index])
            index += 1
            continue
        if name not in blocks:
            raise ValueError(f"no replacement given for the {name!r} block")
        end = index + 1
        while end < len(lines) and _marker(lines[end], END_MARKER) != name:
            end += 1
        if end == len(lines):
            raise ValueError(f"the {name!r} block has no {END_MARKER.format(name)!r} line")
        out.extend(blocks[name].rstrip("\n").splitlines())
        done.add(name)
        index = end + 1
    missing = set(blocks) - done
    if missing:
        raise ValueError(f"the configuration has no place for block(s) {', '.join(sorted(missing))}")
    return "\n".join(out) + "\n"


def _marker(line: str, pattern: str) -> "str | None":
    stripped = line.strip()
    for name in BLOCK_NAMES:
        if stripped == pattern.format(name):
            return name
    return None
