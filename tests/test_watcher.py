"""The daemon's parts that need no LDAP: debouncing and backoff (with a made-up clock),
the watcher (real inotify on temporary maildirs), the pidfile lock, config keys."""

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers.slapd import requires

from ldapquota.config import parse_config
from ldapquota.daemon import PidFile, resolve_owner
from ldapquota.errors import AlreadyRunning, ConfigError
from ldapquota.maildir_poll import in_initial_user_namespace, watch_limits
from ldapquota.schedule import Backoff, Debouncer, Periodic, slice_size
from ldapquota.watcher import Watcher, signature

# --------------------------------------------------------------------------- Debouncer


def test_a_burst_of_changes_is_acted_on_once_after_the_delay():
    debouncer = Debouncer(0.5)
    for t in (0.0, 0.1, 0.2, 0.3):
        debouncer.touch("a", t)
    assert debouncer.pop_due(0.49) == []
    assert debouncer.next_due() == 0.5
    assert debouncer.pop_due(0.5) == ["a"]
    assert debouncer.pop_due(10) == [] and len(debouncer) == 0


def test_a_steady_stream_does_not_postpone_the_action():
    """The delay counts from the first change: no starvation under constant deliveries."""
    debouncer = Debouncer(1.0)
    acted = []
    t = 0.0
    while t < 5.0:
        debouncer.touch("busy", t)
        acted += [t for _ in debouncer.pop_due(t)]
        t += 0.1
    assert len(acted) >= 4


def test_an_immediate_touch_overtakes_a_delayed_one_and_keys_come_out_in_order():
    debouncer = Debouncer(1.0)
    debouncer.touch("late", 0.0)
    debouncer.touch("x", 0.0)
    debouncer.touch("x", 0.2, delay=0.0)  # e.g. an over-quota recheck
    assert debouncer.pop_due(0.3) == ["x"]
    debouncer.touch("early", 0.5, delay=0.0)
    assert debouncer.pop_due(2.0) == ["early", "late"]


def test_pop_due_respects_the_limit_and_discard_forgets():
    debouncer = Debouncer(0.0)
    for key in "abcde":
        debouncer.touch(key, 0.0)
    debouncer.discard("c")
    assert debouncer.pop_due(1.0, limit=2) == ["a", "b"]
    assert debouncer.pop_due(1.0) == ["d", "e"]
    assert debouncer.next_due() is None


# --------------------------------------------------------------------------- Backoff, Periodic


def test_backoff_doubles_up_to_its_maximum_and_resets():
    backoff = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_stays_within_bounds():
    backoff = Backoff(initial=10.0, maximum=10.0, jitter=0.1, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(50)]
    assert all(9.0 <= d <= 11.0 for d in delays) and len(set(delays)) > 1


def test_periodic_tasks():
    task = Periodic(60.0, now=100.0)
    assert not task.is_due(159.9) and task.is_due(160.0)
    task.soon(120.0)
    assert task.is_due(120.0)
    task.done(120.0)
    assert task.due_at == 180.0
    task.change_interval(10.0, now=121.0)
    assert task.due_at == 131.0
    assert Periodic(5.0, now=0.0, first=0.0).is_due(0.0)


def test_slices_cover_everything_once_per_interval():
    assert slice_size(0, 30, 1) == 0
    assert slice_size(10, 30, 1) == 1
    assert slice_size(100_000, 30, 1) == 3334
    assert slice_size(5, 0.5, 1) == 5


# --------------------------------------------------------------------------- Watcher


def maildir(root, name, maildirsize=True):
    path = root / name
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    if maildirsize:
        (path / "maildirsize").write_text("1000S\n100 1\n")
    return path


@pytest.fixture
def watcher():
    w = Watcher(use_inotify=True, poll_interval=1.0, poll_step=0.1)
    yield w
    w.close()


def test_a_maildirsize_append_is_seen_and_other_files_are_not(tmp_path, watcher):
    box = maildir(tmp_path, "a")
    other = maildir(tmp_path, "b")
    assert watcher.add(str(box)) == "watch" and watcher.add(str(other)) == "watch"
    with open(box / "maildirsize", "a") as handle:
        handle.write("200 1\n")
    (other / "dovecot.index.log").write_text("noise")
    (other / "new" / "1.x,S=5").write_text("hello")  # not a deep watch: not looked at
    assert watcher.read().paths == {str(box)}


