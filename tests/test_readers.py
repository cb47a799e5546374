"""ldap.reader: accounts read with ldap3 or with python-ldap (ldapquota/ldap/fastread.py) are
the same entries, and every failure is the same error. Against the real slapd, with
ldapsearch as the oracle; the translation of each result code without a server."""

import base64
from typing import Dict, List, Tuple

import pytest
from helpers import READERS, config_dict, maildirsize_text, make_maildir, python_ldap_available, run_cli, write_config
from servers.slapd import requires

from ldapquota.config import load_config
from ldapquota.errors import DirectoryUnavailable, PermissionDenied, SearchIncomplete
from ldapquota.ldap import connection as ldap_connection
from ldapquota.ldap.results import (
    bind_error,
    describe,
    python_ldap_bind_error,
    python_ldap_search_error,
    search_error,
)
from ldapquota.ldap.store import LdapStore

ACCOUNTS = "(objectClass=inetOrgPerson)"
ATTRIBUTES = ["mail", "mailQuota", "description", "jpegPhoto", "isOverQuota", "quotaFreeBytes", "objectClass"]
PHOTO = b"\xff\xd8\xff\xe0 not UTF-8 \xc3"  # an octet string: ldap3 hands it over as bytes


@pytest.fixture(autouse=True)
def python_ldap():
    requires(python_ldap_available(), "python-ldap (pip install -e '.[fast]')")


def config_for(server, tmp_path, reader, **ldap):
    path = write_config(tmp_path / f"{reader}.yaml", config_dict(server, tmp_path / "vmail", ldap=dict(ldap, reader=reader)))
    return load_config(str(path))


def store_for(server, tmp_path, reader, **ldap) -> LdapStore:
    store = LdapStore(config_for(server, tmp_path, reader, **ldap).ldap).connect()
    assert store.reader == reader
    return store


def listings(store: LdapStore) -> Dict[str, object]:
    """Everything the store lists, with entries as (dn, attributes as a plain dict)."""
    def plain(entries):
        return [(entry.dn, dict(entry.attributes)) for entry in entries]

    return {
        "search": plain(store.search(ATTRIBUTES, ACCOUNTS, page_size=3)),
        "accounts": plain(store.search_accounts(["mail", "mailQuota"])),
        "changed": [(entry.dn, dict(entry.attributes), stamp) for entry, stamp in store.changed_accounts(["mail"], 0)],
        "departed": list(store.departed_accounts(0)),
        "dns": list(store.account_dns()),
        "found": plain(store.find_accounts('o+d, "d" <x>@example.org', ["mail", "uid"])),
    }


# --------------------------------------------------------------------------- the same entries


@pytest.mark.integration
def test_both_readers_list_the_same_entries_page_by_page(ldap, tmp_path):
    ldap.add_account("ann@example.org", quota="1000",
                     extra={"description": ["Zoë Ångström", "second ✓"], "isOverQuota": "TRUE", "quotaFreeBytes": "0"})
    ldap.add_account("bob@example.org")  # no quota, no flag, no description: missing attributes
    odd = ldap.add_account('o+d, "d" <x>@example.org')  # a DN with escaped characters
    ldap.ldapmodify(f"dn: {odd}\nchangetype: modify\nadd: jpegPhoto\njpegPhoto:: {base64.b64encode(PHOTO).decode()}\n")
    ldap.add_accounts([f"u{n}@example.org" for n in range(7)], quota="5")
    ldap.ldapadd(f"dn: cn=not-an-account,{ldap.people_dn}\nobjectClass: organizationalRole\ncn: not-an-account\n")

    seen: Dict[str, Dict[str, object]] = {}
    for reader in READERS:
        with store_for(ldap, tmp_path, reader) as store:
            seen[reader] = listings(store)

    assert seen["python-ldap"] == seen["ldap3"]
    entries = dict(seen["python-ldap"]["search"])
    oracle = ldap.ldapsearch(ldap.people_dn, ACCOUNTS, ["1.1"])
    assert set(entries) == set(oracle) and len(entries) == 10
    ann = {k.lower(): v for k, v in entries[f"uid=ann,{ldap.people_dn}"].items()}
    assert ann["description"] == ["Zoë Ångström", "second ✓"]
    assert (ann["isoverquota"], ann["quotafreebytes"]) == (["TRUE"], ["0"])
    assert "mailquota" not in {k.lower() for k in entries[f"uid=bob,{ldap.people_dn}"]}
    [(odd_dn, odd_attributes)] = seen["ldap3"]["found"]
    assert odd_attributes == {"mail": ['o+d, "d" <x>@example.org'], "uid": ['o+d, "d" <x>']}
    assert odd_dn.lower() == odd.lower() or set(ldap.ldapsearch(odd, scope="base")) == {odd_dn}
    assert [PHOTO] in entries[odd_dn].values()
    assert f"cn=not-an-account,{ldap.people_dn}" in seen["ldap3"]["departed"]


