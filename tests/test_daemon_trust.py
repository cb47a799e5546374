"""docs/contract.md §5, "Daemon cache": after a lost connection, or when the directory went
back in time (a restore from backup), the flags in LDAP agree with the mailboxes again
within a minute of reconnecting. A real slapd restored with slapadd from its own slapcat
(and, online, with ``ldapadd -e relax``), checked with ldapsearch; then the pure parts."""

import logging
import re
import time

import pytest
from fakes import FakeStore
from helpers import config_dict, run_cli, write_config
from test_daemon import FAST, DaemonProcess, expunge, mailbox, wait_until
from test_service_loop import Harness

from ldapquota.errors import PermissionDenied
from ldapquota.quota import QuotaState
from ldapquota.service.trust import PROBE_EVERY, WRITE_MARGIN, Canary, appeared_before

#: §5: within one minute of reconnecting.
MINUTE = 60.0
#: The backup is two hours old: its modifyTimestamps lie before anything the daemon saw.
BACKUP_AGE = 7200


@pytest.fixture(scope="module")
def restorable(slapd_factory):
    """A slapd of these tests' own: they stop it and replace its database."""
    return slapd_factory()


@pytest.fixture
def server(restorable):
    restorable.ensure_running()
    restorable.reset()
    return restorable


@pytest.fixture
def start_daemon(tmp_path, server, mail_root):
    started = []

    def start(ready=True, **sections):
        daemon = dict(FAST, pidfile=str(tmp_path / "ldapquota.pid"))
        path = write_config(tmp_path / "ldapquota.yaml", config_dict(server, mail_root, daemon=daemon, **sections))
        process = DaemonProcess(path, tmp_path / f"daemon{len(started)}.log")
        started.append(process)
        return process.start(ready=ready)

    yield start
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()


def flags(server, prefix):
    """address → isOverQuota (None when absent) of the accounts whose address starts with prefix."""
    entries = server.ldapsearch(server.people_dn, f"(mail={prefix}*)", ["mail", "isOverQuota"])
    return {attrs["mail"][0]: attrs.get("isOverQuota", [None])[0] for attrs in entries.values()}


def wait_flags(server, prefix, want, daemon, timeout=20.0):
    try:
        wait_until(lambda: flags(server, prefix) == want, timeout, f"the flags of {prefix}* to be {set(want.values())}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {flags(server, prefix)}\n--- daemon log ---\n{daemon.log()}") from None


def aged(ldif, seconds=BACKUP_AGE):
    """The LDIF with its modifyTimestamp and createTimestamp moved ``seconds`` into the past."""
    old = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() - seconds))
    return re.sub(r"^(modifyTimestamp|createTimestamp): \d{14}Z$", rf"\1: {old}", ldif, flags=re.M)


def new_accounts(server, mail_root, prefix, count, over):
    """Accounts as a backup (or slapadd) brings them: LDIF with old timestamps; their
    mailboxes full (``over``) or nearly empty."""
    blocks = []
    for n in range(count):
        address = f"{prefix}{n}@example.org"
        mailbox(mail_root, address, 10000, 12000 if over else 100)
        _, block = server.account_ldif(address, quota="10000")
        blocks.append(block + "modifyTimestamp: 20000101000000Z\ncreateTimestamp: 20000101000000Z\n")
    return aged("\n".join(blocks))


def entries(ldif, under):
    """The entries of ``ldif`` below ``under`` (a slapcat), as LDIF blocks."""
    return [block for block in ldif.split("\n\n") if block.partition("\n")[0].endswith("," + under)]


def full_accounts(server, mail_root, prefix, count, flagged=False):
    boxes = {}
    for n in range(count):
        address = f"{prefix}{n}@example.org"
        boxes[address] = mailbox(mail_root, address, 10000, 12000)
    server.add_accounts(boxes, quota="10000", extra={"isOverQuota": "TRUE"} if flagged else None)
    return boxes


def free(boxes):
    for maildir in boxes.values():
        expunge(maildir, maildir / "cur" / "1.old,S=12000")


# --------------------------------------------------------------------------- restores