def test_a_replaced_maildirsize_is_seen(tmp_path, watcher):
    box = maildir(tmp_path, "a")
    watcher.add(str(box))
    (box / "maildirsize.tmp").write_text("1000S\n0 0\n")
    os.rename(box / "maildirsize.tmp", box / "maildirsize")  # a recalculation
    assert watcher.read().paths == {str(box)}
    (box / "maildirsize").unlink()
    assert watcher.read().paths == {str(box)}


def test_a_deep_watch_sees_deliveries_into_new_and_cur(tmp_path, watcher):
    box = maildir(tmp_path, "a", maildirsize=False)
    watcher.add(str(box), deep=True)
    (box / "new" / "1.x,S=5").write_text("hello")
    assert watcher.read().paths == {str(box)}
    os.rename(box / "new" / "1.x,S=5", box / "cur" / "1.x,S=5:2,S")
    assert watcher.read().paths == {str(box)}
    # maildirsize appears: back to a shallow watch, new/ is no longer watched.
    watcher.add(str(box), deep=False)
    watcher.read()
    (box / "new" / "2.x,S=5").write_text("hello")
    assert watcher.read().paths == set()


def test_a_removed_maildir_is_reported_then_polled_until_it_is_back(tmp_path, watcher):
    box = maildir(tmp_path, "a")
    watcher.add(str(box))
    for sub in ("cur", "new", "tmp"):
        os.rmdir(box / sub)
    (box / "maildirsize").unlink()
    os.rmdir(box)
    assert str(box) in watcher.read().paths
    assert watcher.mode(str(box)) == "poll"
    maildir(tmp_path, "a")
    changed = set()
    for step in range(20):
        changed |= watcher.poll(step * 0.1)
    assert changed == {str(box)}
    assert watcher.add(str(box)) == "watch"  # the service re-adds it once measured


def test_a_missing_maildir_is_polled(tmp_path, watcher):
    assert watcher.add(str(tmp_path / "not-yet")) == "poll"
    assert watcher.polled_count == 1 and watcher.watched_count == 0


def test_removing_one_of_two_paths_on_the_same_directory_keeps_the_other(tmp_path, watcher):
    box = maildir(tmp_path, "a")
    os.symlink(box, tmp_path / "alias")
    watcher.add(str(box))
    watcher.add(str(tmp_path / "alias"))
    watcher.remove(str(tmp_path / "alias"))
    with open(box / "maildirsize", "a") as handle:
        handle.write("1 1\n")
    assert watcher.read().paths == {str(box)}


class _FullInotify:
    """inotify with the kernel's watch limit at 1."""

    def __init__(self, nonblocking=True):
        self.watches = 0

    def add_watch(self, path, mask):
        if not os.path.isdir(path):
            raise OSError(errno.ENOENT, "No such file or directory")
        if self.watches >= 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.watches += 1
        return self.watches

    def rm_watch(self, wd):
        self.watches -= 1

    def fileno(self):
        return -1

    def read(self, timeout=0):
        return []

    def close(self):
        pass


def test_the_watch_limit_is_said_once_and_the_rest_is_polled(tmp_path, caplog):
    w = Watcher(use_inotify=True, poll_interval=1.0, poll_step=0.5, inotify_factory=_FullInotify)
    boxes = [maildir(tmp_path, name) for name in "abc"]
    with caplog.at_level(logging.WARNING, logger="ldapquota.watcher"):
        modes = [w.add(str(box)) for box in boxes]
    assert modes == ["watch", "poll", "poll"]
    assert len([r for r in caplog.records if "watch limit" in r.message]) == 1
    with open(boxes[2] / "maildirsize", "a") as handle:
        handle.write("5 1\n")
    assert w.poll(0.0) | w.poll(0.5) == {str(boxes[2])}


def test_on_the_host_the_log_names_fs_inotify_max_user_watches_with_its_value(tmp_path, caplog):
    w = Watcher(use_inotify=True, poll_interval=1.0, poll_step=0.5, inotify_factory=_FullInotify)
    with caplog.at_level(logging.WARNING, logger="ldapquota.watcher"):
        for name in "ab":
            w.add(str(maildir(tmp_path, name)))
    host = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    (record,) = [r for r in caplog.records if "watch limit" in r.message]
    if in_initial_user_namespace():
        assert f"fs.inotify.max_user_watches = {host} (ldapquota holds 1; every inotify watch of this user counts)" \
            in record.message
        assert "user namespace" not in record.message
    else:  # the tests themselves run in a container's user namespace
        assert f"fs.inotify.max_user_watches = {host} on the host" in record.message


