"""Overlapping runs (docs/contract.md §5): full syncs of one store exclude each other, and
a write never undoes a newer one. Real processes against the real slapd; what was
written is read from slapd's own log and with ldapsearch."""

import logging
import os
import signal
import subprocess
import sys

import pytest
from helpers import REPO, config_dict, maildirsize_text, make_maildir, run_cli, write_config
from test_daemon import FAST, DaemonProcess, flag, wait_until

from ldapquota.config import load_config
from ldapquota.errors import EntryWriteError, WriteSuperseded
from ldapquota.ldap.results import assertion_failed
from ldapquota.ldap.store import LdapStore
from ldapquota.quota import QuotaState
from ldapquota.sync import run_sync
from ldapquota.synclock import FullSyncLock, holder_pid

pytestmark = pytest.mark.integration

FULL = 20  # accounts over quota that a first sync must flag


@pytest.fixture
def store_config(tmp_path, ldap, mail_root):
    """FULL accounts over quota, nothing flagged yet; returns the config's path."""
    addresses = [f"full{n}@example.org" for n in range(FULL)]
    ldap.add_accounts(addresses, quota="1000")
    for address in addresses:
        make_maildir(mail_root, address, maildirsize=maildirsize_text("1000S", (1500, 3)))
    return str(write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root)))


def lock_file(config_path):
    lock = FullSyncLock(load_config(config_path))
    return os.path.join(lock.dirs[0], lock.name)


def start_sync(config_path):
    env = {k: v for k, v in os.environ.items() if k != "LDAPQUOTA_CONFIG"}
    return subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", config_path, "--sync"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL)


def held_by(path, pid):
    return os.path.exists(path) and holder_pid(os.stat(path)) == pid


def account_writes(ldap, mark):
    return ldap.writes_since(mark, under=ldap.people_dn)


def test_a_second_sync_started_while_one_runs_exits_75_and_the_changes_are_written_once(ldap, store_config):
    mark = ldap.log_mark()
    ldap.pause()  # the first run takes the lock, then waits for its bind: it is "running"
    try:
        first = start_sync(store_config)
        wait_until(lambda: held_by(lock_file(store_config), first.pid), 20, "the first sync to hold the lock")
        second = run_cli(["-c", store_config, "--sync"], timeout=30)  # slapd still paused: it must not even bind
    finally:
        ldap.resume()
    out, err = first.communicate(timeout=60)

    assert second.returncode == 75, second.stderr
    assert f"ldapquota: refused: another full sync of ldap.status_dn {ldap.ldapquota_dn} is running (pid {first.pid}" in second.stderr
    assert "nothing measured, nothing written" in second.stderr and "accounts=" not in second.stdout
    assert first.returncode == 0, err
    assert f"set={FULL} " in out and f"writes={FULL} " in out
    written = account_writes(ldap, mark)
    assert len(written) == FULL and len({dn.lower() for _, dn in written}) == FULL


def test_two_syncs_started_together_write_each_change_once(ldap, store_config):
    mark = ldap.log_mark()
    runs = [start_sync(store_config) for _ in range(2)]
    results = [(run.wait(timeout=60), run.communicate()) for run in runs]

    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 75]), results  # 0, 0: the second started after the first had finished
    assert len(account_writes(ldap, mark)) == FULL
    assert [flag(ldap, f"full{n}@example.org") for n in range(FULL)] == ["TRUE"] * FULL


class ChangedMeanwhile(LdapStore):
    """The store a sync talks to; once every account has been read and measured (and
    before anything is written), ``meanwhile`` runs: someone else writes."""

    def __init__(self, config, meanwhile):
        super().__init__(config.ldap, config.accounts.address_attribute)
        self.meanwhile = meanwhile

    def search_accounts(self, attributes):
        yield from super().search_accounts(attributes)
        self.meanwhile()


