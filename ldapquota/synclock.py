"""The full-sync lock: full syncs of one store exclude each other (docs/contract.md §5).

``ldapquota --sync`` (cron) and the daemon's own full sync take an exclusive ``flock()``
on one file before they read anything; whoever comes second gives up at once (exit 75 /
the daemon tries again soon) and writes nothing. ``--dry-run`` and ``--sync ADDRESS``
write nothing or little and never take it. The kernel drops the lock when its holder
dies, however it dies, so a crash leaves nothing to clean up; the file itself stays
(removing a lock file races with the next run opening it).

**Which file.** The store is named by ``ldap.status_dn`` (else ``base_dn`` + ``filter``)
together with ``ldap.uri`` -- the same status entry on two directories is two stores --
hashed into ``ldapquota-sync-<hash>.lock``. Cron (as root or as any user that runs
``--sync``) and the daemon (perhaps after dropping privileges, perhaps under systemd's
``ProtectSystem=strict`` and ``PrivateTmp=yes``, as examples/systemd runs it) must find
the same file, so the directory is the first of:

1. the directory of ``daemon.pidfile`` (``/run/ldapquota``): the daemon's runtime
   directory, the one place its unit may write, and writable by root's cron. Used when
   the lock file is there already or may be created there (the daemon creates it before
   dropping privileges: :func:`prepare`);
2. ``/run/lock``: the FHS place for lock files, shared by every user;
3. ``/tmp``, the last resort.

Not ``$XDG_RUNTIME_DIR``: it belongs to one user (cron as root and the daemon as vmail
would lock different files), and cron does not set it.

**Hostile files.** In a world-writable directory anyone may have made the file first, so
it is opened with ``O_NOFOLLOW`` (no symlink) and ``O_NONBLOCK`` (a FIFO does not hang
us), must be a regular file with a single link (no hard link to some other file) and, in
such a directory, belong to root, to us or to ``daemon.user``: a file of another user's
could be held by them for ever to stop every sync, so we refuse and name it instead. The
file is opened read-only and never written -- ``flock()`` needs no write access -- so a
file created by root also serves the daemon once it runs as its own user. Who holds the
lock is read from the kernel's table (``/proc/locks``), not from the file.
"""

import errno
import fcntl
import hashlib
import logging
import os
import pwd
import stat
from types import TracebackType
from typing import List, Optional, Set, Tuple, Type

from ldapquota.errors import SyncBusy, SyncLockUnusable
from ldapquota.settings import Config

log = logging.getLogger(__name__)

FALLBACK_DIRS = ("/run/lock", "/tmp")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: The directory is missing or is not ours to create files in: try the next one.
_NEXT_DIR = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS)


def store_identity(config: Config) -> str:
    ldap = config.ldap
    uris = " ".join(sorted(uri.strip().lower() for uri in ldap.uris))
    if ldap.status_dn:
        return f"status_dn={_dn(ldap.status_dn)} uri={uris}"
    return f"base_dn={_dn(ldap.base_dn)} filter={ldap.filter.strip()} uri={uris}"


def describe_store(config: Config) -> str:
    ldap = config.ldap
    if ldap.status_dn:
        return f"ldap.status_dn {ldap.status_dn}"
    return f"{ldap.filter} under {ldap.base_dn}"


def _dn(dn: str) -> str:
    return ",".join("=".join(part.strip() for part in rdn.split("=", 1)) for rdn in dn.lower().split(","))


def lock_name(config: Config) -> str:
    return f"ldapquota-sync-{hashlib.sha256(store_identity(config).encode()).hexdigest()[:16]}.lock"


def lock_dirs(config: Config) -> List[str]:
    runtime = os.path.dirname(os.path.abspath(config.daemon.pidfile))
    return [runtime] + [d for d in FALLBACK_DIRS if d != runtime]


