"""Measuring one maildir on disk (the filesystem edge; read-only, never writes a store).

``measure()`` opens the maildir once, checks on the opened directory that it really lies
under ``mailboxes.root`` (so a symlink cannot lead us out), then reads ``maildirsize``
when the Maildir++ rules let us trust it and otherwise walks ``cur/`` and ``new/`` of the
maildir and its ``.Folders``, taking sizes from ``,S=`` in file names and falling back to
``lstat``. Everything below the maildir is opened relative to its descriptor with
O_NOFOLLOW: no MDA creates symlinks inside a maildir, and following one could count files
outside the root.
"""

import ctypes
import errno
import os
import platform
import re
import stat
import sys
import time
from typing import Callable, Iterator, Optional, Tuple

from ldapquota.errors import MeasureError
from ldapquota.maildirsize import MAX_FILE_SIZE, distrust_over_verdict, parse_maildirsize
from ldapquota.paths import is_under, lexically_under_root
from ldapquota.quota import UNLIMITED, Limit, Usage
from ldapquota.sources.base import Measurement

# ,S=<size> ends at ':' (flags), ',' (another tag such as Dovecot's ,W=) or the name's end.
_SIZE_IN_NAME = re.compile(r",S=(\d+)(?=[:,]|$)")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
_NOFOLLOW_DIR_FLAGS = _DIR_FLAGS | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO planted as maildirsize must not hang the scan.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


def _make_openat2() -> Optional[Callable[[int, str, int], int]]:
    """openat2(2) with RESOLVE_BENEATH through libc's syscall(), or None where unavailable."""
    if sys.platform != "linux" or platform.machine() not in _SYS_OPENAT2:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    number = _SYS_OPENAT2[platform.machine()]
    size = ctypes.sizeof(OpenHow)

    def openat2(dir_fd: int, path: str, flags: int) -> int:
        how = OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        fd = syscall(number, dir_fd, os.fsencode(path), ctypes.byref(how), size)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return int(fd)

    # Kernels before 5.6 (and some sandboxes) answer ENOSYS: use the portable way then.
    probe_fd = os.open("/", _DIR_FLAGS)
    try:
        os.close(openat2(probe_fd, ".", _DIR_FLAGS))
    except OSError:
        return None
    finally:
        os.close(probe_fd)
    return openat2


# openat2 is syscall 437 on every Linux architecture that has it (the unified numbering).
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "ppc64le": 437, "s390x": 437, "riscv64": 437}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_openat2 = _make_openat2()


def is_trash(folder: str) -> bool:
    """``.Trash`` and its sub-folders (``.Trash.old``), as Exim's suggested regex excludes."""
    return folder == ".Trash" or folder.startswith(".Trash.")


