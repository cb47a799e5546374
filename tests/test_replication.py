"""Many stores, many MX hosts: the flag travels by LDAP replication (docs/contract.md §11).

A provider slapd (syncprov) takes ldapquota's writes; a consumer (syncrepl,
refreshAndPersist) answers the MTA, as the replica beside each MX does. Both load the
shipped schema and ACL. Oracles: ldapsearch on each server, and a real Exim whose
generated configuration asks the consumer (``mta.uri``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from helpers import config_dict, run_cli, write_config
from servers.exim import Exim, give_to, rcpt, secret_for_exim
from servers.slapd import Slapd
from test_daemon import FAST, DaemonProcess, deliver, expunge, mailbox, wait_until

from ldapquota.exim import replace_blocks, split_blocks

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "exim" / "exim4.conf"
STORE2_STATUS = "cn=store2,ou=services,dc=example,dc=org"


@pytest.fixture
def pair(replica_pair: Tuple[Slapd, Slapd]) -> Tuple[Slapd, Slapd]:
    provider, consumer = replica_pair
    provider.ensure_running()
    consumer.ensure_running()
    provider.reset()
    wait_until(lambda: not consumer.ldapsearch(consumer.people_dn, "(mail=*)", ["1.1"]), 10, "the consumer to follow")
    return provider, consumer


def flag(server: Slapd, address: str) -> str | None:
    entries = server.ldapsearch(server.people_dn, f"(mail={address})", ["isOverQuota"])
    attrs = {k.lower(): v for k, v in next(iter(entries.values())).items()}
    return (attrs.get("isoverquota") or [None])[0]


def sync_time(server: Slapd, dn: str) -> str | None:
    entry = server.get_entry(dn, ("quotaSyncTime",)) or {}
    return ({k.lower(): v for k, v in entry.items()}.get("quotasynctime") or [None])[0]


def test_a_write_to_a_read_only_replica_ends_with_69_naming_the_provider(pair, tmp_path, mail_root):
    provider, consumer = pair
    provider.add_account("full@example.org", quota="1000")
    mailbox(mail_root, "full@example.org", 1000, 5000)
    wait_until(lambda: consumer.ldapsearch(consumer.people_dn, "(mail=full@example.org)", ["1.1"]), 10, "replication")
    config = write_config(tmp_path / "c.yaml", config_dict(consumer, mail_root))

    result = run_cli(["-c", str(config), "--sync"])

    assert result.returncode == 69, result.stderr
    assert provider.uri in result.stderr and "read-only replica" in result.stderr, result.stderr
    assert flag(provider, "full@example.org") is None and flag(consumer, "full@example.org") is None
    assert sync_time(provider, provider.ldapquota_dn) is None


@pytest.fixture(scope="module")
def consumer_exim(replica_pair, exim_factory, tmp_path_factory) -> Iterator[Exim]:
    """examples/exim/exim4.conf with the blocks of a config whose mta.uri is the consumer:
    ldapquota writes to the provider, Exim reads the replica."""
    provider, consumer = replica_pair
    # Exim's user must reach these: pytest's temporary directories are 0700.
    files = Path(tempfile.mkdtemp(prefix="ldapquota-replica-files-"))
    files.chmod(0o755)
    aliases = files / "aliases"
    aliases.write_text("")
    aliases.chmod(0o644)
    vmail = files / "vmail"
    vmail.mkdir()
    give_to(vmail, "mail")
    secret = secret_for_exim(consumer.exim_pw)
    config = config_dict(provider, vmail, mta={"uri": consumer.uri, "bind_dn": consumer.exim_dn,
                                                "bind_password_file": str(secret)})
    path = write_config(tmp_path_factory.mktemp("exim-config") / "c.yaml", config)
    blocks = run_cli(["-c", str(path), "--exim-config"])
    assert blocks.returncode == 0, blocks.stderr
    assert consumer.uri.split("//")[1] in blocks.stdout and provider.uri.split("//")[1] not in blocks.stdout
    macros = {
        "MAIL_DOMAINS": "example.org",
        "LDAP_SERVER": consumer.uri,
        "LDAP_BASE": consumer.people_dn,
        "LDAP_BIND": 'user="%s" pass=${quote:${readfile{%s}{}}}' % (consumer.exim_dn, secret),
        "ALIAS_FILE": str(aliases),
        "VMAIL_ROOT": str(vmail),
        "VMAIL_USER": "mail",
    }
    yield exim_factory(replace_blocks(EXAMPLE.read_text(), split_blocks(blocks.stdout)), macros, name="exim-replica")
    shutil.rmtree(files, ignore_errors=True)


def test_an_mx_asking_the_replica_refuses_a_full_mailbox_and_accepts_again(pair, consumer_exim, tmp_path, mail_root):
    provider, consumer = pair
    provider.add_account("jane@example.org", quota="10000")
    jane = mailbox(mail_root, "jane@example.org", 10000, 1000)
    config = write_config(tmp_path / "c.yaml", config_dict(provider, mail_root, mta={"uri": consumer.uri}))
    assert run_cli(["-c", str(config), "--sync", "-q"]).returncode == 0
    wait_until(lambda: rcpt(consumer_exim, "jane@example.org")[0] == 250, 10, "250 before the mailbox fills")

    message = deliver(jane, 9500)
    assert run_cli(["-c", str(config), "--sync", "-q"]).returncode == 0
    assert flag(provider, "jane@example.org") == "TRUE"
    wait_until(lambda: rcpt(consumer_exim, "jane@example.org") == (452, "4.2.2 Mailbox full"), 10,
               "452 from the MX reading the replica")

    expunge(jane, message)
    assert run_cli(["-c", str(config), "--sync", "-q"]).returncode == 0
    wait_until(lambda: rcpt(consumer_exim, "jane@example.org")[0] == 250, 10, "250 again after space was freed")
    assert flag(consumer, "jane@example.org") == "FALSE"


# --------------------------------------------------------------------------- two stores


@pytest.fixture
def two_stores(pair, tmp_path):
    """Two instances, one per store: their own mail root, ldap.filter and status_dn.

    The second instance's status entry gets rules like the shipped ACL's {5}/{6} for
    cn=ldapquota's own entry (README, "Running at scale")."""
    provider, consumer = pair
    if provider.get_entry(STORE2_STATUS, ("cn",)) is None:
        provider.ldapmodify(
            "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nadd: olcAccess\n"
            f'olcAccess: {{5}}to dn.exact="{STORE2_STATUS}" attrs=entry,objectClass,quotaSyncTime '
            f'by dn.exact="{provider.ldapquota_dn}" write by * none\n',
            external=True,
        )
        provider.ldapadd(f"dn: {STORE2_STATUS}\nobjectClass: applicationProcess\ncn: store2\n")
    roots = {}
    configs = {}
    for store, domain, status in (("store1", "one.example", provider.ldapquota_dn), ("store2", "two.example", STORE2_STATUS)):
        root = tmp_path / store
        root.mkdir()
        roots[store] = root
        config = config_dict(
            provider, root,
            ldap={"filter": f"(&(objectClass=inetOrgPerson)(mail=*@{domain}))", "status_dn": status},
            daemon=dict(FAST, pidfile=str(tmp_path / f"{store}.pid")),
        )
        configs[store] = write_config(tmp_path / f"{store}.yaml", config)
    for address, store in (("a@one.example", "store1"), ("b@one.example", "store1"),
                           ("c@two.example", "store2"), ("d@two.example", "store2")):
        provider.add_account(address, quota="1000", uid=address.replace("@", "."))
        mailbox(roots[store], address, 1000, 2000)  # all four full
    return provider, consumer, roots, configs


