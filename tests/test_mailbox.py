"""Measuring real maildirs on disk (docs/contract.md §4; docs/maildir-and-mta-facts.md §1.2-§1.5). No servers.

Every expected usage is computed here from the files the test itself creates.
"""

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ldapquota.mailbox as mailbox_module
from ldapquota.errors import MeasureError
from ldapquota.mailbox import Measurement, measure, walk
from ldapquota.quota import UNLIMITED, Limit, Policy, Usage, exceeds_over_threshold


def says_over(usage: Usage, limit: Limit) -> bool:
    return exceeds_over_threshold(usage, limit, Policy())


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "vmail"
    path.mkdir()
    return Path(os.path.realpath(path))


def make_maildir(path: Path, subs=("cur", "new", "tmp")) -> Path:
    for sub in subs:
        (path / sub).mkdir(parents=True, exist_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def put(directory: Path, name: str, size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"x" * size)
    return path


def run(root: Path, mailbox: str, limit: Optional[Limit] = None, count_trash: bool = True, now: Optional[float] = None) -> Measurement:
    return measure(str(root), mailbox, limit, says_over, count_trash, now)


def write_maildirsize(maildir: Path, text: bytes, age: float = 0.0) -> Path:
    path = maildir / "maildirsize"
    path.write_bytes(text)
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


# --------------------------------------------------------------------------- sizes from names


def test_size_from_S_in_name_wins_over_the_real_size(root):
    md = make_maildir(root / "a")
    put(md / "cur", "1700000000.M1P1.host,S=1000", 10)
    assert walk(str(md)) == Usage(1000, 1)


def test_dovecot_W_is_ignored_and_flags_end_the_size(root):
    md = make_maildir(root / "a")
    put(md / "cur", "1035478339.27041_118.foo.org,S=1000,W=1030:2,S", 3)
    put(md / "cur", "1035478340.1.foo.org,S=500:2,S", 4)
    put(md / "new", "1035478341.2.foo.org,S=70", 5)
    assert walk(str(md)) == Usage(1000 + 500 + 70, 3)


def test_S_followed_by_junk_falls_back_to_stat(root):
    md = make_maildir(root / "a")
    put(md / "cur", "1700000000.M1P1.host,S=12abc:2,S", 7)
    assert walk(str(md)) == Usage(7, 1)


def test_name_without_S_uses_the_file_size(root):
    md = make_maildir(root / "a")
    put(md / "cur", "1700000000.M1P1.host:2,S", 123)
    put(md / "new", "1700000001.M2P1.host", 45)
    assert walk(str(md)) == Usage(168, 2)


def test_lowercase_s_is_not_a_size_tag(root):
    md = make_maildir(root / "a")
    put(md / "cur", "1700000000.M1P1.host,s=999:2,", 11)
    assert walk(str(md)) == Usage(11, 1)


def test_empty_maildir_is_zero(root):
    md = make_maildir(root / "a")
    assert walk(str(md)) == Usage(0, 0)


# --------------------------------------------------------------------------- what counts


def test_cur_new_and_folders_count(root):
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    put(md / "new", "m2", 20)
    make_maildir(md / ".Sent")
    put(md / ".Sent" / "cur", "m3", 3)
    put(md / ".Sent" / "new", "m4,S=4000", 1)
    make_maildir(md / ".Lists.debian")
    put(md / ".Lists.debian" / "cur", "m5", 5)
    assert walk(str(md)) == Usage(100 + 20 + 3 + 4000 + 5, 5)


def test_tmp_is_not_counted(root):
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    put(md / "tmp", "partial", 5000)
    make_maildir(md / ".Sent")
    put(md / ".Sent" / "tmp", "partial,S=9999", 1)
    assert walk(str(md)) == Usage(100, 1)


def test_dotfiles_are_not_messages(root):
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    put(md / "cur", ".hidden", 500)
    put(md / "new", ".nfs000123,S=99", 5)
    assert walk(str(md)) == Usage(100, 1)


def test_files_at_the_top_and_other_directories_are_not_messages(root):
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    put(md, "dovecot.index", 9999)
    put(md, "subscriptions", 50)
    put(md / "courierimapkeywords", "k", 77)  # not a dot-folder
    put(md / "Folder" / "cur", "m", 88)  # folders start with a dot
    (md / "cur" / "adir").mkdir()
    (md / "cur" / "adir,S=5").mkdir()
    assert walk(str(md)) == Usage(100, 1)


def _trash_tree(root: Path) -> Path:
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    make_maildir(md / ".Trash")
    put(md / ".Trash" / "cur", "t1", 1000)
    make_maildir(md / ".Trash.sub")
    put(md / ".Trash.sub" / "new", "t2,S=2000", 1)
    make_maildir(md / ".Sent")
    put(md / ".Sent" / "cur", "s1", 10)
    return md


def test_trash_counts_with_count_trash(root):
    md = _trash_tree(root)
    assert walk(str(md), count_trash=True) == Usage(100 + 1000 + 2000 + 10, 4)
    assert run(root, "a", count_trash=True).usage == Usage(3110, 4)


def test_trash_and_its_subfolders_excluded_without_count_trash(root):
    md = _trash_tree(root)
    assert walk(str(md), count_trash=False) == Usage(110, 2)
    assert run(root, "a", count_trash=False).usage == Usage(110, 2)


def test_missing_cur_counts_new(root):
    md = make_maildir(root / "a", subs=("new",))
    put(md / "new", "m1", 10)
    make_maildir(md / ".F", subs=())
    put(md / ".F" / "new", "m2", 5)
    assert walk(str(md)) == Usage(15, 2)


def test_missing_maildir_is_missing_and_empty(root):
    measurement = run(root, "example.org/nobody/Maildir", Limit(1000, None))
    assert measurement.missing is True
    assert measurement.usage == Usage(0, 0)
    assert measurement.limit == Limit(1000, None)
    assert measurement.path == str(root / "example.org/nobody/Maildir")


def test_missing_maildir_without_limit_is_unlimited(root):
    assert run(root, "nobody").limit == UNLIMITED


def test_existing_maildir_is_not_missing(root):
    make_maildir(root / "a")
    assert run(root, "a").missing is False


def test_maildir_that_is_a_file_is_an_error(root):
    put(root, "a", 10)
    with pytest.raises(MeasureError):
        run(root, "a")


def test_walk_of_missing_path_is_an_error(root):
    with pytest.raises(MeasureError):
        walk(str(root / "nothing"))


# --------------------------------------------------------------------------- maildirsize


def _with_files(root: Path) -> Path:
    """A maildir whose real content is 300 bytes in 2 messages."""
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    put(md / "new", "m2,S=200", 1)
    return md


WALKED = Usage(300, 2)
#: A limit from LDAP or accounts.default_quota: the maildirsize header is then not the limit.
CONFIGURED = Limit(10**9, None)


def test_maildirsize_is_trusted_under_quota(root):
    md = _with_files(root)
    write_maildirsize(md, b"10000S\n500 3\n")
    measurement = run(root, "a")
    assert measurement.usage == Usage(500, 3)
    assert measurement.method == "maildirsize"


def test_old_maildirsize_is_trusted_while_under_quota(root):
    md = _with_files(root)
    write_maildirsize(md, b"10000S\n500 3\n-100 -1\n", age=3600)
    measurement = run(root, "a")
    assert measurement.usage == Usage(400, 2)
    assert measurement.method == "maildirsize"


def test_fresh_single_line_over_quota_file_is_trusted(root):
    md = _with_files(root)
    write_maildirsize(md, b"1000S\n2000 5\n")
    measurement = run(root, "a")
    assert measurement.usage == Usage(2000, 5)
    assert measurement.method == "maildirsize"


def test_stale_over_quota_file_is_walked(root):
    md = _with_files(root)
    write_maildirsize(md, b"1000S\n2000 5\n", age=20 * 60)
    measurement = run(root, "a")
    assert measurement.usage == WALKED
    assert measurement.method.startswith("walk")


def test_over_quota_file_899_seconds_old_is_trusted_900_is_not(root):
    md = _with_files(root)
    path = write_maildirsize(md, b"1000S\n2000 5\n")
    mtime = os.stat(path).st_mtime
    assert run(root, "a", now=mtime + 899).usage == Usage(2000, 5)
    assert run(root, "a", now=mtime + 900).usage == WALKED


def test_two_line_over_quota_file_is_walked(root):
    md = _with_files(root)
    write_maildirsize(md, b"1000S\n1500 3\n500 2\n")
    measurement = run(root, "a")
    assert measurement.usage == WALKED
    assert measurement.method.startswith("walk")


def test_over_by_count_file_is_distrusted_too(root):
    md = _with_files(root)
    write_maildirsize(md, b"0S,3C\n10 1\n10 2\n")
    assert run(root, "a").usage == WALKED


def test_over_verdict_uses_the_configured_limit(root):
    # Under the header's limit but over the configured one: the file is re-checked.
    md = _with_files(root)
    write_maildirsize(md, b"100000S\n1500 3\n500 2\n")
    assert run(root, "a", Limit(1000, None)).usage == WALKED
    assert run(root, "a", None).usage == Usage(2000, 5)


def test_file_of_5120_bytes_is_walked(root):
    md = _with_files(root)
    data = b"10000000S\n" + b"1 1\n" * 1276 + b"1 1  \n"
    assert len(data) == 5120
    write_maildirsize(md, data)
    measurement = run(root, "a")
    assert measurement.usage == WALKED
    assert measurement.method.startswith("walk")


def test_file_of_5119_bytes_is_read(root):
    md = _with_files(root)
    data = b"10000000S\n" + b"1 1\n" * 1276 + b"1 1 \n"
    assert len(data) == 5119
    write_maildirsize(md, data)
    assert run(root, "a").usage == Usage(1277, 1277)


def test_large_file_is_walked(root):
    md = _with_files(root)
    write_maildirsize(md, b"10000000S\n" + b"1 1\n" * 5000)
    assert run(root, "a").usage == WALKED


@pytest.mark.parametrize(
    "text",
    [b"10000S\ngarbage\n", b"10000S\n100 1", b"", b"10000S\n", b"junk\n100 1\n", b"10000S\n100 1\n-500 -1\n", b"10000S\n1\x000 1\n"],
    ids=["garbage-line", "no-final-newline", "empty", "header-only", "bad-header", "negative-total", "nul"],
)
def test_malformed_file_is_walked(root, text):
    md = _with_files(root)
    write_maildirsize(md, text)
    measurement = run(root, "a", CONFIGURED)
    assert measurement.usage == WALKED
    assert measurement.method.startswith("walk")


def test_file_with_a_4400_digit_line_is_walked(root):
    md = _with_files(root)
    write_maildirsize(md, b"10000S\n" + b"1" * 4400 + b" 1\n")
    measurement = run(root, "a")  # must neither raise nor trust it
    assert measurement.usage == WALKED


def test_no_maildirsize_is_walked(root):
    _with_files(root)
    measurement = run(root, "a")
    assert measurement.usage == WALKED
    assert measurement.method.startswith("walk")
    assert measurement.limit == UNLIMITED


def test_header_limit_used_when_nothing_configured(root):
    md = _with_files(root)
    write_maildirsize(md, b"12345S,67C\n300 2\n")
    assert run(root, "a", None).limit == Limit(12345, 67)


def test_header_limit_used_even_when_the_file_is_walked(root):
    md = _with_files(root)
    write_maildirsize(md, b"12345S,67C\nbroken\n")
    measurement = run(root, "a", None)
    assert measurement.limit == Limit(12345, 67)
    assert measurement.usage == WALKED


def test_configured_limit_wins_over_header(root):
    md = _with_files(root)
    write_maildirsize(md, b"12345S,67C\n300 2\n")
    assert run(root, "a", Limit(999999, None)).limit == Limit(999999, None)


def test_configured_unlimited_wins_over_header(root):
    # 0 in the attribute (or default_quota) means unlimited; the header must not override it.
    md = _with_files(root)
    write_maildirsize(md, b"100S\n300 2\n")
    measurement = run(root, "a", Limit(0, 0))
    assert measurement.limit == UNLIMITED


def test_symlinked_maildirsize_is_not_followed(root):
    md = _with_files(root)
    fake = put(root, "fake-maildirsize", 0)
    fake.write_bytes(b"10000S\n5 1\n")
    (md / "maildirsize").symlink_to(fake)
    measurement = run(root, "a", CONFIGURED)
    assert measurement.usage == WALKED
    assert measurement.method == "walk (maildirsize is a symbolic link)"


def _without_hanging(call):
    def give_up(signum, frame):
        raise TimeoutError("measure() blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_fifo_as_maildirsize_does_not_hang(root):
    md = _with_files(root)
    os.mkfifo(md / "maildirsize")
    measurement = _without_hanging(lambda: run(root, "a", CONFIGURED))
    assert measurement.usage == WALKED
    assert measurement.method == "walk (maildirsize is a FIFO)"


def test_directory_as_maildirsize_is_walked(root):
    md = _with_files(root)
    (md / "maildirsize").mkdir()
    assert run(root, "a", CONFIGURED).usage == WALKED


# docs/contract.md §5: with no quota attribute and no default, the header is the only limit.
# Something standing where maildirsize should be, whose header cannot be read, is an unknown
# limit: an error (the flag is kept), never "unlimited" (which would clear a TRUE flag).


def _sparse_nul_file(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(1 << 20)  # a hole: reads as a megabyte of NULs


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda path: os.mkfifo(path), "a FIFO"),
        (lambda path: path.mkdir(), "a directory"),
        (_sparse_nul_file, "its first line holds NUL bytes"),
        (lambda path: path.symlink_to(path.parent / "cur"), "a symbolic link"),
        (lambda path: path.write_bytes(b"junk\n100 1\n"), "its first line is not a quota definition"),
        (lambda path: path.write_bytes(b""), "the file is empty"),
    ],
    ids=["fifo", "directory", "sparse-nul", "symlink", "garbage-header", "empty"],
)
def test_an_unreadable_header_with_no_other_limit_is_an_error_not_unlimited(root, make, said):
    md = _with_files(root)
    make(md / "maildirsize")
    with pytest.raises(MeasureError) as raised:
        _without_hanging(lambda: run(root, "a", None))
    message = str(raised.value)
    assert f"{md}/maildirsize is there but its quota line cannot be read ({said})" in message
    assert "an unknown limit is not 'unlimited'" in message