class MailStore:
    """``mailboxes.root``, held open, with every maildir opened beneath it.

    On Linux ≥ 5.6 the kernel enforces "stays under the root" (openat2 with
    RESOLVE_BENEATH): a path that leads out, through ``..`` or a symlink, fails with EXDEV,
    and no rename between a check and an open can fool it. Elsewhere the opened directory's
    real path is checked instead. Symlinks that stay inside the root are allowed.
    """

    def __init__(self, root: str):
        self.root_real = os.path.realpath(root)
        self._root_fd: Optional[int] = None

    def close(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def _root(self) -> int:
        if self._root_fd is None:
            try:
                self._root_fd = os.open(self.root_real, _DIR_FLAGS)
            except OSError as exc:
                raise MeasureError(f"cannot open mailboxes.root {self.root_real}: {exc.strerror}") from None
        return self._root_fd

    def _open_beneath(self, relative: str, flags: int, shown: str) -> int:
        """An fd for ``relative`` under the root; raises OSError (EXDEV: it leads outside)."""
        if _openat2 is not None:
            try:
                return _openat2(self._root(), relative, flags)
            except OSError as exc:
                # EXDEV: the path leads out, or crosses an absolute symlink (which
                # RESOLVE_BENEATH refuses even when it points back inside the root):
                # resolve it the portable way and judge where it really ends.
                if exc.errno != errno.EXDEV:
                    raise
        fd = os.open(os.path.join(self.root_real, relative), flags)
        real = _real_path(fd, shown)
        if not is_under(self.root_real, real):
            os.close(fd)
            raise OSError(errno.EXDEV, f"resolves to {real}")
        return fd

    def measure(
        self,
        mailbox: str,
        configured_limit: Optional[Limit],
        says_over: Callable[[Usage, Limit], bool],
        count_trash: bool = True,
        now: Optional[float] = None,
    ) -> Measurement:
        """Usage of the maildir ``mailbox`` (relative to the root, or absolute under it).

        ``configured_limit`` is the limit from LDAP or the default, None if neither gives
        one (the ``maildirsize`` header is then the limit). ``says_over(usage, limit)`` is
        the policy's over test, used for Courier's "distrust an over verdict" rule.
        Raises MeasureError when the mailbox cannot be measured or lies outside the root,
        and when the limit can only come from a ``maildirsize`` that is there but whose
        header cannot be read (not a regular file, garbage: §5); a missing file has no header.
        """
        try:
            path = lexically_under_root(self.root_real, mailbox)
        except ValueError as exc:
            raise MeasureError(str(exc)) from None
        relative = path[len(self.root_real) :].lstrip("/")
        # The common case costs one open: maildirsize straight from the root's descriptor.
        data, mtime, unusable = self._read_maildirsize(relative, path)
        if configured_limit is None and unusable is not None:
            raise _unknown_limit(path, unusable)
        if data is not None:
            parsed = parse_maildirsize(data)
            if configured_limit is None and parsed.header_limit is None:
                raise _unknown_limit(path, _header_problem(data))
            limit = configured_limit or parsed.header_limit or UNLIMITED
            why: Optional[str] = parsed.problem
            if parsed.usage is not None:
                if not says_over(parsed.usage, limit):
                    return Measurement(parsed.usage, limit, "maildirsize", path)
                why = distrust_over_verdict(parsed, (time.time() if now is None else now) - mtime)
                if why is None:
                    return Measurement(parsed.usage, limit, "maildirsize", path)
        else:
            limit = configured_limit or UNLIMITED
            why = "no maildirsize" if unusable is None else f"maildirsize is {unusable}"
        try:
            fd = self._open_beneath(relative, _DIR_FLAGS, path)
        except FileNotFoundError:
            return Measurement(Usage(0, 0), limit, "no maildir", path, missing=True)
        except OSError as exc:
            raise _open_error(exc, path) from None
        try:
            return Measurement(_walk_fd(fd, path, count_trash), limit, f"walk ({why})", path, recounted=True)
        finally:
            os.close(fd)

    def _read_maildirsize(self, relative: str, path: str) -> Tuple[Optional[bytes], float, Optional[str]]:
        """(content, mtime, None) of the regular file; (None, 0, None) when there is none;
        (None, 0, what it is) when something else stands there (a FIFO, a directory...)."""
        try:
            fd = self._open_beneath(relative + "/maildirsize", _FILE_FLAGS, path)
        except (FileNotFoundError, NotADirectoryError):
            return None, 0.0, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink is not a maildirsize
                return None, 0.0, "a symbolic link"
            raise _open_error(exc, f"{path}/maildirsize") from None
        return _read_open_file(fd, f"{path}/maildirsize")


def measure(
    root_real: str,
    mailbox: str,
    configured_limit: Optional[Limit],
    says_over: Callable[[Usage, Limit], bool],
    count_trash: bool = True,
    now: Optional[float] = None,
) -> Measurement:
    """One-off :meth:`MailStore.measure` (opens and closes the root)."""
    store = MailStore(root_real)
    try:
        return store.measure(mailbox, configured_limit, says_over, count_trash, now)
    finally:
        store.close()


def _open_error(exc: OSError, path: str) -> MeasureError:
    if exc.errno == errno.EXDEV:
        return MeasureError(f"{path} resolves outside mailboxes.root (through a symlink or '..')")
    if exc.errno == errno.ENOTDIR:
        return MeasureError(f"{path} is not a directory")
    return MeasureError(f"cannot open {path}: {exc.strerror}")


def _real_path(fd: int, path: str) -> str:
    """Where the opened file really is (after every symlink on the way)."""
    if _HAVE_PROC_FD:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return os.path.realpath(path)


def _unknown_limit(path: str, why: str) -> MeasureError:
    """docs/contract.md §5: with no quota attribute and no default, the maildirsize header
    is the only limit there is; a header that is there but cannot be read is an unknown
    limit, not "unlimited" (which would clear the flag)."""
    return MeasureError(
        f"{path}/maildirsize is there but its quota line cannot be read ({why}); with no quota "
        "attribute and no accounts.default_quota it is the only limit, and an unknown limit is not 'unlimited'"
    )


def _header_problem(data: bytes) -> str:
    if not data:
        return "the file is empty"
    if b"\0" in data.partition(b"\n")[0]:
        return "its first line holds NUL bytes"
    return "its first line is not a quota definition"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_open_file(fd: int, path: str) -> Tuple[Optional[bytes], float, Optional[str]]:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, 0.0, _file_kind(info.st_mode)
        # One byte past the limit tells "exactly 5120" from "more".
        return os.read(fd, MAX_FILE_SIZE + 1), info.st_mtime, None
    except OSError as exc:
        raise MeasureError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def walk(maildir: str, count_trash: bool = True) -> Usage:
    """Recount the maildir at ``maildir`` the way a Maildir++ recalculation does."""
    try:
        fd = os.open(maildir, _DIR_FLAGS)
    except OSError as exc:
        raise MeasureError(f"cannot open {maildir}: {exc.strerror}") from None
    try:
        return _walk_fd(fd, maildir, count_trash)
    finally:
        os.close(fd)


def _walk_fd(fd: int, path: str, count_trash: bool) -> Usage:
    """``new/`` and ``cur/`` of the maildir and of every ``.Folder`` (``tmp/`` never counts);
    names starting with ``.`` are not messages. A file that vanishes while we count is
    skipped. A directory we may not read raises MeasureError: a partial count could clear
    a flag that should stay."""
    total_bytes = total_messages = 0
    for folder in _folders(fd, path, count_trash):
        folder_fd = fd if folder == "" else _open_subdir(fd, folder, path)
        if folder_fd is None:
            continue
        try:
            for sub in ("new", "cur"):
                size, count = _sum_directory(folder_fd, sub, os.path.join(path, folder, sub))
                total_bytes += size
                total_messages += count
        finally:
            if folder_fd != fd:
                os.close(folder_fd)
    return Usage(total_bytes, total_messages)


def _folders(fd: int, path: str, count_trash: bool) -> Iterator[str]:
    yield ""  # the INBOX: the maildir itself
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries if entry.name.startswith(".") and _is_real_dir(entry)]
    except OSError as exc:
        raise MeasureError(f"cannot list {path}: {exc.strerror}") from None
    for name in sorted(names):
        if name in (".", "..") or (not count_trash and is_trash(name)):
            continue
        yield name