@pytest.mark.integration
def test_python_ldap_pages_as_ldap3_does(ldap, tmp_path):
    ldap.add_accounts([f"u{n}@example.org" for n in range(10)])
    pages = {}
    for reader in READERS:
        with store_for(ldap, tmp_path, reader) as store:
            mark = ldap.log_mark()
            assert len(list(store.search(["1.1"], ACCOUNTS, page_size=3))) == 10
            # slapd logs each request (SRCH) before it answers it.
            with open(ldap.log_file, "rb") as log:
                log.seek(mark)
                pages[reader] = log.read().decode().count(f'SRCH base="{ldap.people_dn}"')
    assert pages == {"ldap3": 4, "python-ldap": 4}  # 3 + 3 + 3 + 1 entries, one request each


# --------------------------------------------------------------------------- the same errors


@pytest.fixture
def referral(ldap):
    """An entry under ou=people that refers elsewhere (objectClass referral), removed after."""
    dn = f"ou=elsewhere,{ldap.people_dn}"
    ldap.ldap_tool("ldapadd", "-M", input=f"dn: {dn}\nobjectClass: referral\nobjectClass: extensibleObject\n"
                                          f"ou: elsewhere\nref: ldap://provider.example.org:389/{dn}\n")
    yield dn
    proc = ldap.ldap_tool("ldapdelete", "-M", dn)
    assert proc.returncode == 0, proc.stderr


def _error(server, tmp_path, reader, **ldap) -> Tuple[type, str]:
    with store_for(server, tmp_path, reader, **ldap) as store, pytest.raises(Exception) as info:
        list(store.search_accounts(["mail"]))
    return type(info.value), str(info.value)


def _same_error(server, tmp_path, **ldap) -> Tuple[type, str]:
    errors = [_error(server, tmp_path, reader, **ldap) for reader in READERS]
    assert errors[0] == errors[1]
    return errors[0]


@pytest.mark.integration
def test_a_size_limit_is_the_same_error_from_either_reader(ldap, tmp_path):
    ldap.add_accounts([f"u{n}@example.org" for n in range(ldap.limited_size_limit + 2)])
    kind, text = _same_error(ldap, tmp_path, bind_dn=ldap.limited_dn, bind_password_file=str(ldap.limited_pw_file))
    assert kind is SearchIncomplete and "size limit" in text and "nothing is written" in text


@pytest.mark.integration
def test_a_base_that_does_not_exist_is_the_same_error_from_either_reader(ldap, tmp_path):
    kind, text = _same_error(ldap, tmp_path, base_dn=f"ou=nowhere,{ldap.suffix}")
    assert kind is SearchIncomplete and f"ou=nowhere,{ldap.suffix} does not exist on {ldap.uri}" in text


@pytest.mark.integration
def test_a_paged_control_the_server_cannot_honour_is_the_same_error_from_either_reader(ldap, tmp_path):
    # cn=config's backend does not page: the critical control must make it refuse.
    kind, text = _same_error(ldap, tmp_path, base_dn="cn=config")
    assert kind is SearchIncomplete and "unavailableCriticalExtension (12)" in text


