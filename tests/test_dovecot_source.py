"""The dovecot source without a Dovecot: its config keys, and the faults a real Dovecot
will not produce on demand (a doveadm that is missing, hangs, or prints garbage; an API
that never answers). Faults are stand-in programs placed through ``dovecot.doveadm``,
as an operator would place a wrapper; the real Dovecot is in test_dovecot.py."""

import socket
import stat
import time
from pathlib import Path

import pytest

from ldapquota.config import parse_config
from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError, ConfigError, MeasureError, SourceUnavailable
from ldapquota.quota import Limit, Policy, Usage, exceeds_over_threshold
from ldapquota.sources import open_source
from ldapquota.sources.base import MailboxRequest
from ldapquota.sources.dovecot import POLL_RATE, DovecotPolling

BASE = """\
ldap:
  uri: ldap://127.0.0.1:389
  base_dn: ou=people,dc=example,dc=org
mailboxes:
  source: dovecot
"""


def says_over(usage: Usage, limit: Limit) -> bool:
    return exceeds_over_threshold(usage, limit, Policy())


def config(text: str = "", path: str = "/etc/ldapquota/t.yaml"):
    return parse_config(BASE + text, path)


def fake_doveadm(tmp_path: Path, body: str) -> Path:
    """A stand-in doveadm: a shell script with ``body`` (it sees doveadm's arguments)."""
    script = tmp_path / "doveadm"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def source_with(tmp_path: Path, body: str, extra: str = ""):
    script = fake_doveadm(tmp_path, body)
    return open_source(config(f"dovecot:\n  doveadm: {script}\n  timeout: 2s\n{extra}"))


# --------------------------------------------------------------------------- config


def test_dovecot_needs_no_mail_root_and_has_the_contract_defaults():
    settings = config().dovecot
    assert config().mailboxes.root is None
    assert settings.doveadm == ("doveadm",)
    assert (settings.http_url, settings.http_key_file, settings.quota_root) == (None, None, None)
    assert settings.user.text == "{address}"


def test_maildir_still_requires_the_root_and_says_why():
    with pytest.raises(ConfigError, match=r"mailboxes.root: is required with mailboxes.source: maildir"):
        parse_config(BASE.replace("  source: dovecot\n", "  source: maildir\n"), "f.yaml")


def test_doveadm_takes_options_split_like_a_shell_but_never_run_by_one():
    settings = config("dovecot:\n  doveadm: \"/usr/bin/doveadm -c '/etc/dovecot/my conf'\"\n").dovecot
    assert settings.doveadm == ("/usr/bin/doveadm", "-c", "/etc/dovecot/my conf")


@pytest.mark.parametrize(
    "section, key, message",
    [
        ("  http_url: http://127.0.0.1:8080/doveadm/v1\n", "dovecot.http_url", "needs dovecot.http_key_file"),
        ("  http_key_file: /etc/key\n", "dovecot.http_key_file", "given without dovecot.http_url"),
        ("  http_url: ftp://x/doveadm\n", "dovecot.http_url", "not an http:// or https:// URL"),
        ("  http_url: http://x:99999/\n", "dovecot.http_url", "bad port"),
        ("  doveadm: \"doveadm 'unclosed\"\n", "dovecot.doveadm", "cannot be split"),
        ("  user: \"{bogus}\"\n", "dovecot.user", "unknown placeholder"),
        ("  timeout: 0\n", "dovecot.timeout", "positive"),
        ("  colour: blue\n", "dovecot.colour", "unknown key"),
    ],
)
def test_bad_dovecot_keys_name_key_and_line(section, key, message):
    with pytest.raises(ConfigError, match=rf"f.yaml, line 7: {key}: .*{message}"):
        parse_config(BASE + "dovecot:\n" + section, "f.yaml")


def test_the_api_key_is_read_from_its_file_and_never_shown(tmp_path):
    key = tmp_path / "doveadm.key"
    key.write_text("s3cret-key\n")
    loaded = config(f"dovecot:\n  http_url: http://127.0.0.1:8080/doveadm/v1\n  http_key_file: {key}\n")
    assert loaded.dovecot.http_key == "s3cret-key"
    assert "s3cret" not in repr(loaded)


