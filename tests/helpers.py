"""Small builders shared by the integration tests: maildirs, config files, CLI runs."""

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Dict, Iterable, Optional, Sequence, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

#: The values of ldap.reader: the library that reads the accounts.
READERS = ("ldap3", "python-ldap")
#: Runs a test once per reader (the ``reader`` fixture of conftest.py).
both_readers = pytest.mark.parametrize("reader", READERS, indirect=True)


def python_ldap_available() -> bool:
    """Is python-ldap (the extra ldapquota[fast], ldap.reader: python-ldap) importable?"""
    try:
        import ldap  # noqa: F401
    except ImportError:
        return False
    return True


def make_maildir(
    root: Path,
    address: str,
    *,
    maildirsize: Optional[str] = None,
    messages: Iterable[Tuple[str, int]] = (),
    folders: Dict[str, Iterable[Tuple[str, int]]] = None,
    template: str = "{domain}/{localpart}/Maildir",
) -> Path:
    """A maildir for ``address`` under ``root``: ``messages`` are (name, size) in ``cur/``,
    with real content of that size; ``maildirsize`` the exact file text, if any."""
    localpart, _, domain = address.rpartition("@")
    path = root / template.format(localpart=localpart, domain=domain, address=address)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for name, size in messages:
        (path / "cur" / name).write_bytes(b"x" * size)
    for folder, items in (folders or {}).items():
        for sub in ("cur", "new", "tmp"):
            (path / folder / sub).mkdir(parents=True, exist_ok=True)
        for name, size in items:
            (path / folder / "cur" / name).write_bytes(b"x" * size)
    if maildirsize is not None:
        (path / "maildirsize").write_text(maildirsize)
    return path


def maildirsize_text(limit: str, *lines: Tuple[int, int]) -> str:
    """A maildirsize file: header ``limit`` (e.g. ``1000S``) and usage lines."""
    return limit + "\n" + "".join(f"{size} {count}\n" for size, count in lines)


def config_dict(slapd, mail_root: Path, **sections) -> dict:
    """A config for the test slapd, bound as the ldapquota service account."""
    config = {
        "ldap": {
            "uri": slapd.uri,
            "bind_dn": slapd.ldapquota_dn,
            "bind_password_file": str(slapd.ldapquota_pw_file),
            "base_dn": slapd.people_dn,
            "filter": "(objectClass=inetOrgPerson)",
            "status_dn": slapd.ldapquota_dn,
        },
        "accounts": {"quota_attribute": "mailQuota"},
        "mailboxes": {"root": str(mail_root)},
        "policy": {"max_changes": "100%"},
        # Next to the mail root, so that the full-sync lock (ldapquota/synclock.py) lives in
        # the test's own directory rather than in the machine's /run/lock.
        "daemon": {"pidfile": str(Path(mail_root).parent / "ldapquota.pid")},
    }
    for section, values in sections.items():
        if values is None:
            config.pop(section, None)
        else:
            config.setdefault(section, {}).update(values)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m ldapquota ARGS`` in a child process, as an operator would run it."""
    environment = dict(os.environ)
    environment.pop("LDAPQUOTA_CONFIG", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ldapquota", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
    )


def run_on_terminal(argv: Sequence[str], stdout: Optional[IO[bytes]] = None, timeout: float = 120.0) -> str:
    """Run with stderr (and stdout, unless given) on a pseudo-terminal; return what the
    terminal received. A command that checks ``isatty()`` on stderr sees a terminal."""
    master, slave = pty.openpty()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else slave, stderr=slave,
                               cwd=str(REPO), close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal (EIO)
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML flow sequence ``&l8 [&l7 [... &l0 [lol x9], *l0 x8] ...], *l7 x8]``: a few
    hundred bytes that expand to width**levels (387 million) strings."""
    text = "&l0 [" + ", ".join(["lol"] * width) + "]"
    for level in range(1, levels):
        text = f"&l{level} [{text}" + f", *l{level - 1}" * (width - 1) + "]"
    return text