@pytest.mark.integration
def test_a_continuation_reference_is_the_same_error_from_either_reader(ldap, tmp_path, referral):
    ldap.add_account("a@example.org")
    kind, text = _same_error(ldap, tmp_path)
    assert kind is SearchIncomplete and f"returned a referral to ['ldap://provider.example.org:389/{referral}" in text


@pytest.mark.integration
def test_a_base_behind_a_referral_is_the_same_error_from_either_reader(ldap, tmp_path, referral):
    kind, text = _same_error(ldap, tmp_path, base_dn=f"ou=inside,{referral}")
    assert kind is SearchIncomplete and "stopped early because of a referral" in text


@pytest.mark.integration
def test_a_server_gone_between_searches_is_unavailable_for_either_reader(ldap, tmp_path):
    ldap.add_account("a@example.org")
    for reader in READERS:
        ldap.ensure_running()
        with store_for(ldap, tmp_path, reader) as store:
            assert len(list(store.search_accounts(["mail"]))) == 1  # both connections open
            ldap.stop()
            with pytest.raises(DirectoryUnavailable, match=f"search of {ldap.people_dn} failed"):
                list(store.search_accounts(["mail"]))


@pytest.mark.integration
def test_a_refused_bind_is_the_same_error_from_either_reader(ldap, tmp_path):
    from ldapquota.ldap import fastread

    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-password\n")
    config = config_for(ldap, tmp_path, "python-ldap", bind_password_file=str(wrong)).ldap
    errors = []
    for connect in (lambda: ldap_connection.connect(config, 5)[0], lambda: fastread.connect(config, ldap.uri, 5)):
        with pytest.raises(PermissionDenied) as info:
            connect()
        errors.append(str(info.value))
    assert errors[0] == errors[1] == f"{ldap.uri}: bind as {ldap.ldapquota_dn} refused: invalid credentials"


# Each code a refused search or bind may bring, as ldap3 reports it (a result) and as
# python-ldap does (an exception of its own): the same ldapquota error, word for word.
SEARCH_CODES = [3, 4, 10, 11, 12, 32, 50, 51, 53, 80]


@pytest.mark.parametrize("code", SEARCH_CODES)
def test_each_refused_search_translates_the_same_from_either_library(code):
    import ldap
    from ldap3.core.results import RESULT_CODES

    exception = _python_ldap_exception(ldap, code, "why not")
    message = "" if code == 10 else "why not"  # python-ldap keeps the referrals where the message goes
    expected = search_error({"result": code, "description": RESULT_CODES[code], "message": message}, "dc=x", "ldap://h")
    translated = python_ldap_search_error(exception, "dc=x", "ldap://h")
    assert (type(translated), str(translated)) == (type(expected), str(expected))
    assert isinstance(translated, PermissionDenied if code == 50 else SearchIncomplete)


@pytest.mark.parametrize("code", [49, 50, 53])
def test_each_refused_bind_translates_the_same_from_either_library(code):
    import ldap
    from ldap3.core.results import RESULT_CODES

    result = {"result": code, "description": RESULT_CODES[code], "message": "why not"}
    expected = bind_error("ldap://h", "cn=me", result)
    translated = python_ldap_bind_error(_python_ldap_exception(ldap, code, "why not"), "ldap://h", "cn=me")
    assert (type(translated), str(translated)) == (type(expected), str(expected))
    assert describe(result) in str(translated) or code == 49


@pytest.mark.parametrize("name", ["SERVER_DOWN", "TIMEOUT", "CONNECT_ERROR"])
def test_no_answer_is_unavailable_not_an_incomplete_search(name):
    import ldap

    kind = getattr(ldap, name)
    for exception in (kind({"result": kind.errnum, "desc": "no answer", "ctrls": []}),
                      kind()):  # python-ldap's own timeout carries no dict, only errnum
        translated = python_ldap_search_error(exception, "dc=x", "ldap://h")
        assert isinstance(translated, DirectoryUnavailable) and str(translated).startswith("search of dc=x failed: ")
        assert f"({kind.errnum})" in str(translated)
        assert isinstance(python_ldap_bind_error(exception, "ldap://h", "cn=me"), DirectoryUnavailable)


