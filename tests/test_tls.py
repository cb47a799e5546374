"""TLS to the directory always verifies the certificate; StartTLS never silently fails.

The fixture's slapd has a certificate signed by a CA the test made (``ca_file``); a second,
unrelated CA (``wrong_ca_file``) must not be trusted for it.
"""

import re

import pytest
from helpers import both_readers, config_dict, maildirsize_text, make_maildir, python_ldap_available, run_cli, write_config
from servers.slapd import requires

from ldapquota.config import load_config
from ldapquota.errors import DirectoryUnavailable

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


# --------------------------------------------------------------------------- python-ldap
# With ldap.reader: python-ldap the accounts are read on a connection of its own (libldap's
# TLS, not Python's), opened after ldap3's connection to the same server succeeded: the
# syncs above cannot show that it refuses what ldap3 refuses, so it is tried alone here.


def _python_ldap_connect(server, tmp_path, **ldap):
    requires(python_ldap_available(), "python-ldap (pip install -e '.[fast]')")
    from ldapquota.ldap import fastread

    path = write_config(tmp_path / "c.yaml", config_dict(server, tmp_path / "vmail", ldap=ldap))
    return fastread.connect(load_config(str(path)).ldap, ldap.get("uri", server.uri), 5)


@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "StartTLS"])
def test_python_ldap_verifies_the_certificate_and_speaks_tls(tls_ldap, tmp_path, start_tls):
    import ldap

    uri = tls_ldap.uri if start_tls else tls_ldap.ldaps_uri
    connection = _python_ldap_connect(tls_ldap, tmp_path, uri=uri, start_tls=start_tls, ca_file=str(tls_ldap.ca_file))
    try:
        # The version negotiated (GnuTLS: "TLS1.3"; OpenSSL: "TLSv1.3"): none without TLS.
        assert re.fullmatch(r"TLSv?1\.[23]", connection.get_option(ldap.OPT_X_TLS_VERSION) or "")
        assert connection.whoami_s() == f"dn:{tls_ldap.ldapquota_dn}"
    finally:
        connection.unbind_s()


@pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "StartTLS"])
@pytest.mark.parametrize("trust", ["another CA", "the system store"])
def test_python_ldap_refuses_a_certificate_it_cannot_trust(tls_ldap, tmp_path, start_tls, trust):
    uri = tls_ldap.uri if start_tls else tls_ldap.ldaps_uri
    ca_file = str(tls_ldap.wrong_ca_file) if trust == "another CA" else None
    with pytest.raises(DirectoryUnavailable, match="certificate") as info:
        _python_ldap_connect(tls_ldap, tmp_path, uri=uri, start_tls=start_tls, ca_file=ca_file)
    assert ("StartTLS did not happen" in str(info.value)) == start_tls


def test_python_ldap_start_tls_against_a_server_without_tls_is_an_error_not_clear_text(ldap, tmp_path, slapd_tls_server):
    with pytest.raises(DirectoryUnavailable, match=f"{ldap.uri}: StartTLS did not happen"):
        _python_ldap_connect(ldap, tmp_path, start_tls=True, ca_file=str(slapd_tls_server.ca_file))