def test_a_restart_onto_a_restored_backup_is_repaired_within_a_minute(server, mail_root, start_daemon):
    """The adversary's trial, small: flags TRUE, slapcat, mailboxes freed (the daemon clears
    them), slapd stopped, the backup slapadd-ed with 10 new full accounts, slapd started."""
    boxes = full_accounts(server, mail_root, "r", 30)
    daemon = start_daemon()
    wait_flags(server, "r", dict.fromkeys(boxes, "TRUE"), daemon)
    backup = aged(server.slapcat())
    free(boxes)
    wait_flags(server, "r", dict.fromkeys(boxes, "FALSE"), daemon)

    assert backup.count("isOverQuota: TRUE") == 30  # what the restore brings back

    server.restore(backup + "\n" + new_accounts(server, mail_root, "n", 10, over=True))

    wait_flags(server, "r", dict.fromkeys(boxes, "FALSE"), daemon, timeout=MINUTE)
    wait_flags(server, "n", {f"n{n}@example.org": "TRUE" for n in range(10)}, daemon, timeout=MINUTE)
    daemon.wait_log(r"WARNING .*the LDAP connection was lost and is back .*: the cache of what LDAP holds cannot be "
                    r"trusted; running a full sync")
    daemon.wait_log(r"full sync: accounts=40 over=10 set=10 cleared=30 ")
    assert daemon.stop() == 0


def test_an_online_restore_is_noticed_without_a_lost_connection(server, mail_root, start_daemon):
    """Entries restored on a running slapd (deleted, then added back from the backup with
    their old times, ``ldapadd -e relax``): the connection stays, the directory went back
    in time under it, and the entry the daemon wrote last shows it."""
    boxes = full_accounts(server, mail_root, "o", 20)
    daemon = start_daemon()
    wait_flags(server, "o", dict.fromkeys(boxes, "TRUE"), daemon)
    backup = aged(server.slapcat())
    free(boxes)
    wait_flags(server, "o", dict.fromkeys(boxes, "FALSE"), daemon)

    restore = []
    for block in entries(backup, server.people_dn):
        dn, _, rest = block.partition("\n")
        # Computed by the server, not to be given even with relax.
        kept = [line for line in rest.splitlines() if not line.startswith(("structuralObjectClass:", "entryCSN:"))]
        restore.append(f"{dn}\nchangetype: delete\n\n{dn}\nchangetype: add\n" + "\n".join(kept) + "\n")
    assert backup.count("isOverQuota: TRUE") == 20
    server.ldapmodify("\n".join(restore), controls=["relax"])

    wait_flags(server, "o", dict.fromkeys(boxes, "FALSE"), daemon, timeout=MINUTE)
    assert re.search(r"WARNING .*(the directory went back in time|accounts appeared in the past) .*cannot be trusted; "
                     r"running a full sync", daemon.log()), daemon.log()
    assert "LDAP unavailable" not in daemon.log()
    assert daemon.stop() == 0


def test_a_restore_that_flips_more_than_max_changes_is_refused_loudly(server, mail_root, start_daemon, tmp_path):
    """policy.max_changes holds for the full sync after a restore too (it cannot tell a
    restore from a mail store mounted empty); the refusal says why the sync ran."""
    boxes = full_accounts(server, mail_root, "m", 10, flagged=True)
    backup = aged(server.slapcat())
    free(boxes)
    cleared = run_cli(["-c", str(write_config(tmp_path / "sync.yaml", config_dict(server, mail_root))), "--sync"])
    assert cleared.returncode == 0 and set(flags(server, "m").values()) == {"FALSE"}, cleared.stderr
    daemon = start_daemon(policy={"max_changes": 5})

    server.restore(backup)

    daemon.wait_log(r"ERROR .*full sync refused: this run would flip isOverQuota on 10 of 10 accounts.*It was run "
                    r"because the LDAP connection was lost and is back.*ldapquota --sync --force", timeout=MINUTE)
    assert set(flags(server, "m").values()) == {"TRUE"}  # nothing written
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- the pure parts

WROTE = QuotaState(False, None)


def test_a_canary_seen_holding_our_write_then_older_is_evidence():
    canary = Canary("uid=a", WROTE, written_at=1000.0)
    assert canary.look(WROTE, 1001.0, 0.0) == (True, None) and canary.baseline == 1001.0
    assert canary.look(QuotaState(True, 0), 1500.0, 0.0) == (True, None)  # someone wrote after us: later
    keep, evidence = canary.look(QuotaState(True, 0), 900.0, 0.0)
    assert not keep and "uid=a was last modified at 1970-01-01 00:15:00Z, before 1970-01-01 00:25:00Z" in evidence


