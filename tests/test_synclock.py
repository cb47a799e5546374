"""The full-sync lock (docs/contract.md §5) on real files, real flock()s and, for the
cross-user cases, a real second user (``setpriv`` to nobody): who meets whom, where the
lock goes when a directory cannot be used, and what a planted file gets."""

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from ldapquota.config import load_config
from ldapquota.errors import SyncBusy, SyncLockUnusable
from ldapquota.synclock import FullSyncLock, holder_pid, lock_name, prepare

NOBODY = 65534


def make_config(directory: Path, status_dn=None, **daemon):
    """A config whose daemon.pidfile lies in ``directory/run`` (written readable by all)."""
    values = {
        "ldap": {"uri": "ldap://127.0.0.1:389", "base_dn": "dc=example,dc=org",
                 "status_dn": status_dn or f"cn=sync-{uuid.uuid4().hex},dc=example,dc=org"},
        "mailboxes": {"root": str(directory)},
        "daemon": {"pidfile": str(directory / "run" / "ldapquota.pid"), **daemon},
    }
    path = directory / f"config-{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump(values))
    path.chmod(0o644)
    return load_config(str(path)), path


@pytest.fixture
def shared_dir():
    """A directory every user may read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ldapquota-lock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_second_full_sync_of_the_store_is_refused_at_once_naming_the_holder(tmp_path):
    config, _ = make_config(tmp_path)
    other_store, _ = make_config(tmp_path)
    (tmp_path / "run").mkdir()

    with FullSyncLock(config) as first:
        assert first.path == str(tmp_path / "run" / lock_name(config))
        assert holder_pid(os.stat(first.path)) == os.getpid()
        with pytest.raises(SyncBusy) as refused:
            FullSyncLock(config).acquire()
        with FullSyncLock(other_store):  # another store is not concerned
            pass
    message = str(refused.value)
    assert refused.value.exit_code == 75
    assert f"another full sync of ldap.status_dn {config.ldap.status_dn} is running (pid {os.getpid()}, user root" in message
    assert "nothing measured, nothing written" in message
    with FullSyncLock(config):  # released: the next one gets it
        pass


def test_the_same_status_dn_spelt_differently_is_the_same_store(tmp_path):
    config, _ = make_config(tmp_path, status_dn="cn=LdapQuota,ou=Services,DC=example,dc=org")
    same, _ = make_config(tmp_path, status_dn="cn=ldapquota,ou=services,dc=example,dc=org")
    assert lock_name(config) == lock_name(same)


def test_a_missing_runtime_directory_falls_back_quietly(tmp_path, caplog):
    config, _ = make_config(tmp_path)
    fallback = tmp_path / "lock"
    fallback.mkdir()
    with caplog.at_level(logging.WARNING), FullSyncLock(config, dirs=[str(tmp_path / "run"), str(fallback)]) as lock:
        assert lock.path == str(fallback / lock_name(config))
    assert caplog.records == []  # no daemon runtime directory: nobody to meet there


def run_as_nobody(config_path: Path, *dirs: Path) -> subprocess.CompletedProcess:
    """Take the lock of ``config_path`` as user nobody, in ``dirs``; prints where."""
    script = (
        "import logging, sys\n"
        "from ldapquota.config import load_config\n"
        "from ldapquota.errors import SyncBusy\n"
        "from ldapquota.synclock import FullSyncLock\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "try:\n"
        "    with FullSyncLock(load_config(sys.argv[1]), dirs=sys.argv[2:]) as lock:\n"
        "        print('locked', lock.path)\n"
        "except SyncBusy as exc:\n"
        "    print('refused:', exc)\n"
        "    sys.exit(exc.exit_code)\n"
    )
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", script, str(config_path), *map(str, dirs)],
        capture_output=True, text=True, timeout=60, cwd=str(REPO), stdin=subprocess.DEVNULL,
    )


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_user_meets_roots_lock_in_the_runtime_directory_or_falls_back_with_a_warning(shared_dir):
    runtime = shared_dir / "run"  # root's, 0755: nobody may not create files in it
    runtime.mkdir(mode=0o755)
    fallback = shared_dir / "lock"
    fallback.mkdir()
    fallback.chmod(0o1777)
    config, config_path = make_config(shared_dir)

    # No lock file yet: nobody cannot make one there, takes the next place, and says so.
    alone = run_as_nobody(config_path, runtime, fallback)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() == f"locked {fallback / lock_name(config)}"
    assert f"cannot use {runtime} (Permission denied)" in alone.stderr

    # The daemon made it there before dropping privileges: nobody locks the same file
    # (read-only; flock needs no more), so root's running sync excludes nobody's.
    prepare(config)
    made = runtime / lock_name(config)
    assert stat.S_IMODE(made.stat().st_mode) == 0o644
    with FullSyncLock(config, dirs=[str(runtime), str(fallback)]):
        refused = run_as_nobody(config_path, runtime, fallback)
    assert refused.returncode == 75, refused.stdout + refused.stderr
    assert f"is running (pid {os.getpid()}, user root" in refused.stdout
    assert f"lock: {made}" in refused.stdout
    free = run_as_nobody(config_path, runtime, fallback)
    assert free.stdout.strip() == f"locked {made}" and free.stderr == ""


def test_prepare_makes_the_lock_file_readable_whatever_the_umask(tmp_path):
    config, _ = make_config(tmp_path)
    (tmp_path / "run").mkdir()
    old = os.umask(0o077)  # systemd's UMask=0077 in examples/systemd
    try:
        prepare(config)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / lock_name(config)).stat().st_mode) == 0o644


@pytest.mark.parametrize("planted", ["symlink", "fifo", "hardlink"])
def test_a_planted_file_is_refused_and_left_alone(tmp_path, planted):
    config, _ = make_config(tmp_path)
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / lock_name(config)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if planted == "symlink":
        path.symlink_to(victim)
    elif planted == "fifo":
        os.mkfifo(path)  # opening it for reading would block without O_NONBLOCK
    else:
        os.link(victim, path)

    with pytest.raises(SyncLockUnusable) as refused:
        FullSyncLock(config).acquire()
    assert refused.value.exit_code == 75
    assert str(path) in str(refused.value) and "remove it" in str(refused.value)
    assert victim.read_text() == "precious\n"
    assert holder_pid(os.stat(victim)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a file of another user")
def test_a_lock_file_of_another_user_in_a_world_writable_directory_is_refused(tmp_path):
    sticky = tmp_path / "lock"
    sticky.mkdir()
    sticky.chmod(0o1777)
    config, _ = make_config(tmp_path)
    planted = sticky / lock_name(config)
    planted.touch()
    os.chown(planted, NOBODY, NOBODY)

    with pytest.raises(SyncLockUnusable) as refused:
        FullSyncLock(config, dirs=[str(sticky)]).acquire()
    assert f"{planted} belongs to nobody" in str(refused.value)

    # The same file in a directory only trusted users may write, or owned by daemon.user: used.
    sticky.chmod(0o755)
    with FullSyncLock(config, dirs=[str(sticky)]):
        pass
    sticky.chmod(0o1777)
    as_daemon_user, _ = make_config(tmp_path, status_dn=config.ldap.status_dn, user="nobody")
    with FullSyncLock(as_daemon_user, dirs=[str(sticky)]):
        pass