def test_an_unreadable_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"dovecot.http_key_file: cannot read"):
        config(f"dovecot:\n  http_url: http://127.0.0.1:8080/\n  http_key_file: {tmp_path / 'none'}\n")


# --------------------------------------------------------------------------- user names


@pytest.mark.parametrize(
    "template, address, attributes, expected",
    [
        ("{address}", "Jane@Example.org", {}, "Jane@Example.org"),
        ("{localpart:lower}", "Jane@Example.org", {}, "jane"),
        ("{attr:uid}", "j@x", {"uid": ["j/doe"]}, "j/doe"),  # a name, not a path: '/' is fine
        ("{address}", "$(id);`x`|&<>'\"@x", {}, "$(id);`x`|&<>'\"@x"),
    ],
)
def test_the_user_template_names_the_dovecot_user(template, address, attributes, expected):
    source = open_source(config(f"dovecot:\n  user: \"{template}\"\n"))
    assert source.locate(AccountEntry("uid=j", attributes), address) == expected


@pytest.mark.parametrize("address", ["a\nb@x", " a@x", "a@x\t", "a\x00@x"])
def test_a_user_name_that_would_split_dovecots_list_is_refused_for_that_account(address):
    with pytest.raises(AccountError, match="control characters or edge spaces"):
        open_source(config()).locate(AccountEntry("uid=j", {}), address)


# --------------------------------------------------------------------------- doveadm faults


def test_a_missing_doveadm_is_the_source_unavailable(tmp_path):
    source = open_source(config(f"dovecot:\n  doveadm: {tmp_path / 'no-doveadm'}\n"))
    with pytest.raises(SourceUnavailable, match="is not an executable command") as info:
        source.check_ready()
    assert info.value.exit_code == 69
    with pytest.raises(SourceUnavailable, match="cannot run"):
        source.measure_many([MailboxRequest("a@x", None)], says_over, 0.0)


def test_a_hung_doveadm_times_out_instead_of_hanging(tmp_path):
    source = source_with(tmp_path, "exec sleep 30")
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"did not finish within 2s \(dovecot.timeout\)"):
        source.measure_many([MailboxRequest("a@x", None)], says_over, 0.0)
    assert time.monotonic() - started < 20  # killed, not waited for


def test_doveadm_failing_for_everyone_is_the_source_unavailable(tmp_path):
    source = source_with(tmp_path, "echo 'Fatal: Error reading configuration: stat(/etc/dovecot/dovecot.conf) failed' >&2; exit 89")
    with pytest.raises(SourceUnavailable, match=r"exit 89.*Error reading configuration"):
        source.measure_many([MailboxRequest("a@x", None), MailboxRequest("b@x", None)], says_over, 0.0)


@pytest.mark.parametrize("output", ['[{"username":"a@x","root":"R","type":"STORAGE","val', "Quota name Type Value\n"])
def test_garbage_or_truncated_output_is_an_error_for_each_account(tmp_path, output):
    source = source_with(tmp_path, f"cat >/dev/null; printf '%s' '{output}'")
    results = source.measure_many([MailboxRequest("a@x", None), MailboxRequest("b@x", Limit(bytes=5))], says_over, 0.0)
    assert all(isinstance(r, MeasureError) and "not its quota report" in str(r) for r in results)