def test_a_sync_never_undoes_a_newer_write_made_after_it_read_the_entry(ldap, mail_root, tmp_path, caplog):
    raced = ldap.add_account("raced@example.org", quota="1000")
    explicit = ldap.add_account("explicit@example.org", quota="1000", extra={"isOverQuota": "FALSE"})
    flagged = ldap.add_account("flagged@example.org", quota="1000", extra={"isOverQuota": "TRUE", "quotaFreeBytes": "0"})
    make_maildir(mail_root, "raced@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    make_maildir(mail_root, "explicit@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    make_maildir(mail_root, "flagged@example.org", maildirsize=maildirsize_text("1000S", (100, 1)))
    config = load_config(str(write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root))))
    marks = []

    def daemon_writes():  # it measured raced@ after this sync did: mail was deleted since
        ldap.ldapmodify(f"dn: {raced}\nchangetype: modify\nreplace: isOverQuota\nisOverQuota: FALSE\n-\n"
                        "replace: quotaFreeBytes\nquotaFreeBytes: 900\n-\n"
                        "add: objectClass\nobjectClass: ldapQuotaStatus\n")
        marks.append(ldap.log_mark())

    with caplog.at_level(logging.INFO, logger="ldapquota"), ChangedMeanwhile(config, daemon_writes) as store:
        report = run_sync(config, store, workers=0)

    assert (report.writes, report.superseded, report.errors, report.set, report.cleared) == (2, 1, 0, 1, 1)
    assert "superseded=1" in report.summary()
    assert flag(ldap, "raced@example.org") == "FALSE"  # the newer value stays
    assert ldap.get_entry(raced, ["quotaFreeBytes"])["quotaFreeBytes"] == ["900"]
    assert flag(ldap, "explicit@example.org") == "TRUE"  # an explicit FALSE is "not TRUE" too
    assert flag(ldap, "flagged@example.org") == "FALSE"
    written = {dn.lower() for _, dn in account_writes(ldap, marks[0])}
    assert written == {explicit.lower(), flagged.lower()}
    assert any("raced@example.org: not written: changed in LDAP since this run read it" in r.getMessage()
               for r in caplog.records)


def test_a_conditional_write_with_a_stale_old_state_changes_nothing(ldap):
    dn = ldap.add_account("stale@example.org", quota="1000")
    ldap.ldapmodify(f"dn: {dn}\nchangetype: modify\nadd: objectClass\nobjectClass: ldapQuotaStatus\n-\n"
                    "add: isOverQuota\nisOverQuota: TRUE\n")
    before = ldap.entry_meta(dn)["entryCSN"]
    config = load_config(str(write_config(ldap.workdir / "stale.yaml", config_dict(ldap, ldap.workdir))))
    read_earlier = QuotaState(False, None)

    with LdapStore(config.ldap) as store:
        with pytest.raises(WriteSuperseded, match=r"now isOverQuota=TRUE, quotaFreeBytes=absent"):
            store.write_state(dn, read_earlier, QuotaState(False, 5), True, if_unchanged=True)
        assert ldap.entry_meta(dn)["entryCSN"] == before
        store.write_state(dn, QuotaState(True, None), QuotaState(True, 0), True, if_unchanged=True)  # up to date: written
        assert ldap.get_entry(dn, ["quotaFreeBytes"])["quotaFreeBytes"] == ["0"]
        # Without the condition (the daemon's own fresh measurement) the write is made.
        store.write_state(dn, read_earlier, QuotaState(False, 5), True)
    assert ldap.get_entry(dn, ["quotaFreeBytes"])["quotaFreeBytes"] == ["5"]


def test_an_assertion_refused_although_the_entry_is_unchanged_is_an_error_not_a_newer_write():
    state = QuotaState(True, 0)
    refused = assertion_failed("uid=x", state, state)
    assert isinstance(refused, EntryWriteError) and "read access to isOverQuota" in str(refused)
    assert isinstance(assertion_failed("uid=x", state, QuotaState(False, None)), WriteSuperseded)
    assert isinstance(assertion_failed("uid=x", state, None), EntryWriteError)


def test_the_daemons_full_sync_and_a_cron_sync_exclude_each_other(ldap, mail_root, tmp_path):
    ldap.add_account("full@example.org", quota="1000")
    make_maildir(mail_root, "full@example.org", maildirsize=maildirsize_text("1000S", (1500, 3)))
    daemon_settings = dict(FAST, account_refresh="1h", pidfile=str(tmp_path / "ldapquota.pid"))
    path = str(write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root, daemon=daemon_settings)))
    daemon = DaemonProcess(tmp_path / "ldapquota.yaml", tmp_path / "daemon.log")
    try:
        # A cron --sync holds the lock (this process takes it as --sync does): the
        # daemon's first full sync waits for a later turn and writes nothing.
        with FullSyncLock(load_config(path)):
            mark = ldap.log_mark()
            daemon.start(ready=False)
            daemon.wait_log(rf"full sync postponed: another full sync of ldap\.status_dn .* \(pid {os.getpid()}, user root")
            assert ldap.writes_since(mark) == [] and "ready: " not in daemon.log()
        daemon.signal(signal.SIGUSR1)
        daemon.wait_log("ready: ")
        assert flag(ldap, "full@example.org") == "TRUE"

        # The daemon's full sync holds it (stuck on a paused slapd): cron gives up at once.
        ldap.pause()
        try:
            daemon.signal(signal.SIGUSR1)
            wait_until(lambda: held_by(lock_file(path), daemon.proc.pid), 20, "the daemon's sync to hold the lock")
            cron = run_cli(["-c", path, "--sync"], timeout=30)
        finally:
            ldap.resume()
        assert cron.returncode == 75, cron.stderr
        assert f"is running (pid {daemon.proc.pid}, user root" in cron.stderr
        daemon.wait_log(r"full sync: accounts=1 ", count=2)
    finally:
        ldap.resume()
        daemon.stop()