def test_a_canary_not_yet_seen_uses_the_server_clock_with_a_margin():
    assert Canary("uid=a", WROTE, 10000.0).look(QuotaState(True, 0), 10000.0 - WRITE_MARGIN + 1, 0.0) == (False, None)
    keep, evidence = Canary("uid=a", WROTE, 10000.0).look(QuotaState(True, 0), 10000.0 - WRITE_MARGIN - 1, 0.0)
    assert not keep and "long before ldapquota wrote it" in evidence
    # The server's clock runs 400 s behind ours: its times are compared in its clock.
    assert Canary("uid=a", WROTE, 10000.0).look(WROTE, 9601.0, -400.0) == (True, None)
    # Gone for now (the delete of a delete-and-add restore): kept, looked at again.
    assert Canary("uid=a", WROTE, 10000.0).look(None, None, 0.0) == (True, None)


class _Times:
    def __init__(self, stamps):
        self.stamps = stamps
        self.asked = []

    def modified_at(self, dn):
        self.asked.append(dn)
        if dn == "uid=hidden":
            raise PermissionDenied("insufficientAccessRights")
        return self.stamps.get(dn)


def test_accounts_no_refresh_reported_though_modified_before_it_asked_are_evidence():
    store = _Times({"uid=new": 5000.0, "uid=old": 100.0})
    assert appeared_before(store, ["uid=new"], since=4000.0) is None  # added after the refresh: the next one reads it
    assert "uid=old is an account no refresh reported" in appeared_before(store, ["uid=new", "uid=old"], since=4000.0)
    assert appeared_before(store, ["uid=old"], since=None) is None  # no refresh yet
    assert appeared_before(store, ["uid=hidden", "uid=old"], since=4000.0) is None  # an ACL hides the times
    many = _Times({})
    appeared_before(many, [f"uid={n}" for n in range(1000)], since=1.0)
    assert len(many.asked) == 10  # a bounded sample, whatever the listing found


# --------------------------------------------------------------------------- the loop, in-process
# (tests/test_service_loop.py's harness: a fake store, a clock the test moves)


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(*addresses, **kwargs):
        made.append(Harness(tmp_path, **kwargs))
        for address in addresses:
            made[-1].account(address, used=10)
        return made[-1].start()

    yield make
    for h in made:
        h.service.close()


def test_a_dropped_idle_connection_is_noticed_by_the_probe_and_the_full_sync_follows(harness, caplog):
    caplog.set_level(logging.INFO)
    h = harness("a@example.org")
    dn = "uid=a,ou=people,dc=example,dc=org"
    h.directory.down = "restarting"
    h.step(PROBE_EVERY)  # nothing to write: only the probe uses the loop's connection
    assert "LDAP unavailable: fake LDAP: restarting" in caplog.text and not h.service.link.up
    h.directory.down = None
    entry = h.directory.entries[dn.lower()]
    entry.put("isOverQuota", ["TRUE"])  # as the restore left it, with an old time: no refresh reads it
    entry.modified -= 7200
    syncs = len(h.directory.sync_times)
    h.step(1)  # the backoff: reconnected, and the full sync runs in the same turn
    assert "the LDAP connection was lost and is back" in caplog.text
    assert len(h.directory.sync_times) == syncs + 1 and h.directory.flag(dn) == "FALSE"


def test_an_entry_older_than_our_write_of_it_runs_a_full_sync(harness, caplog):
    h = harness("a@example.org")
    dn = "uid=a,ou=people,dc=example,dc=org"
    h.deliver("a@example.org", 5000)
    h.step()
    assert h.directory.flag(dn) == "TRUE"
    h.step(PROBE_EVERY)  # the probe sees the write on the entry: its baseline
    entry = h.directory.entries[dn.lower()]
    entry.put("isOverQuota", [])  # the directory went back to before that write
    entry.modified -= 3600
    syncs = len(h.directory.sync_times)
    h.step(PROBE_EVERY)
    assert re.search(r"the directory went back in time \(uid=a,.* was last modified at .*, before .* when it held "
                     r"ldapquota's write", caplog.text)
    assert len(h.directory.sync_times) == syncs + 1 and h.directory.flag(dn) == "TRUE"
    assert h.service.link.connections == 1  # all on the one connection


def test_a_probe_an_acl_refuses_is_not_a_lost_connection(harness, monkeypatch, caplog):
    h = harness("a@example.org")
    syncs = len(h.directory.sync_times)

    def hidden(self, dn):
        raise PermissionDenied(f"reading {dn}: insufficientAccessRights")

    monkeypatch.setattr(FakeStore, "modified_at", hidden)
    for _ in range(10):
        h.step(PROBE_EVERY)
    assert h.service.link.up and h.service.link.connections == 1 and "LDAP unavailable" not in caplog.text
    assert len(h.directory.sync_times) == syncs