def test_users_go_in_on_stdin_one_a_line_and_each_is_asked_once(tmp_path):
    """Names with shell metacharacters reach doveadm untouched (no shell on the way), and
    two accounts of one Dovecot user cost one lookup."""
    seen = tmp_path / "seen"
    body = (f"printf '%s\\n' \"$@\" > {seen}.args; cat > {seen}; "
            "printf '%s' '[{\"username\":\"$(id)`x`@x\",\"root\":\"R\",\"type\":\"STORAGE\",\"value\":\"2\",\"limit\":\"-\"}]'")
    source = source_with(tmp_path, body)
    odd = "$(id)`x`@x"
    results = source.measure_many([MailboxRequest(odd, None), MailboxRequest(odd, Limit(bytes=1024))], says_over, 0.0)
    assert seen.read_text() == odd + "\n"
    assert seen.with_suffix(".args").read_text().split("\n")[:5] == ["-f", "json", "quota", "get", "-F"]
    assert [r.usage for r in results] == [Usage(2048, 0), Usage(2048, 0)]  # type: ignore[union-attr]
    assert [r.limit for r in results] == [Limit(), Limit(bytes=1024)]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- HTTP API faults


def test_a_hung_api_times_out(tmp_path):
    """A server that accepts the connection and never answers."""
    key = tmp_path / "key"
    key.write_text("k\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        source = open_source(config(f"dovecot:\n  http_url: http://127.0.0.1:{port}/doveadm/v1\n"
                                    f"  http_key_file: {key}\n  timeout: 1s\n"))
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match="doveadm HTTP API"):
            source.measure_many([MailboxRequest("a@x", None)], says_over, 0.0)
        assert time.monotonic() - started < 10


def test_an_api_nobody_listens_on_is_the_source_unavailable(tmp_path):
    key = tmp_path / "key"
    key.write_text("k\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connection refused
        source = open_source(config(f"dovecot:\n  http_url: http://127.0.0.1:{port}/\n  http_key_file: {key}\n"))
        with pytest.raises(SourceUnavailable, match="refused"):
            source.measure_many([MailboxRequest("a@x", None)], says_over, 0.0)


# --------------------------------------------------------------------------- the daemon's polling


def test_polling_never_asks_more_than_the_rate_allows_and_in_big_slices():
    feed = open_source(config()).feed(config().daemon)
    assert isinstance(feed, DovecotPolling) and feed.step == 25.0
    for number in range(10_000):
        feed.follow(f"u{number}", now=0.0)
    assert feed.interval == 10_000 / POLL_RATE
    assert feed.collect(now=1.0).keys == set()  # the first slice is due one step after the first follow
    slice_keys = feed.collect(now=25.0).keys
    assert len(slice_keys) == 25 * POLL_RATE == 500  # one doveadm batch every 25 s
    for number in range(9_990):
        feed.unfollow(f"u{number}")
    assert feed.interval == 30.0  # a few users: every poll_interval, as configured


def test_the_daemons_prefetch_asks_once_for_all_due_users(tmp_path, monkeypatch):
    """The loop measures due accounts one by one after prefetch(): one doveadm run for all,
    and an answer stands in only for a moment."""
    import ldapquota.sources.dovecot as dovecot_module

    runs = tmp_path / "runs"
    body = (f"echo run >> {runs}; "
            "while read -r user; do printf '%s\\n' \"$user\"; done | "
            "awk 'BEGIN{printf \"[\"} {if (NR>1) printf \",\"; "
            "printf \"{\\\"username\\\":\\\"%s\\\",\\\"root\\\":\\\"R\\\",\\\"type\\\":\\\"STORAGE\\\",\\\"value\\\":\\\"1\\\",\\\"limit\\\":\\\"-\\\"}\", $0} "
            "END{printf \"]\"}'")
    source = source_with(tmp_path, body)
    source.prefetch(["a@x", "b@x", "a@x"])
    results = [source.measure(MailboxRequest(user, None), says_over, 0.0) for user in ("a@x", "b@x")]
    assert [r.usage for r in results] == [Usage(1024, 0), Usage(1024, 0)]
    assert runs.read_text().count("run") == 1
    source.measure(MailboxRequest("a@x", None), says_over, 0.0)  # taken already: asked again
    assert runs.read_text().count("run") == 2
    source.prefetch(["c@x"])
    monkeypatch.setattr(dovecot_module, "PREFETCH_FRESH", -1.0)  # stale at once
    source.measure(MailboxRequest("c@x", None), says_over, 0.0)
    assert runs.read_text().count("run") == 4
