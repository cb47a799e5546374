"""TLS to the directory always verifies the certificate; StartTLS never silently fails.
Over TLS the accounts are always read with ldap3, whatever ldap.reader says.

The fixture's slapd has a certificate signed by a CA the test made (``ca_file``); a second,
unrelated CA (``wrong_ca_file``) must not be trusted for it.
"""


import pytest
from helpers import both_readers, config_dict, maildirsize_text, make_maildir, run_cli, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_ldap(slapd_tls_server):
    slapd_tls_server.ensure_running()
    slapd_tls_server.reset()
    return slapd_tls_server


def _sync(server, tmp_path, **ldap_overrides):
    root = tmp_path / "vmail"
    server.add_account("full@example.org", quota="1000")
    make_maildir(root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    path = write_config(tmp_path / "c.yaml", config_dict(server, root, ldap=ldap_overrides))
    return run_cli(["-c", str(path), "--sync"])


def _flag(server):
    entries = server.ldapsearch(server.people_dn, "(mail=full@example.org)", ["isOverQuota"])
    return next(iter(entries.values())).get("isOverQuota", [None])[0]


@both_readers
def test_ldaps_with_the_signing_ca_syncs(tls_ldap, tmp_path, reader):
    result = _sync(tls_ldap, tmp_path, uri=tls_ldap.ldaps_uri, ca_file=str(tls_ldap.ca_file), reader=reader)
    assert result.returncode == 0, result.stderr
    assert _flag(tls_ldap) == "TRUE"
    _read_with_ldap3_over_tls(result, reader)


def _read_with_ldap3_over_tls(result, reader):
    """python-ldap never reads over TLS (libldap's handshake has no time limit): ldap3 does,
    and the configured python-ldap is said to be set aside, once."""
    assert result.stderr.count("python-ldap is not used over TLS") == (reader == "python-ldap")


def test_ldaps_with_an_untrusted_certificate_is_refused_with_exit_69(tls_ldap, tmp_path):
    result = _sync(tls_ldap, tmp_path, uri=tls_ldap.ldaps_uri, ca_file=str(tls_ldap.wrong_ca_file))
    assert result.returncode == 69
    assert "certificate" in result.stderr.lower()
    assert _flag(tls_ldap) is None


def test_ldaps_without_ca_file_uses_the_system_store_which_does_not_trust_a_private_ca(tls_ldap, tmp_path):
    result = _sync(tls_ldap, tmp_path, uri=tls_ldap.ldaps_uri)
    assert result.returncode == 69
    assert _flag(tls_ldap) is None


@both_readers
def test_start_tls_with_the_signing_ca_syncs(tls_ldap, tmp_path, reader):
    result = _sync(tls_ldap, tmp_path, uri=tls_ldap.uri, start_tls=True, ca_file=str(tls_ldap.ca_file), reader=reader)
    assert result.returncode == 0, result.stderr
    assert _flag(tls_ldap) == "TRUE"
    _read_with_ldap3_over_tls(result, reader)


def test_start_tls_with_an_untrusted_certificate_is_refused_with_exit_69(tls_ldap, tmp_path):
    result = _sync(tls_ldap, tmp_path, uri=tls_ldap.uri, start_tls=True, ca_file=str(tls_ldap.wrong_ca_file))
    assert result.returncode == 69
    assert "certificate" in result.stderr.lower()
    assert _flag(tls_ldap) is None


def test_start_tls_against_a_server_without_tls_is_an_error_not_clear_text(ldap, tmp_path, slapd_tls_server):
    # The plain fixture server has no certificate: StartTLS fails, and we must not go on
    # in clear text (the password would cross the network unprotected).
    result = _sync(ldap, tmp_path, start_tls=True, ca_file=str(slapd_tls_server.ca_file))
    assert result.returncode == 69
    assert "StartTLS" in result.stderr
    assert _flag(ldap) is None