def test_a_sparse_nul_file_with_a_configured_limit_is_walked(root):
    md = _with_files(root)
    _sparse_nul_file(md / "maildirsize")
    measurement = run(root, "a", CONFIGURED)
    assert measurement.usage == WALKED and measurement.limit == CONFIGURED


def test_a_missing_maildirsize_has_no_header_so_no_limit(root):
    _with_files(root)
    measurement = run(root, "a", None)
    assert measurement.limit == UNLIMITED and measurement.usage == WALKED


def test_a_readable_header_with_broken_usage_lines_is_still_the_limit(root):
    md = _with_files(root)
    write_maildirsize(md, b"12345S\n\0\0\0\n")
    measurement = run(root, "a", None)
    assert measurement.limit == Limit(12345, None) and measurement.usage == WALKED


def test_measure_never_writes_into_the_store(root):
    md = _with_files(root)
    make_maildir(md / ".Trash")
    put(md / ".Trash" / "cur", "t", 9)
    write_maildirsize(md, b"100S\n150 1\n150 1\n", age=3600)

    def snapshot():
        return sorted(
            (str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns, p.lstat().st_mode)
            for p in root.rglob("*")
        )

    before = snapshot()
    run(root, "a")
    run(root, "a", count_trash=False)
    walk(str(md))
    assert snapshot() == before