def _fake_proc(tmp_path, host, here, uid_map):
    proc = tmp_path / "proc"
    for path, value in (("sys/fs/inotify/max_user_watches", host), ("sys/user/max_inotify_watches", here),
                        ("self/uid_map", uid_map)):
        (proc / path).parent.mkdir(parents=True, exist_ok=True)
        (proc / path).write_text(f"{value}\n")
    return str(proc)


def test_in_a_user_namespace_both_limits_are_named_and_the_lower_called_likely(tmp_path):
    said = watch_limits(7, _fake_proc(tmp_path, 8192, 500, "0 1000 1"))
    assert "user.max_inotify_watches = 500 in this user namespace" in said
    assert "fs.inotify.max_user_watches = 8192 on the host" in said
    assert "a namespace in between may have its own" in said
    assert "the lower, user.max_inotify_watches = 500, is the likely one" in said
    on_host = watch_limits(7, _fake_proc(tmp_path / "host", 8192, 8192, "0 0 4294967295"))
    assert on_host.startswith("fs.inotify.max_user_watches = 8192 (ldapquota holds 7;") and "namespace" not in on_host


#: A Watcher in a user namespace of its own (unshare -Ur: we are its root), whose
#: user.max_inotify_watches is lowered to 3: the real per-namespace limit, host untouched.
_IN_NAMESPACE = """
import logging, sys
with open("/proc/sys/user/max_inotify_watches", "w") as handle:
    handle.write("3")
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from ldapquota.watcher import Watcher
watcher = Watcher(use_inotify=True, poll_interval=1.0)
print([watcher.add(path) for path in sys.argv[1:]])
"""


