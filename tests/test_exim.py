"""The Exim side against a real Exim (exim4-daemon-heavy) and a real slapd.

Each Exim runs examples/exim/exim4.conf, the example users get, with its three ldapquota
regions replaced by what ``ldapquota --exim-config`` prints for a config pointing at the
test slapd. The oracle is an SMTP client (smtplib) in a fresh session for every check,
because Exim caches lookups for the length of an SMTP session.

Variants: ``--mode defer|fail`` × ``mta.on_ldap_error: defer|accept``.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import pytest
from helpers import REPO, config_dict, run_cli, write_config
from servers.exim import Exim, give_to, rcpt, secret_for_exim

from ldapquota.exim import replace_blocks, split_blocks

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "exim" / "exim4.conf"
DOMAIN = "example.org"
NEAR_FREE = 10_000  # quotaFreeBytes of near@

#: Custom texts for the fail-open variants: configurable, with a comma (which must not end
#: a redirect :fail: text), a dollar (which must not be expanded) and a backslash-N (which
#: must not end Exim's \N no-expansion region).
CUSTOM_DEFER = "452 4.2.2 Quota exceeded, try again later ($0 left \\N)"
CUSTOM_FAIL = "552 5.2.2 Quota exceeded, mailbox full ($0 left \\N)"

VARIANTS = [("defer", "defer"), ("fail", "defer"), ("defer", "accept"), ("fail", "accept")]
VARIANT_IDS = [f"mode={m}-on_ldap_error={e}" for m, e in VARIANTS]


def refusal(mode: str, on_ldap_error: str) -> Tuple[int, str]:
    """The (code, text) an over-quota recipient gets in a variant."""
    if on_ldap_error == "accept":
        text = CUSTOM_DEFER if mode == "defer" else CUSTOM_FAIL
    else:
        text = "452 4.2.2 Mailbox full" if mode == "defer" else "552 5.2.2 Mailbox full"
    code, _, rest = text.partition(" ")
    return int(code), rest


# --------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def exim_files() -> Iterator[Dict[str, Path]]:
    """An alias file and a mail root the Exim user can read (pytest's tmp is 0700)."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="ldapquota-exim-files-"))
    directory.chmod(0o755)
    aliases = directory / "aliases"
    aliases.write_text(
        f"alias-over@{DOMAIN}: over@{DOMAIN}\n"
        f"alias-ok@{DOMAIN}: ok@{DOMAIN}\n"
        f"alias-near@{DOMAIN}: near@{DOMAIN}\n"
    )
    aliases.chmod(0o644)
    vmail = directory / "vmail"
    vmail.mkdir()
    give_to(vmail, "mail")
    yield {"dir": directory, "aliases": aliases, "vmail": vmail}
    shutil.rmtree(directory, ignore_errors=True)


def exim_config_text(config_path: Path, mode: str) -> str:
    """examples/exim/exim4.conf with the blocks `ldapquota --exim-config` prints."""
    result = run_cli(["-c", str(config_path), "--exim-config", "--mode", mode])
    assert result.returncode == 0, result.stderr
    return replace_blocks(EXAMPLE.read_text(), split_blocks(result.stdout))


@pytest.fixture(scope="module")
def make_exim(slapd_server, exim_factory, exim_files, tmp_path_factory) -> Callable[..., Exim]:
    """``make(mode, on_ldap_error, quota_uri=None, quota_password=None) -> Exim``, cached.

    ``quota_uri`` points only the ldapquota lookups somewhere else (a dead port, a hung
    listener, another slapd, whose cn=exim password is ``quota_password``); the example's
    own mailbox router keeps using the test slapd.
    """
    secret = secret_for_exim(slapd_server.exim_pw)
    bind = 'user="%s" pass=${quote:${readfile{%s}{}}}' % (slapd_server.exim_dn, secret)
    cache: Dict[tuple, Exim] = {}

    def make(mode: str, on_ldap_error: str, quota_uri: str | None = None, quota_password: str | None = None) -> Exim:
        key = (mode, on_ldap_error, quota_uri)
        if key not in cache:
            quota_secret = secret_for_exim(quota_password) if quota_password else secret
            workdir = tmp_path_factory.mktemp("ldapquota-config")
            mta = {
                "bind_dn": slapd_server.exim_dn,
                "bind_password_file": str(quota_secret),
                "on_ldap_error": on_ldap_error,
            }
            if on_ldap_error == "accept":
                mta.update(defer_text=CUSTOM_DEFER, fail_text=CUSTOM_FAIL)
            config = config_dict(slapd_server, exim_files["vmail"], mta=mta)
            if quota_uri:
                config["ldap"]["uri"] = quota_uri
            config_path = write_config(workdir / "ldapquota.yaml", config)
            macros = {
                "MAIL_DOMAINS": DOMAIN,
                "LDAP_SERVER": slapd_server.uri,
                "LDAP_BASE": slapd_server.people_dn,
                "LDAP_BIND": bind,
                "ALIAS_FILE": str(exim_files["aliases"]),
                "VMAIL_ROOT": str(exim_files["vmail"]),
                "VMAIL_USER": "mail",
            }
            if quota_uri:
                # The account router keeps its own lookup on the test slapd.
                macros["SEPARATE_ACCOUNT_LOOKUP"] = "1"
            cache[key] = exim_factory(exim_config_text(config_path, mode), macros, name=f"exim-{mode}-{on_ldap_error}")
        return cache[key]

    return make


@pytest.fixture
def accounts(ldap):
    """ok@ (no quota attributes), over@ (isOverQuota TRUE), near@ (FALSE, 10000 bytes
    free), bob@ (over quota: the target of wildcard injection attempts)."""
    ldap.add_account(f"ok@{DOMAIN}")
    ldap.add_account(f"over@{DOMAIN}", extra={"isOverQuota": "TRUE"})
    ldap.add_account(f"near@{DOMAIN}", extra={"isOverQuota": "FALSE", "quotaFreeBytes": NEAR_FREE})
    ldap.add_account(f"bob@{DOMAIN}", extra={"isOverQuota": "TRUE"})
    return ldap


def check(exim: Exim, recipient: str, size: int | None = None) -> Tuple[int, str]:
    try:
        return rcpt(exim, recipient, size=size)
    except Exception as exc:  # show Exim's side of the story
        raise AssertionError(f"SMTP to {exim} failed: {exc}\n{exim.logs()}") from exc


def in_parallel(jobs: Dict[str, Callable[[], object]]) -> Dict[str, object]:
    """Run independent SMTP checks at once (each is its own Exim process)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------- a working directory


@pytest.mark.parametrize("mode,on_ldap_error", VARIANTS, ids=VARIANT_IDS)
def test_recipients_are_answered_by_their_flag_and_free_space(accounts, make_exim, mode, on_ldap_error):
    exim = make_exim(mode, on_ldap_error)
    code, text = refusal(mode, on_ldap_error)
    answers = {
        "normal": check(exim, f"ok@{DOMAIN}"),
        "normal, big SIZE (no quotaFreeBytes)": check(exim, f"ok@{DOMAIN}", size=40_000_000),
        "flag FALSE": check(exim, f"near@{DOMAIN}"),
        "over": check(exim, f"over@{DOMAIN}"),
        "over, case differs": check(exim, "Over@Example.ORG"),
        "alias to over": check(exim, f"alias-over@{DOMAIN}"),
        "alias to normal": check(exim, f"alias-ok@{DOMAIN}"),
        "SIZE above free": check(exim, f"near@{DOMAIN}", size=NEAR_FREE + 1),
        "SIZE equal to free": check(exim, f"near@{DOMAIN}", size=NEAR_FREE),
        "SIZE below free": check(exim, f"near@{DOMAIN}", size=NEAR_FREE - 1),
        "SIZE=0": check(exim, f"near@{DOMAIN}", size=0),
        "unknown": check(exim, f"nobody@{DOMAIN}"),
    }
    got = {what: code_ for what, (code_, _) in answers.items()}
    assert got == {
        "normal": 250,
        "normal, big SIZE (no quotaFreeBytes)": 250,
        "flag FALSE": 250,
        "over": code,
        "over, case differs": code,
        "alias to over": code,
        "alias to normal": 250,
        "SIZE above free": code,
        "SIZE equal to free": 250,
        "SIZE below free": 250,
        "SIZE=0": 250,
        "unknown": 550,
    }, exim.logs()
    for what in ("over", "alias to over", "SIZE above free"):
        assert answers[what][1] == text, (what, answers[what])


@pytest.mark.parametrize("mode,on_ldap_error", VARIANTS, ids=VARIANT_IDS)
def test_tainted_addresses_are_quoted_and_match_nobody(accounts, make_exim, mode, on_ldap_error):
    """Unquoted, b* and * would match bob (over quota) or everyone (a lookup error);
    quoted, they are unknown addresses: 550 from the mailbox router, not bob's refusal."""
    exim = make_exim(mode, on_ldap_error)
    for address in (
        f"b*@{DOMAIN}",
        f"*@{DOMAIN}",
        f'"x)(mail=*"@{DOMAIN}',
        f'"bob@{DOMAIN})(mail=*"@{DOMAIN}',
        f'"b\\\\2a"@{DOMAIN}',
    ):
        assert check(exim, address)[0] == 550, (address, exim.logs())
    assert check(exim, f"bob@{DOMAIN}")[0] == refusal(mode, on_ldap_error)[0]


@pytest.mark.parametrize("mode,on_ldap_error", VARIANTS, ids=VARIANT_IDS)
def test_an_address_on_two_entries_is_a_temporary_error(ldap, make_exim, mode, on_ldap_error):
    """`ldap` demands exactly one entry: two entries with the same mail are a lookup
    error, so 4xx (never a guess, never 5xx)."""
    exim = make_exim(mode, on_ldap_error)
    ldap.add_account(f"dup@{DOMAIN}", uid="dup1")
    ldap.add_account(f"dup@{DOMAIN}", uid="dup2", extra={"isOverQuota": "TRUE"})
    code, text = check(exim, f"dup@{DOMAIN}")
    assert 400 <= code < 500, (code, text, exim.logs())
    if on_ldap_error == "defer":
        assert code == 451
        assert "more than one entry" in exim.logs()
    assert ldap.exim_pw not in exim.logs()


def test_one_message_to_several_recipients(accounts, make_exim):
    """Each RCPT is answered on its own; the message goes to the accepted ones."""
    exim = make_exim("defer", "defer")
    before = exim.queue_count()
    with exim.smtp() as client:
        assert client.mail("sender@client.test", [f"SIZE={NEAR_FREE + 500}"])[0] == 250
        answers = [client.rcpt(f"{who}@{DOMAIN}")[0] for who in ("ok", "over", "near", "alias-ok", "alias-over")]
        assert answers == [250, 452, 452, 250, 452], exim.logs()
        assert client.data(b"Subject: hi\r\n\r\n" + b"x" * NEAR_FREE + b"\r\n")[0] == 250
    assert exim.queue_count() == before + 1


# --------------------------------------------------------------------------- a broken directory


class HungServer:
    """A TCP listener that never accepts: connects succeed (the kernel's backlog), nothing
    ever answers. What a wedged LDAP server looks like to a client."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.uri = f"ldap://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def hung_server() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dead_uri() -> str:
    with socket.socket() as sock:  # bound and closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"ldap://127.0.0.1:{sock.getsockname()[1]}"


def timed(exim: Exim, recipient: str, size: int | None = None) -> Tuple[int, str, float]:
    start = time.monotonic()
    code, text = check(exim, recipient, size)
    return code, text, time.monotonic() - start


def test_quota_directory_down_or_hung(accounts, make_exim, dead_uri, hung_server):
    """Only the ldapquota lookups fail (the mailbox router still works): fail closed gives
    451 for everyone in both modes, fail open gives 250 for everyone; never 5xx; and a
    hung directory is answered well within the 10 s of docs/contract.md §8."""
    jobs = {}
    for broken, uri in (("refused", dead_uri), ("hung", hung_server.uri)):
        for mode, on_ldap_error in VARIANTS:
            exim = make_exim(mode, on_ldap_error, quota_uri=uri)
            for who, size in (("ok", None), ("over", None), ("near", NEAR_FREE + 1)):
                jobs[(broken, mode, on_ldap_error, who)] = (lambda e=exim, w=who, s=size: timed(e, f"{w}@{DOMAIN}", s))
    results = in_parallel(jobs)
    for (broken, mode, on_ldap_error, who), (code, text, seconds) in results.items():
        where = (broken, mode, on_ldap_error, who, code, text, round(seconds, 1))
        assert code == (451 if on_ldap_error == "defer" else 250), where
        assert seconds < 15, where  # a hang guard, not a performance assertion
    for mode, on_ldap_error in VARIANTS:
        logs = make_exim(mode, on_ldap_error, quota_uri=hung_server.uri).logs()
        assert "timed out" in logs or "timeout" in logs, logs
        assert accounts.exim_pw not in logs


@pytest.mark.parametrize("outage", ["paused", "stopped"])
def test_slapd_paused_or_stopped_gives_4xx_to_every_recipient(accounts, make_exim, outage):
    """The real directory hangs (SIGSTOP) or is gone: every recipient, in every variant,
    gets a 4xx (the example's mailbox router needs LDAP too, so even fail-open defers)."""
    exims = {variant: make_exim(*variant) for variant in VARIANTS}
    jobs = {
        (variant, who): (lambda e=exim, w=who: timed(e, f"{w}@{DOMAIN}"))
        for variant, exim in exims.items()
        for who in ("ok", "over", "alias-over")
    }
    if outage == "paused":
        accounts.pause()
    else:
        accounts.stop()
    try:
        results = in_parallel(jobs)
    finally:
        accounts.ensure_running()
    for key, (code, text, seconds) in results.items():
        assert 400 <= code < 500, (key, code, text)
        assert seconds < 15, (key, seconds)
    for exim in exims.values():
        assert accounts.exim_pw not in exim.logs()


def test_fail_open_resets_the_free_space_of_the_previous_recipient(
    accounts, slapd_factory, make_exim
):
    """acl_m variables outlive one RCPT. In one session: near@ is refused for its SIZE
    (10000 bytes free); then the quota directory hangs; the next recipient must not be
    judged by near@'s free space (fail open: 250)."""
    quota_directory = slapd_factory()
    quota_directory.add_account(f"near@{DOMAIN}", extra={"isOverQuota": "FALSE", "quotaFreeBytes": NEAR_FREE})
    quota_directory.add_account(f"ok@{DOMAIN}")
    exim = make_exim("defer", "accept", quota_uri=quota_directory.uri, quota_password=quota_directory.exim_pw)
    with exim.smtp() as client:
        assert client.mail("sender@client.test", [f"SIZE={NEAR_FREE + 1}"])[0] == 250
        assert client.rcpt(f"near@{DOMAIN}")[0] == 452
        quota_directory.pause()
        try:
            code, text = client.rcpt(f"ok@{DOMAIN}")
        finally:
            quota_directory.resume()
    assert code == 250, (code, text, exim.logs())
    assert "warn" in exim.logs()  # the skipped lookup is logged


def test_cli_output_is_what_the_exim_test_config_uses(accounts, make_exim):
    """The running config holds exactly the three printed blocks (no drift)."""
    exim = make_exim("defer", "defer")
    text = exim.config_file.read_text()
    for name in ("main", "acl_smtp_rcpt", "routers"):
        assert f"# ldapquota: {name}" in text and f"# ldapquota end: {name}" in text
    assert accounts.exim_pw not in text


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("how", ["ldaps", "starttls"])
def test_lookups_over_tls_verify_the_server_certificate(slapd_tls_server, exim_factory, exim_files, tmp_path, how):
    """ldaps:// or StartTLS: the main block's ldap_require_cert = demand and
    ldap_ca_cert_file make Exim check the directory's certificate; with the wrong CA the
    lookup fails, and that is a 451, not a pass."""
    server = slapd_tls_server
    dns = [
        server.add_account(f"tls-ok@{DOMAIN}", uid="tls-ok"),
        server.add_account(f"tls-over@{DOMAIN}", uid="tls-over", extra={"isOverQuota": "TRUE"}),
    ]
    try:
        answers = {}
        for ca_name, ca_file in (("right", server.ca_file), ("wrong", server.wrong_ca_file)):
            ca = secret_for_exim(Path(ca_file).read_text(), name="ca.pem")
            ldap_section = {"ca_file": str(ca)}
            if how == "ldaps":
                ldap_section["uri"] = server.ldaps_uri
            else:
                ldap_section.update(uri=server.uri, start_tls=True)
            secret = secret_for_exim(server.exim_pw)
            config = config_dict(
                server, exim_files["vmail"], ldap=ldap_section,
                mta={"bind_dn": server.exim_dn, "bind_password_file": str(secret)},
            )
            config_path = write_config(tmp_path / f"ldapquota-{ca_name}.yaml", config)
            text = exim_config_text(config_path, "defer")
            assert "ldap_require_cert = demand" in text and f"ldap_ca_cert_file = {ca}" in text
            exim = exim_factory(
                text,
                {"MAIL_DOMAINS": DOMAIN, "ALIAS_FILE": str(exim_files["aliases"]),
                 "VMAIL_ROOT": str(exim_files["vmail"]), "VMAIL_USER": "mail"},
                name=f"exim-{how}-{ca_name}",
            )
            answers[ca_name] = {who: check(exim, f"tls-{who}@{DOMAIN}")[0] for who in ("ok", "over")}
            assert server.exim_pw not in exim.logs()
    finally:
        for dn in dns:
            server.ldapdelete(dn)
    assert answers == {"right": {"ok": 250, "over": 452}, "wrong": {"ok": 451, "over": 451}}, answers