def _is_real_dir(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _open_subdir(dir_fd: int, name: str, parent: str) -> Optional[int]:
    try:
        return os.open(name, _NOFOLLOW_DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None  # vanished, or not a directory (a symlink: not followed)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise MeasureError(f"cannot open {os.path.join(parent, name)}: {exc.strerror}") from None


def _sum_directory(parent_fd: int, name: str, path: str) -> Tuple[int, int]:
    sub_fd = _open_subdir(parent_fd, name, os.path.dirname(path))
    if sub_fd is None:
        return 0, 0  # a maildir or folder without cur/ or new/ holds nothing there
    total = count = 0
    try:
        with os.scandir(sub_fd) as entries:
            for entry in entries:
                entry_name = entry.name
                if entry_name.startswith("."):
                    continue
                match = _SIZE_IN_NAME.search(entry_name)
                if match and not _is_real_dir(entry):
                    total += int(match.group(1))
                    count += 1
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # expunged while we counted
                except OSError as exc:
                    raise MeasureError(f"cannot stat {os.path.join(path, entry_name)}: {exc.strerror}") from None
                if stat.S_ISDIR(info.st_mode):
                    continue
                total += info.st_size
                count += 1
    except OSError as exc:
        raise MeasureError(f"cannot list {path}: {exc.strerror}") from None
    finally:
        os.close(sub_fd)
    return total, count