# --------------------------------------------------------------------------- symlinks and the root


def test_symlinked_maildir_pointing_outside_the_root_is_refused(root, tmp_path):
    outside = make_maildir(tmp_path / "outside")
    put(outside / "cur", "m", 10)
    (root / "example.org").mkdir()
    (root / "example.org" / "bob").symlink_to(outside)
    with pytest.raises(MeasureError):
        run(root, "example.org/bob")


def test_symlinked_parent_pointing_outside_the_root_is_refused(root, tmp_path):
    outside = tmp_path / "elsewhere"
    make_maildir(outside / "bob" / "Maildir")
    (root / "example.org").symlink_to(outside)
    with pytest.raises(MeasureError):
        run(root, "example.org/bob/Maildir")


def test_symlink_to_the_root_itself_is_refused(root):
    (root / "loop").symlink_to(root)
    with pytest.raises(MeasureError):
        run(root, "loop")


def test_symlink_inside_the_root_to_a_maildir_inside_is_allowed(root):
    real = make_maildir(root / "example.org" / "real" / "Maildir")
    put(real / "cur", "m", 42)
    (root / "example.org" / "alias").symlink_to(root / "example.org" / "real")
    measurement = run(root, "example.org/alias/Maildir")
    assert measurement.usage == Usage(42, 1)