class FullSyncLock:
    """``with FullSyncLock(config):`` -- the store's full-sync lock, or SyncBusy /
    SyncLockUnusable (both exit 75) without waiting."""

    def __init__(self, config: Config, dirs: Optional[List[str]] = None):
        self.config = config
        self.dirs = list(dirs) if dirs is not None else lock_dirs(config)
        self.name = lock_name(config)
        self.path: Optional[str] = None
        self.fd: Optional[int] = None

    def __enter__(self) -> "FullSyncLock":
        return self if self.fd is not None else self.acquire()

    def __exit__(self, kind: Optional[Type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.release()

    def acquire(self) -> "FullSyncLock":
        fd, path = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = holder_of(os.fstat(fd))
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise SyncBusy(
                    f"another full sync of {describe_store(self.config)} is running ({holder}); "
                    f"nothing measured, nothing written (lock: {path})"
                ) from None
            raise SyncLockUnusable(f"cannot lock {path}: {exc.strerror}; nothing measured, nothing written") from None
        self.fd, self.path = fd, path
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None

    def _open(self) -> Tuple[int, str]:
        passed: List[Tuple[str, int, str]] = []  # (directory, errno, why) of those passed over
        for directory in self.dirs:
            path = os.path.join(directory, self.name)
            try:
                fd = open_lock_file(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise SyncLockUnusable(f"{path} is a symbolic link; refusing to use it as the full-sync lock "
                                           "(remove it); nothing measured, nothing written") from None
                if exc.errno not in _NEXT_DIR:
                    raise SyncLockUnusable(f"cannot open the full-sync lock {path}: {exc.strerror}") from None
                passed.append((directory, exc.errno or 0, exc.strerror or str(exc)))
                continue
            try:
                self._check(fd, path, directory)
            except SyncLockUnusable:
                os.close(fd)
                raise
            if passed and passed[0][1] != errno.ENOENT:
                # A missing runtime directory means no daemon to meet; anything else means a
                # run of another user may lock a different file than this one does.
                log.warning("full-sync lock: cannot use %s; using %s instead (a full sync run by a user "
                            "who can use the first place will not see this one)", _listed(passed), path)
            return fd, path
        raise SyncLockUnusable(f"cannot create the full-sync lock {self.name} in any of {_listed(passed)}; "
                               "nothing measured, nothing written. Make the directory of daemon.pidfile "
                               "writable for this user")

    def _check(self, fd: int, path: str, directory: str) -> None:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
            what = "a hard link" if stat.S_ISREG(found.st_mode) else "not a regular file"
            raise SyncLockUnusable(f"{path} is {what}; refusing to use it as the full-sync lock (remove it); "
                                   "nothing measured, nothing written")
        if os.stat(directory).st_mode & stat.S_IWOTH and found.st_uid not in trusted_uids(self.config):
            raise SyncLockUnusable(
                f"{path} belongs to {_user(found.st_uid)}, not to root, to this user or to daemon.user, in a "
                "directory anyone may write: it may be there to block ldapquota. Remove it; nothing measured, "
                "nothing written")


def open_lock_file(path: str) -> int:
    """The lock file, opened read-only (created 0644 if missing). Raises OSError."""
    for _ in range(3):
        try:
            return os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # made by another run just now: open that one
        os.fchmod(fd, 0o644)  # whatever the umask (systemd UMask=0077): others lock it read-only
        return fd
    raise OSError(errno.EAGAIN, "created and removed again and again", path)


def prepare(config: Config) -> None:
    """Create the lock file in the daemon's runtime directory while we may (before the
    daemon drops privileges), so that the daemon, root and other users meet there."""
    try:
        os.close(open_lock_file(os.path.join(lock_dirs(config)[0], lock_name(config))))
    except OSError as exc:
        log.debug("full-sync lock not prepared: %s", exc)


def trusted_uids(config: Config) -> Set[int]:
    uids = {0, os.geteuid()}
    user = config.daemon.user
    if user:
        try:
            uids.add(int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid)
        except (KeyError, OverflowError):
            pass
    return uids


def holder_of(locked: os.stat_result) -> str:
    """Who holds an flock() on this file, from /proc/locks: "pid N, user U: command"."""
    pid = holder_pid(locked)
    if pid is None:
        return "holder unknown"
    text = f"pid {pid}"
    try:
        text += f", user {_user(os.stat(f'/proc/{pid}').st_uid)}"
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read(4096).replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return text
    return f"{text}: {command[:120]}" if command else text


def holder_pid(locked: os.stat_result) -> Optional[int]:
    """The pid holding an flock() on the file ``locked`` describes (None: none or unknown).
    Lines look like ``1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF``."""
    try:
        with open("/proc/locks", "rb") as table:
            lines = table.read(4 << 20).decode("ascii", "replace").splitlines()
    except OSError:
        return None
    wanted = (os.major(locked.st_dev), os.minor(locked.st_dev), locked.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue  # another kind of lock, or "->" (a waiter)
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                return int(fields[4])
        except ValueError:
            continue
    return None


def _listed(passed: List[Tuple[str, int, str]]) -> str:
    return ", ".join(f"{directory} ({why})" for directory, _, why in passed)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