def test_a_real_per_namespace_watch_limit_is_named_as_such(tmp_path):
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-Ur", "true"], capture_output=True, timeout=30) if unshare else None
    requires(probe is not None and probe.returncode == 0, "unshare(1) with user namespaces (util-linux)")
    boxes = [str(maildir(tmp_path, f"m{n}")) for n in range(5)]
    result = subprocess.run([unshare, "-Ur", sys.executable, "-c", _IN_NAMESPACE, *boxes],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['watch', 'watch', 'watch', 'poll', 'poll']"
    host = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    assert "user.max_inotify_watches = 3 in this user namespace" in result.stderr
    assert f"fs.inotify.max_user_watches = {host} on the host" in result.stderr
    assert "the lower, user.max_inotify_watches = 3, is the likely one" in result.stderr
    assert "ldapquota holds 3;" in result.stderr


def test_without_inotify_everything_is_polled_and_spread_over_the_interval(tmp_path):
    w = Watcher(use_inotify=False, poll_interval=1.0, poll_step=0.25)
    boxes = [maildir(tmp_path, f"m{i}") for i in range(8)]
    for box in boxes:
        assert w.add(str(box), now=0.0) == "poll"
    assert w.fileno() is None and w.next_poll_at == 0.25
    for box in boxes:
        with open(box / "maildirsize", "a") as handle:
            handle.write("5 1\n")
    first = w.poll(0.25)
    assert len(first) == 2  # 8 mailboxes, 4 steps per interval
    rest = set()
    for t in (0.5, 0.75, 1.0):
        rest |= w.poll(t)
    assert first | rest == {str(b) for b in boxes}


def test_signature_follows_maildirsize_and_the_directory():
    assert signature("/nonexistent/x", False)[0] is None


def deliver(folder, name="1.x,S=5", sub="new"):
    (folder / sub / name).write_text("hello")


def test_a_maildir_replaced_by_a_rename_is_watched_again(tmp_path, watcher):
    """mv Maildir Maildir.old; cp -a Maildir.old Maildir: the watch followed the old one."""
    box = maildir(tmp_path, "a")
    assert watcher.add(str(box)) == "watch"
    os.rename(box, tmp_path / "a.old")
    assert watcher.read().paths == {str(box)}  # IN_MOVE_SELF
    assert watcher.mode(str(box)) == "poll"  # nothing there for now
    shutil.copytree(tmp_path / "a.old", box)
    assert watcher.add(str(box)) == "watch"  # the service re-adds it once measured
    # Replaced while the event was still queued: the copy is watched at once.
    os.rename(box, tmp_path / "a.older")
    shutil.copytree(tmp_path / "a.older", box)
    assert watcher.read().paths == {str(box)}
    assert watcher.mode(str(box)) == "watch"
    with open(box / "maildirsize", "a") as handle:
        handle.write("200 1\n")
    with open(tmp_path / "a.older" / "maildirsize", "a") as handle:
        handle.write("200 1\n")  # the old one is no longer looked at
    assert watcher.read().paths == {str(box)}


def test_a_renamed_parent_directory_makes_the_watch_stale_until_added_again(tmp_path, watcher):
    """A parent renamed gives no event at all: mode() and add() compare device and inode."""
    box = maildir(tmp_path / "example.org", "a")
    other = maildir(tmp_path, "b")
    watcher.add(str(box))
    watcher.add(str(other))
    os.rename(tmp_path / "example.org", tmp_path / "example.org.old")
    shutil.copytree(tmp_path / "example.org.old", tmp_path / "example.org")
    assert watcher.read().paths == set()
    assert watcher.mode(str(box)) == "stale" and watcher.mode(str(other)) == "watch"
    assert watcher.add(str(box)) == "watch" and watcher.mode(str(box)) == "watch"
    assert watcher.read().paths == {str(box)}  # watched again: measure it again
    with open(box / "maildirsize", "a") as handle:
        handle.write("200 1\n")
    assert watcher.read().paths == {str(box)}
    assert watcher.add(str(box)) == "watch" and watcher.read().paths == set()


def test_a_deep_watch_adds_new_and_cur_when_they_appear(tmp_path, watcher):
    box = tmp_path / "a"
    box.mkdir()  # the MDA is still creating it
    assert watcher.add(str(box), deep=True) == "watch"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir()
    assert watcher.read().paths == {str(box)}
    deliver(box)
    assert watcher.read().paths == {str(box)}
    os.rename(box / "new" / "1.x,S=5", box / "cur" / "1.x,S=5:2,S")
    assert watcher.read().paths == {str(box)}


def test_adding_a_deep_watch_again_retries_what_is_missing(tmp_path, watcher):
    box = tmp_path / "a"
    box.mkdir()
    watcher.add(str(box), deep=True)
    (box / "new").mkdir()
    watcher._inotify.read(timeout=0)  # the event is lost (a queue overflow, say)
    assert watcher.add(str(box), deep=True) == "watch"
    assert watcher.read().paths == {str(box)}  # what the new watch would have seen is unknown
    deliver(box)
    assert watcher.read().paths == {str(box)}
    assert watcher.add(str(box), deep=True) == "watch" and watcher.read().paths == set()


def test_a_path_watched_deeper_is_due_for_reading_at_once_not_at_the_next_event(tmp_path, watcher):
    """The daemon sleeps until next_poll_at or an event: the path reported changed by the
    deeper watch must wake it now, or it is noticed late (a busy mailbox for a debounce
    delay more)."""
    box = maildir(tmp_path, "a")
    assert watcher.add(str(box)) == "watch"
    assert watcher.next_poll_at is None  # nothing polled, nothing waiting: sleep on events
    assert watcher.add(str(box), deep=True) == "watch"
    assert watcher.next_poll_at is not None and watcher.next_poll_at <= time.monotonic()
    assert watcher.read().paths == {str(box)}
    assert watcher.next_poll_at is None


def test_only_a_complete_deep_watch_on_a_local_disk_sees_everything(tmp_path, watcher, monkeypatch):
    box = maildir(tmp_path, "a")
    assert watcher.add(str(box)) == "watch"
    assert not watcher.sees_everything(str(box))  # maildirsize only: a walk would see more
    watcher.add(str(box), deep=True)
    assert watcher.sees_everything(str(box))
    assert not watcher.sees_everything(str(tmp_path / "unknown"))
    os.rename(box, tmp_path / "b")  # the watch now follows a directory the path no longer names
    maildir(tmp_path, "a")
    assert not watcher.sees_everything(str(box))
    watcher.add(str(box), deep=True)
    assert watcher.sees_everything(str(box))
    monkeypatch.setattr(watcher._local, "is_local", lambda device: False)  # NFS, say
    assert not watcher.sees_everything(str(box))


def test_a_deep_watch_sees_deliveries_into_folders(tmp_path, watcher):
    box = maildir(tmp_path, "a", maildirsize=False)
    maildir(box, ".Sent", maildirsize=False)
    watcher.add(str(box), deep=True)
    deliver(box / ".Sent")
    assert watcher.read().paths == {str(box)}
    deliver(box / ".Sent", "2.x,S=5", sub="cur")
    assert watcher.read().paths == {str(box)}
    # A folder made in one go, and one made step by step.
    maildir(box, ".Archive", maildirsize=False)
    (box / ".Drafts").mkdir()
    assert watcher.read().paths == {str(box)}
    deliver(box / ".Archive")
    assert watcher.read().paths == {str(box)}
    (box / ".Drafts" / "cur").mkdir()
    (box / ".Drafts" / "dovecot-uidlist").write_text("noise")
    assert watcher.read().paths == {str(box)}
    (box / ".Drafts" / "new").mkdir()
    watcher.read()
    deliver(box / ".Drafts", sub="cur")
    deliver(box / ".Drafts", "2.x,S=5", sub="new")
    assert watcher.read().paths == {str(box)}
    # A renamed folder is still watched; a removed one no longer is.
    os.rename(box / ".Archive", box / ".Old")
    assert watcher.read().paths == {str(box)}
    deliver(box / ".Old", "3.x,S=5")
    assert watcher.read().paths == {str(box)}
    shutil.rmtree(box / ".Old")
    assert watcher.read().paths == {str(box)}
    # Back to a shallow watch: folders are not looked at.
    watcher.add(str(box), deep=False)
    watcher.read()
    deliver(box / ".Sent", "4.x,S=5")
    assert watcher.read().paths == set()
    assert set(watcher._wds) == {watcher._watched[str(box)].root}


class _LimitedInotify:
    """Real inotify with the kernel's watch limit at ``limit``."""

    limit = 3

    def __init__(self, nonblocking=True):
        from inotify_simple import INotify
        self.real = INotify(nonblocking=nonblocking)
        self.wds = set()

    def add_watch(self, path, mask):
        if len(self.wds) >= self.limit:
            os.stat(path)  # ENOENT first, as the kernel does
            raise OSError(errno.ENOSPC, "No space left on device")
        wd = self.real.add_watch(path, mask)
        self.wds.add(wd)
        return wd

    def rm_watch(self, wd):
        self.wds.discard(wd)
        self.real.rm_watch(wd)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_deep_watch_the_limit_leaves_incomplete_is_polled_folders_included(tmp_path, caplog):
    w = Watcher(use_inotify=True, poll_interval=1.0, poll_step=0.5, inotify_factory=_LimitedInotify)
    try:
        box = maildir(tmp_path, "a", maildirsize=False)
        assert w.add(str(box), deep=True) == "watch"  # 3 watches
        with caplog.at_level(logging.WARNING, logger="ldapquota.watcher"):
            maildir(box, ".Sent", maildirsize=False)
            assert w.read().paths == {str(box)}
        assert w.mode(str(box)) == "poll" and w._inotify.wds == set()
        assert [r for r in caplog.records if "watch limit" in r.message]
        os.utime(box / ".Sent" / "new", ns=(0, 0))  # file times tick coarsely
        w.poll(0.0)
        deliver(box / ".Sent")
        assert w.poll(0.5) == {str(box)}
    finally:
        w.close()


def test_the_deep_polling_signature_covers_folders(tmp_path):
    box = maildir(tmp_path, "a", maildirsize=False)
    maildir(box, ".Sent", maildirsize=False)
    os.utime(box / ".Sent" / "new", ns=(0, 0))  # file times tick coarsely
    before = signature(str(box), True)
    deliver(box / ".Sent")
    assert signature(str(box), True) != before


# --------------------------------------------------------------------------- pidfile, owner


def test_the_pidfile_lock_refuses_a_second_holder_and_survives_a_stale_file(tmp_path):
    path = tmp_path / "ldapquota.pid"
    path.write_text("12345\n")  # stale: nobody holds its lock
    first = PidFile(str(path))
    first.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(AlreadyRunning, match=rf"already running \(pid {os.getpid()}\)"):
        PidFile(str(path)).acquire()
    first.release()
    assert not path.exists()
    again = PidFile(str(path))
    again.acquire()
    again.release()


def test_a_pidfile_in_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="daemon.pidfile"):
        PidFile(str(tmp_path / "no" / "such.pid")).acquire()