@pytest.mark.parametrize("mailbox", ["../outside", "../../etc", "a/../../x", "/etc", "", ".", "/"])
def test_mailbox_outside_the_root_is_refused(root, tmp_path, mailbox):
    make_maildir(tmp_path / "outside")
    with pytest.raises(MeasureError):
        run(root, mailbox)


def test_absolute_mailbox_under_the_root_is_allowed(root):
    md = make_maildir(root / "x" / "Maildir")
    put(md / "cur", "m", 5)
    assert run(root, str(md)).usage == Usage(5, 1)


def test_symlinked_folder_is_not_counted(root):
    md = make_maildir(root / "a")
    put(md / "cur", "m", 1)
    other = make_maildir(root / "b" / ".Big")
    put(other / "cur", "huge", 10000)
    (md / ".Big").symlink_to(other)
    assert walk(str(md)) == Usage(1, 1)
    assert run(root, "a").usage == Usage(1, 1)


def test_dot_entry_that_is_a_file_is_not_a_folder(root):
    md = make_maildir(root / "a")
    put(md / "cur", "m", 3)
    put(md, ".Folder", 5000)
    put(md, ".Folder,S=99", 1)
    assert walk(str(md)) == Usage(3, 1)


def test_symlinked_cur_is_not_followed(root):
    md = make_maildir(root / "a", subs=("new",))
    put(md / "new", "m", 1)
    other = root / "elsewhere-cur"
    put(other, "huge", 10000)
    (md / "cur").symlink_to(other)
    assert walk(str(md)) == Usage(1, 1)