def test_a_server_stalling_in_the_middle_of_a_page_is_a_timeout_not_a_hang(tmp_path):
    """libldap's result timeout bounds the wait between whole messages only: a reply cut
    off half-way must not block the read for ever (the socket's own timeouts)."""
    import socket
    import threading

    from ldapquota.ldap.fastread import FastReader
    from ldapquota.settings import LdapConfig

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve():
        peer, _ = listener.accept()
        with peer:
            peer.recv(4096)  # the bind (message 1)
            peer.sendall(bytes.fromhex("300c02010161070a010004000400"))  # bind: success
            peer.recv(4096)  # the search (message 2)
            peer.sendall(bytes.fromhex("30400201026439"))  # the first bytes of an entry of 66, then silence
            stop.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    reader = FastReader(LdapConfig(uris=(f"ldap://127.0.0.1:{port}",), base_dn="dc=x"), f"ldap://127.0.0.1:{port}", 1.0)
    try:
        with pytest.raises(DirectoryUnavailable, match="search of dc=x failed"):
            list(reader.search("dc=x", "(objectClass=*)", ["mail"], 10))
    finally:
        stop.set()
        reader.close()
        listener.close()
        thread.join(5)


def test_python_ldap_never_reads_over_tls_where_libldap_cannot_bound_the_handshake(tmp_path):
    from ldapquota.ldap.fastread import connect
    from ldapquota.ldap.store import LDAP3, TLS_NOTE, choose_reader
    from ldapquota.settings import LdapConfig

    for tls in ({"uris": ("ldaps://127.0.0.1:9",)}, {"uris": ("ldap://127.0.0.1:9",), "start_tls": True}):
        config = LdapConfig(base_dn="dc=x", reader="python-ldap", **tls)
        assert choose_reader(config) == (LDAP3, TLS_NOTE)
        with pytest.raises(DirectoryUnavailable, match="does not read over TLS"):
            connect(config, config.uris[0], 1.0)
    assert choose_reader(LdapConfig(uris=("ldap://127.0.0.1:9",), base_dn="dc=x", reader="python-ldap"))[0] == "python-ldap"


def _python_ldap_exception(ldap, code: int, info: str) -> Exception:
    """The exception python-ldap raises for ``code`` (its own class for each code)."""
    kinds: List[type] = [kind for kind in vars(ldap).values()
                         if isinstance(kind, type) and issubclass(kind, ldap.LDAPError) and getattr(kind, "errnum", None) == code]
    assert kinds, code
    details = {"result": code, "desc": "libldap's words", "ctrls": [], "info": info}
    if code == 10:
        details["info"] = "Referral:\nldap://elsewhere.example.org/dc=x"
    return kinds[0](details)


# --------------------------------------------------------------------------- without python-ldap


@pytest.mark.integration
def test_without_python_ldap_the_sync_warns_once_and_reads_with_ldap3(ldap, mail_root, tmp_path):
    hidden = tmp_path / "hidden" / "ldap"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("No module named \'ldap\' (hidden by the test)", name="ldap")\n')
    env = {"PYTHONPATH": str(hidden.parent)}
    ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    ldap.add_account("fine@example.org", quota="1000")
    make_maildir(mail_root, "fine@example.org", maildirsize=maildirsize_text("1000S", (15, 3)))
    config = config_dict(ldap, mail_root, ldap={"reader": "python-ldap"})
    path = str(write_config(tmp_path / "c.yaml", config))

    synced = run_cli(["-c", path, "--sync"], env=env)
    checked = run_cli(["-c", path, "--check-config"], env=env)

    assert synced.returncode == 0, synced.stderr
    assert synced.stderr.count("python-ldap cannot be imported") == 1
    assert "accounts are read with ldap3" in synced.stderr and "pip install 'ldapquota[fast]'" in synced.stderr
    found = ldap.ldapsearch(ldap.people_dn, "(isOverQuota=TRUE)", ["1.1"])
    assert list(found) == [f"uid=full,{ldap.people_dn}"]
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ("warning ldap.reader is python-ldap, but python-ldap cannot be imported (install it: pip install "
            "'ldapquota[fast]')") in checked.stdout