def test_unknown_users_and_groups_are_config_errors():
    assert resolve_owner(None, None) == (None, None, None)
    assert resolve_owner("root", None) == (0, 0, "root")
    with pytest.raises(ConfigError, match="daemon.user"):
        resolve_owner("no-such-user-ldapquota", None)
    with pytest.raises(ConfigError, match="daemon.group"):
        resolve_owner(None, "no-such-group-ldapquota")


# --------------------------------------------------------------------------- config keys

BASE = "ldap:\n  uri: ldap://127.0.0.1\n  base_dn: dc=x\nmailboxes:\n  root: /var/vmail\n"


def test_daemon_keys_have_defaults_and_take_durations():
    config = parse_config(BASE)
    assert (config.daemon.debounce, config.daemon.over_recheck, config.daemon.poll_interval) == (0.5, 30.0, 30.0)
    config = parse_config(BASE + "daemon:\n  debounce: 0.2\n  over_recheck: 2m\n")
    assert (config.daemon.debounce, config.daemon.over_recheck) == (0.2, 120.0)


@pytest.mark.parametrize("text, key", [
    ("daemon:\n  debounce: -1\n", "daemon.debounce"),
    ("daemon:\n  over_recheck: soon\n", "daemon.over_recheck"),
    ("daemon:\n  poll_interval: 0\n", "daemon.poll_interval"),
    ("daemon:\n  inotify: true\n", "daemon.inotify"),
])
def test_bad_daemon_keys_are_named(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(BASE + text)


def test_the_first_change_of_a_quiet_key_is_due_at_once():
    debouncer = Debouncer(0.5)
    debouncer.notice("a", 10.0)
    assert debouncer.pop_due(10.0) == ["a"]


def test_a_burst_is_acted_on_at_its_start_and_once_more_at_its_end():
    debouncer = Debouncer(0.5)
    debouncer.notice("a", 10.0)
    assert debouncer.pop_due(10.0) == ["a"]
    for t in (10.05, 10.1, 10.3, 10.45):
        debouncer.notice("a", t)
        assert debouncer.pop_due(t) == []
    assert debouncer.next_due() == 10.5
    assert debouncer.pop_due(10.5) == ["a"]
    assert debouncer.pop_due(20.0) == []  # nothing more: the burst was folded into one


def test_a_change_after_a_quiet_spell_is_acted_on_at_once_even_just_after_a_bursts_closing_action():
    """Quiet counts from the last change: the burst at 10.0 closed at 10.5, and a change at
    10.6 (0.6 s after the burst's last change) is the first of a new one, not a late one."""
    debouncer = Debouncer(0.5)
    debouncer.notice("a", 10.0)
    assert debouncer.pop_due(10.0) == ["a"]
    debouncer.notice("a", 10.01)
    assert debouncer.pop_due(10.49) == []
    assert debouncer.pop_due(10.5) == ["a"]
    debouncer.notice("a", 10.6)
    assert debouncer.pop_due(10.6) == ["a"]
    debouncer.notice("a", 10.7)  # 0.1 s after that change: folded, at 10.6 + 0.5
    assert debouncer.pop_due(11.09) == []
    assert debouncer.pop_due(11.1) == ["a"]


def test_a_steady_stream_is_acted_on_once_per_delay_not_starved():
    debouncer = Debouncer(0.5)
    acted = []
    t = 0.0
    while t < 3.0:
        debouncer.notice("a", t)
        acted += [t for _ in debouncer.pop_due(t)]
        t = round(t + 0.1, 10)
    assert len(acted) == 6 and all(b - a == pytest.approx(0.5) for a, b in zip(acted, acted[1:]))


def test_a_key_quiet_again_is_forgotten_and_acted_on_at_once_next_time():
    debouncer = Debouncer(0.5)
    debouncer.notice("a", 0.0)
    debouncer.pop_due(0.0)
    debouncer.notice("b", 1.0)
    debouncer.pop_due(1.0)  # "a" was last due and changed a second ago: quiet, forgotten
    assert "a" not in debouncer._acted and "a" not in debouncer._noticed
    debouncer.notice("a", 1.2)
    assert debouncer.pop_due(1.2) == ["a"]