# --------------------------------------------------------------------------- permissions

def _measure_unprivileged(root: Path, mailbox: str) -> Dict[str, object]:
    """measure() in a forked child that has dropped to uid/gid 65534 when we are root
    (root ignores permissions). The result comes back as JSON through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                m = measure(str(root), mailbox, None, lambda usage, limit: False, True)
                result = {"usage": [m.usage.bytes, m.usage.messages]}
            except MeasureError as exc:
                result = {"error": str(exc)}
            except BaseException as exc:  # anything else is a bug the test must show
                result = {"crash": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the unprivileged measure() did not finish")
        time.sleep(0.005)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return json.loads(output)


@pytest.fixture
def open_root():
    """A root every user may traverse (pytest's tmp_path is private to root)."""
    base = tempfile.mkdtemp(prefix="ldapquota-perm-")
    os.chmod(base, 0o755)
    path = Path(os.path.realpath(base))
    yield path
    os.chmod(path, 0o755)
    for directory, dirs, _files in os.walk(path):
        for name in dirs:  # before os.walk descends into them
            os.chmod(os.path.join(directory, name), 0o755)
    shutil.rmtree(path)


def _readable_tree(root: Path) -> Path:
    md = make_maildir(root / "a")
    put(md / "cur", "m1", 100)
    make_maildir(md / ".Sent")
    put(md / ".Sent" / "cur", "m2", 20)
    for directory, _dirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return md


def test_unprivileged_control_measures_a_readable_tree(open_root):
    _readable_tree(open_root)
    assert _measure_unprivileged(open_root, "a") == {"usage": [120, 2]}


@pytest.mark.parametrize("unreadable", ["cur", ".Sent", ".Sent/cur", ""])
def test_permission_denied_is_a_measure_error_not_a_partial_count(open_root, unreadable):
    md = _readable_tree(open_root)
    os.chmod(md / unreadable, 0o000)
    result = _measure_unprivileged(open_root, "a")
    assert "error" in result, result
    assert (str(md / unreadable) if unreadable else str(md)) in result["error"]


def test_unreadable_maildirsize_is_not_trusted(open_root):
    md = _readable_tree(open_root)
    path = write_maildirsize(md, b"10000S\n5 1\n")
    os.chmod(path, 0o000)
    result = _measure_unprivileged(open_root, "a")
    # Either an error (the flag is kept) or a walk; never a reading of the file.
    assert result == {"usage": [120, 2]} or "error" in result


# --------------------------------------------------------------------------- vanishing files


class _Listed:
    def __init__(self, entries):
        self._entries = entries

    def __enter__(self):
        return iter(self._entries)

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return iter(self._entries)


def test_file_vanishing_between_listing_and_stat_is_skipped(root, monkeypatch):
    md = make_maildir(root / "a")
    put(md / "cur", "stays", 100)
    victim = put(md / "cur", "expunged-while-counting", 5000)
    put(md / "new", "also,S=7", 1)
    real_scandir = os.scandir

    def scandir_then_expunge(target):
        with real_scandir(target) as listing:
            entries = list(listing)
        if any(entry.name == victim.name for entry in entries) and victim.exists():
            victim.unlink()  # listed, but gone before it is stat'ed
        return _Listed(entries)

    monkeypatch.setattr(mailbox_module.os, "scandir", scandir_then_expunge)
    assert walk(str(md)) == Usage(107, 2)
    assert not victim.exists()


# --------------------------------------------------------------------------- property


message = st.tuples(
    st.booleans(),  # ,S= in the name?
    st.integers(0, 10**9),  # the size in the name
    st.integers(0, 300),  # the real size
    st.sampled_from(["", ":2,", ":2,S", ":2,RS", ",W=1234:2,S"]),
)
folder_names = st.sampled_from(["", ".Sent", ".Drafts", ".Lists.x", ".Trash", ".Trash.old"])
sub_names = st.sampled_from(["cur", "new", "tmp"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(folder_names, sub_names, message), max_size=25), st.booleans())
def test_property_walk_equals_the_sum_of_created_messages(files, count_trash):
    with tempfile.TemporaryDirectory() as base:
        md = Path(base) / "Maildir"
        make_maildir(md)
        expected_bytes = expected_count = 0
        for index, (folder, sub, (named, name_size, real_size, suffix)) in enumerate(files):
            name = f"17000{index:05d}.M{index}P1.host"
            if named:
                name += f",S={name_size}"
            name += suffix
            put(md / folder / sub if folder else md / sub, name, real_size)
            if sub == "tmp":
                continue
            if not count_trash and folder in (".Trash", ".Trash.old"):
                continue
            expected_bytes += name_size if named else real_size
            expected_count += 1
        assert walk(str(md), count_trash=count_trash) == Usage(expected_bytes, expected_count)