def test_each_instance_writes_only_its_own_accounts_and_status(two_stores):
    provider, consumer, roots, configs = two_stores

    first = run_cli(["-c", str(configs["store1"]), "--sync"])
    assert first.returncode == 0, first.stderr
    assert "accounts=2 over=2 set=2" in first.stdout
    assert [flag(provider, a) for a in ("a@one.example", "b@one.example", "c@two.example", "d@two.example")] == \
        ["TRUE", "TRUE", None, None]
    assert sync_time(provider, provider.ldapquota_dn) and not sync_time(provider, STORE2_STATUS)

    second = run_cli(["-c", str(configs["store2"]), "--sync"])
    assert second.returncode == 0, second.stderr
    assert "accounts=2 over=2 set=2" in second.stdout
    assert sync_time(provider, STORE2_STATUS)
    # The other store's accounts are not in store2's search at all: not even re-read.
    again = run_cli(["-c", str(configs["store1"]), "--sync"])
    assert "accounts=2 over=2 set=0 cleared=0" in again.stdout
    wait_until(lambda: flag(consumer, "d@two.example") == "TRUE", 10, "the replica to carry store2's flag")


def test_two_daemons_at_once_each_follow_their_store(two_stores, tmp_path):
    provider, consumer, roots, configs = two_stores
    daemons = [DaemonProcess(configs[store], tmp_path / f"{store}.log") for store in ("store1", "store2")]
    try:
        for daemon in daemons:
            daemon.start()
        wait_until(lambda: all(flag(consumer, a) == "TRUE" for a in ("a@one.example", "c@two.example")), 15,
                   "both stores' flags on the replica")
        # Free one mailbox in each store: each daemon clears its own.
        for store, address in (("store1", "a@one.example"), ("store2", "c@two.example")):
            maildir = roots[store] / address.split("@")[1] / address.split("@")[0] / "Maildir"
            (maildir / "maildirsize").write_text("1000S\n0 0\n")
            for message in (maildir / "cur").iterdir():
                message.unlink()
        wait_until(lambda: flag(consumer, "a@one.example") == "FALSE" and flag(consumer, "c@two.example") == "FALSE",
                   15, "both daemons to clear their own flag, seen on the replica")
        assert flag(consumer, "b@one.example") == "TRUE" and flag(consumer, "d@two.example") == "TRUE"
        for daemon in daemons:
            assert not re.search(r"\bERROR\b", daemon.log()), daemon.log()
    finally:
        for daemon in daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                assert daemon.stop() == 0
