"""The daemon, run as an operator runs it (``python -m ldapquota --foreground`` in a child
process) against a private slapd; what it wrote is read back with ldapsearch."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, alias_bomb, both_readers, config_dict, maildirsize_text, make_maildir, run_cli, write_config

pytestmark = pytest.mark.integration

#: Short intervals so that every behaviour shows within a second or two.
FAST = {
    "interval": "1h",
    "account_refresh": "0.5s",
    "debounce": "0.1s",
    "over_recheck": "1h",  # the tests below must pass on events alone
    "poll_interval": "1s",
}


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class DaemonProcess:
    """One ``ldapquota --foreground`` child, its output in a file."""

    def __init__(self, config_path: Path, log_path: Path, extra_args=("--foreground",)):
        self.config_path = config_path
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc = None

    def start(self, ready=True):
        env = dict(os.environ)
        env.pop("LDAPQUOTA_CONFIG", None)
        env.pop("JOURNAL_STREAM", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ldapquota", "-c", str(self.config_path), *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO), env=env,
        )
        if ready:
            self.wait_log(r"ready: ")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def count(self, pattern) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern, count=1, timeout=10.0):
        def found():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            return self.count(pattern) >= count

        try:
            wait_until(found, timeout, f"log line /{pattern}/ x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log()}") from None

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self, timeout=10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s on SIGTERM:\n{self.log()}") from None
        finally:
            self._log.close()


@pytest.fixture
def setup(tmp_path, ldap, mail_root):
    """``setup(**sections) -> (config_path, DaemonProcess)``; the daemon is stopped at the end."""
    started = []

    def make(daemon=None, **sections):
        values = dict(FAST, pidfile=str(tmp_path / "ldapquota.pid"))
        values.update(daemon or {})
        path = write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root, daemon=values, **sections))
        process = DaemonProcess(path, tmp_path / f"daemon{len(started)}.log")
        started.append(process)
        return path, process

    yield make
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()


def flag(ldap, address):
    entries = ldap.ldapsearch(ldap.people_dn, f"(mail={address})", ["isOverQuota", "quotaFreeBytes"])
    attrs = {k.lower(): v for k, v in next(iter(entries.values())).items()}
    return (attrs.get("isoverquota") or [None])[0]


def wait_flag(ldap, address, value, timeout=10.0, daemon=None):
    try:
        wait_until(lambda: flag(ldap, address) == value, timeout, f"isOverQuota={value} on {address}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon.log() if daemon else ''}") from None


_serial = [0]


def deliver(maildir: Path, size: int) -> Path:
    """What a Maildir++ MDA does: the message into new/, a line onto maildirsize.
    (An "over" maildirsize with several lines is recounted from the files, so the
    files must be real.)"""
    _serial[0] += 1
    message = maildir / "new" / f"{time.time():.0f}.{_serial[0]}.test,S={size}"
    message.write_bytes(b"x" * size)
    append(maildir, size)
    return message


def expunge(maildir: Path, message: Path) -> None:
    """What an IMAP server does on deleting a message."""
    size = message.stat().st_size
    message.unlink()
    append(maildir, -size, -1)


def append(maildir: Path, size: int, count: int = 1):
    with open(maildir / "maildirsize", "a") as handle:
        handle.write(f"{size} {count}\n")


def mailbox(root: Path, address: str, limit: int, used: int) -> Path:
    """A maildir holding one message of ``used`` bytes, with its maildirsize."""
    return make_maildir(root, address, messages=[("1.old,S=%d" % used, used)] if used else [],
                        maildirsize=maildirsize_text(f"{limit}S", (used, 1 if used else 0)))


# --------------------------------------------------------------------------- events


def test_a_delivery_sets_the_flag_and_a_deletion_clears_it(ldap, mail_root, setup):
    ldap.add_account("alice@example.org", quota="10000")
    ldap.add_account("bob@example.org", quota="10000")
    alice = mailbox(mail_root, "alice@example.org", 10000, 5000)
    mailbox(mail_root, "bob@example.org", 10000, 100)
    _, daemon = setup()
    daemon.start()
    bob_before = ldap.entry_meta(f"uid=bob,{ldap.people_dn}")["entryCSN"]

    message = deliver(alice, 6000)
    wait_flag(ldap, "alice@example.org", "TRUE", daemon=daemon)
    expunge(alice, message)
    wait_flag(ldap, "alice@example.org", "FALSE", daemon=daemon)

    # One line per state change: address, usage and limit, old -> new.
    daemon.wait_log(r"alice@example.org: isOverQuota FALSE -> TRUE.*11000 of 10000 bytes")
    daemon.wait_log(r"alice@example.org: isOverQuota TRUE -> FALSE.*5000 of 10000 bytes")
    # Only the mailbox that changed was written.
    assert ldap.entry_meta(f"uid=bob,{ldap.people_dn}")["entryCSN"] == bob_before
    assert ldap.ldapquota_pw not in daemon.log()
    assert daemon.stop() == 0


def test_a_maildir_without_maildirsize_is_watched_deeply(ldap, mail_root, setup):
    ldap.add_account("walk@example.org", quota="1000")
    maildir = make_maildir(mail_root, "walk@example.org", messages=[("1.host,S=300", 300)])
    _, daemon = setup()
    daemon.start()
    (maildir / "new" / "2.host,S=900").write_bytes(b"x" * 900)
    wait_flag(ldap, "walk@example.org", "TRUE", daemon=daemon)
    (maildir / "new" / "2.host,S=900").unlink()
    wait_flag(ldap, "walk@example.org", "FALSE", daemon=daemon)


def test_polling_alone_follows_the_mailboxes(ldap, mail_root, setup):
    ldap.add_account("nfs@example.org", quota="10000")
    maildir = mailbox(mail_root, "nfs@example.org", 10000, 5000)
    _, daemon = setup(daemon={"watch": False})
    daemon.start()
    assert "0 mailboxes followed with notifications, 1 polled" in daemon.log()
    message = deliver(maildir, 6000)
    wait_flag(ldap, "nfs@example.org", "TRUE", daemon=daemon)
    expunge(maildir, message)
    wait_flag(ldap, "nfs@example.org", "FALSE", daemon=daemon)


# --------------------------------------------------------------------------- directory changes


@both_readers
def test_new_changed_and_removed_accounts_are_picked_up(ldap, mail_root, setup, reader):
    ldap.add_account("old@example.org", quota="100000")
    mailbox(mail_root, "old@example.org", 0, 5000)
    ldap.add_account("gone@example.org", quota="100000")
    mailbox(mail_root, "gone@example.org", 0, 5000)
    _, daemon = setup(ldap={"reader": reader})
    daemon.start()

    # A new account whose mailbox is already full: flagged without any mailbox event.
    mailbox(mail_root, "new@example.org", 0, 5000)
    ldap.add_account("new@example.org", quota="1000")
    wait_flag(ldap, "new@example.org", "TRUE", daemon=daemon)

    # A lowered quota: flagged.
    ldap.ldapmodify(f"dn: uid=old,{ldap.people_dn}\nchangetype: modify\nreplace: mailQuota\nmailQuota: 4000\n")
    wait_flag(ldap, "old@example.org", "TRUE", daemon=daemon)

    # A deleted account: forgotten (no longer watched).
    ldap.ldapdelete(f"uid=gone,{ldap.people_dn}")
    daemon.wait_log(r"gone@example.org: .* is gone from LDAP")
    assert daemon.count(r"full sync: accounts=") == 1  # all of it without a second full sync


# --------------------------------------------------------------------------- signals


def test_usr1_hup_and_term(ldap, mail_root, setup, tmp_path):
    ldap.add_account("half@example.org", quota="10000")
    maildir = mailbox(mail_root, "half@example.org", 10000, 6000)
    path, daemon = setup()
    daemon.start()
    pidfile = tmp_path / "ldapquota.pid"
    assert pidfile.read_text().strip() == str(daemon.proc.pid)

    # USR1: a full sync now.
    before = ldap.get_entry(ldap.ldapquota_dn, ["quotaSyncTime"])
    daemon.signal(signal.SIGUSR1)
    daemon.wait_log(r"full sync: accounts=1 ", count=2)
    assert ldap.get_entry(ldap.ldapquota_dn, ["quotaSyncTime"]) is not None and before is not None

    # HUP with a bad file: logged, the running configuration kept.
    good = path.read_text()
    path.write_text(good + "daemon_typo: 1\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"reload: .*daemon_typo.*keeping the running configuration")
    deliver(maildir, 100)  # still working: 6100 of 10000 is under quota, nothing to write
    # HUP with a good new policy: over at 50 % now, so 61 % is over.
    config = yaml.safe_load(good)
    config["policy"]["over_percent"] = 50
    config["policy"]["clear_percent"] = 50
    path.write_text(yaml.safe_dump(config))
    daemon.signal(signal.SIGHUP)
    daemon.wait_log(r"configuration reloaded")
    wait_flag(ldap, "half@example.org", "TRUE", daemon=daemon)

    # TERM: exit 0, pidfile gone.
    assert daemon.stop() == 0
    assert not pidfile.exists()
    assert re.search(r"SIGTERM received: stopping", daemon.log())


def test_hup_onto_a_hostile_config_keeps_the_running_one_and_term_still_stops(ldap, mail_root, setup):
    """docs/contract.md §7: a 100 MB file, an alias bomb or a FIFO in place of the config is
    refused at once; the daemon keeps its configuration, its events, and stops on TERM."""
    ldap.add_account("hup@example.org", quota="10000")
    maildir = mailbox(mail_root, "hup@example.org", 10000, 5000)
    path, daemon = setup()
    daemon.start()
    good = path.read_text()
    uri = yaml.safe_load(good)["ldap"]["uri"]

    def huge():
        with open(path, "w") as handle:  # the good config, then 100 MB (sparse: cheap to make)
            handle.write(good + "#")
            handle.truncate(100_000_000)

    def bomb():
        path.write_text(good.replace(uri, alias_bomb()))

    def fifo():  # with no writer: open() for reading the usual way never returns
        path.unlink()
        os.mkfifo(path)

    hostile = [
        (huge, r"is 100000000 bytes; at most \d+ are accepted"),
        (bomb, r"line \d+: ldap.uri: YAML aliases expand beyond \d+ values"),
        (fifo, r"is not a regular file \(it is a FIFO\)"),
    ]
    for count, (make, refusal) in enumerate(hostile, start=1):
        make()
        daemon.signal(signal.SIGHUP)
        daemon.wait_log(rf"reload: .*{refusal}.*; keeping the running configuration")
        assert daemon.count(r"keeping the running configuration") == count
    deliver(maildir, 6000)  # events are still handled, with the running configuration
    wait_flag(ldap, "hup@example.org", "TRUE", daemon=daemon)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log() and "MemoryError" not in daemon.log()


def test_a_second_instance_is_refused(ldap, mail_root, setup):
    ldap.add_account("a@example.org", quota="10000")
    mailbox(mail_root, "a@example.org", 10000, 100)
    path, daemon = setup()
    daemon.start()
    second = run_cli(["-c", str(path), "--foreground"], timeout=30)
    assert second.returncode == 75, second.stderr
    assert "already running" in second.stderr and str(daemon.proc.pid) in second.stderr
    assert daemon.proc.poll() is None  # the first one is untouched


def test_detached_mode_writes_its_pidfile_and_stops_on_term(ldap, mail_root, setup, tmp_path):
    ldap.add_account("bg@example.org", quota="10000")
    maildir = mailbox(mail_root, "bg@example.org", 10000, 5000)
    log_file = tmp_path / "detached.log"
    path, _ = setup(logging={"target": str(log_file), "level": "info"})
    pidfile = tmp_path / "ldapquota.pid"
    pidfile.write_text("999999\n")  # left behind by a crash: must not stop a new start

    started = run_cli(["-c", str(path)], timeout=30)
    assert started.returncode == 0, started.stderr

    def daemon_pid():
        # The pidfile holds the starting process's pid until the detached one rewrites it:
        # only the pid the daemon itself logged is the daemon's.
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        logged = log_file.read_text() if log_file.exists() else ""
        return int(text) if text.isdigit() and f"(pid {text}," in logged else None

    pid = wait_until(daemon_pid, 10, "the detached daemon's pid in the pidfile")
    try:
        wait_until(lambda: "ready: " in log_file.read_text(), 10, "ready")
        assert os.getsid(pid) != os.getsid(0)  # a session of its own: detached from ours
        deliver(maildir, 6000)
        wait_flag(ldap, "bg@example.org", "TRUE")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), 10, "the daemon to exit")
    assert not pidfile.exists()
    assert "stopped" in log_file.read_text()


def _is_zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


# --------------------------------------------------------------------------- outages


@both_readers
def test_changes_made_while_ldap_is_down_land_when_it_is_back(ldap, mail_root, setup, reader):
    ldap.add_account("fill@example.org", quota="10000")
    ldap.add_account("free@example.org", quota="10000")
    fill = mailbox(mail_root, "fill@example.org", 10000, 5000)
    free = mailbox(mail_root, "free@example.org", 10000, 12000)
    _, daemon = setup(ldap={"reader": reader})
    daemon.start()
    wait_flag(ldap, "free@example.org", "TRUE", daemon=daemon)

    ldap.stop()
    deliver(fill, 6000)
    expunge(free, free / "cur" / "1.old,S=12000")
    daemon.wait_log(r"LDAP unavailable: ")
    time.sleep(1.0)
    ldap.start()

    wait_flag(ldap, "fill@example.org", "TRUE", timeout=20, daemon=daemon)
    wait_flag(ldap, "free@example.org", "FALSE", timeout=20, daemon=daemon)
    daemon.wait_log(r"LDAP .* reachable again")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_term_is_not_held_up_by_a_hung_directory(ldap, mail_root, setup):
    ldap.add_account("hang@example.org", quota="10000")
    maildir = mailbox(mail_root, "hang@example.org", 10000, 5000)
    _, daemon = setup()
    daemon.start()
    ldap.pause()
    try:
        deliver(maildir, 6000)
        time.sleep(0.5)  # the write is now waiting for an answer that does not come
        started = time.monotonic()
        assert daemon.stop(timeout=15) == 0
        assert time.monotonic() - started < 7  # at most one LDAP timeout (5 s)
    finally:
        ldap.resume()


def test_an_inotify_queue_overflow_runs_a_full_sync(ldap, mail_root, setup):
    ldap.add_account("one@example.org", quota="10000")
    ldap.add_account("two@example.org", quota="10000")
    one = mailbox(mail_root, "one@example.org", 10000, 100)
    two = mailbox(mail_root, "two@example.org", 10000, 100)
    _, daemon = setup()
    daemon.start()
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    daemon.signal(signal.SIGSTOP)
    try:
        # Alternating files, so the kernel cannot fold the events together.
        fds = [os.open(d / "dovecot.index.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND) for d in (one, two)]
        for i in range(queued + 100):
            os.write(fds[i % 2], b"x")
        for fd in fds:
            os.close(fd)
        deliver(one, 20000)
    finally:
        daemon.signal(signal.SIGCONT)
    daemon.wait_log(r"queue overflowed", timeout=30)
    daemon.wait_log(r"full sync: accounts=2 ", count=2, timeout=30)
    wait_flag(ldap, "one@example.org", "TRUE", daemon=daemon)


# --------------------------------------------------------------------------- safety


def test_a_refused_full_sync_writes_nothing_and_the_daemon_carries_on(ldap, mail_root, setup):
    ldap.add_account("full@example.org", quota="10000")
    ldap.add_account("next@example.org", quota="10000")
    mailbox(mail_root, "full@example.org", 10000, 12000)
    nxt = mailbox(mail_root, "next@example.org", 10000, 5000)
    _, daemon = setup(policy={"max_changes": 0})
    daemon.start(ready=False)
    daemon.wait_log(r"full sync refused: this run would flip isOverQuota on 1 of 2 accounts")
    deliver(nxt, 6000)  # measured, but held: a refused sync stops event writes too
    time.sleep(1.0)
    assert flag(ldap, "full@example.org") is None and flag(ldap, "next@example.org") is None
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_a_vanished_mail_store_clears_no_flag(ldap, mail_root, setup):
    ldap.add_account("over@example.org", quota="10000")
    ldap.add_account("under@example.org", quota="10000")
    mailbox(mail_root, "over@example.org", 10000, 12000)
    mailbox(mail_root, "under@example.org", 10000, 100)
    _, daemon = setup()
    daemon.start()
    wait_flag(ldap, "over@example.org", "TRUE", daemon=daemon)
    csn = ldap.latest_csn()
    # What an unmounted store looks like from here: everything gone at once (one rename
    # of the only domain directory; a file-by-file rm would show half-empty mailboxes).
    elsewhere = mail_root.parent / "unmounted"
    elsewhere.mkdir()
    for child in mail_root.iterdir():
        child.rename(elsewhere / child.name)
    daemon.wait_log(r"mailboxes.root .* is empty .*measuring paused")
    time.sleep(0.5)
    assert ldap.latest_csn() == csn  # nothing written
    assert flag(ldap, "over@example.org") == "TRUE"
    assert daemon.stop() == 0


def test_a_bulk_change_cannot_flip_more_accounts_than_max_changes_through_events(ldap, mail_root, setup):
    # The same protection --sync has: a provisioning mistake that lowers every quota at
    # once must not flip every account one event at a time.
    addresses = [f"u{n}@example.org" for n in range(10)]
    for address in addresses:
        ldap.add_account(address, quota="100000")
        mailbox(mail_root, address, 0, 5000)
    _, daemon = setup(policy={"max_changes": 2})
    daemon.start()

    ldap.ldapmodify("".join(
        f"dn: uid={address.split('@')[0]},{ldap.people_dn}\nchangetype: modify\nreplace: mailQuota\nmailQuota: 1000\n\n"
        for address in addresses
    ))

    daemon.wait_log(r"flips since the last full sync reach policy.max_changes")
    daemon.wait_log(r"full sync refused: this run would flip isOverQuota on 8 of 10 accounts")
    time.sleep(1.0)
    flagged = [address for address in addresses if flag(ldap, address) == "TRUE"]
    assert len(flagged) == 2, daemon.log()
    assert daemon.stop() == 0


def test_a_maildir_replaced_by_a_rename_and_a_late_folder_are_still_followed(ldap, mail_root, setup):
    """mv Maildir Maildir.old; cp -a Maildir.old Maildir — and, for a maildir without
    maildirsize, a delivery into a .Folder created after the daemon started."""
    import shutil

    ldap.add_account("moved@example.org", quota="10000")
    ldap.add_account("walk@example.org", quota="1000")
    moved = mailbox(mail_root, "moved@example.org", 10000, 100)
    walk = make_maildir(mail_root, "walk@example.org", messages=[("1.host,S=300", 300)])
    _, daemon = setup()
    daemon.start()
    os.rename(moved, moved.parent / "Maildir.old")
    shutil.copytree(moved.parent / "Maildir.old", moved, symlinks=True)
    for sub in ("", "tmp", "new", "cur"):
        (walk / ".Sent" / sub).mkdir()
    time.sleep(0.5)  # the rename and the folder are seen, and measured (nothing changed)
    deliver(moved, 20000)
    wait_flag(ldap, "moved@example.org", "TRUE", daemon=daemon)
    (walk / ".Sent" / "cur" / "2.host,S=900:2,S").write_bytes(b"x" * 900)
    wait_flag(ldap, "walk@example.org", "TRUE", daemon=daemon)
    assert daemon.stop() == 0
