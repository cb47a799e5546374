"""Reading the config file and the secret files it names without ever hanging or filling
memory (docs/contract.md §7).

A FIFO, a device, ``/dev/zero`` or a 100 MB file is refused at once: the file's type and
size are checked with ``stat`` before it is opened (so a device is not even opened), again
with ``fstat`` on what was opened (it may have been swapped in between), it is opened with
``O_NONBLOCK`` (opening a FIFO for reading would otherwise wait for a writer), and at most
``limit + 1`` bytes are read. Symbolic links are followed: a secret linked from a secrets
directory is common; what is checked is the file at the end of the link.
"""

import os
import stat

#: The example config is about 5 KB; a megabyte is far beyond any real one.
CONFIG_MAX_BYTES = 1024 * 1024
#: A password (with its trailing newline); servers accept far less than this.
SECRET_MAX_BYTES = 4096
#: ldap.ca_file is read by OpenSSL, not here; a bundle of every public CA is about 200 KB.
CA_FILE_MAX_BYTES = 16 * 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
)


class Refused(ValueError):
    """The file is there but is not one to read: a sentence saying why (no path in it)."""


def kind_of(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not an ordinary file"


def check_regular(status: os.stat_result, limit: int) -> None:
    """Raise Refused unless ``status`` is a regular file of at most ``limit`` bytes."""
    if not stat.S_ISREG(status.st_mode):
        raise Refused(f"is not a regular file (it is {kind_of(status.st_mode)})")
    if status.st_size > limit:
        raise Refused(f"is {status.st_size} bytes; at most {limit} are accepted")


def read_regular_file(path: str, limit: int) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes.

    Raises Refused (a FIFO, a device, a directory, too large) or OSError (missing,
    unreadable: its ``strerror`` says which).
    """
    check_regular(os.stat(path), limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        check_regular(os.fstat(fd), limit)
        chunks = []
        size = 0
        while size <= limit:  # bounded: each pass reads at least one byte or ends the loop
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise Refused(f"grew beyond {limit} bytes while it was read")
    return b"".join(chunks)
