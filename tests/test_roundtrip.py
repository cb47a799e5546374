"""Round trips: a real MTA/MDA writes ``maildirsize``, ``ldapquota --sync`` must agree.

- Exim: mail delivered through examples/exim/exim4.conf (``maildir_use_size_file``) into
  the maildir of an LDAP account; ``--sync`` then publishes limit − (the sum of Exim's
  maildirsize) as quotaFreeBytes, and once the mailbox is full, isOverQuota TRUE, which the
  same Exim then answers at RCPT time with 452: the whole loop.
- Dovecot: a private Dovecot (its own config, base_dir and state dir, no listeners) saves
  messages with ``doveadm save`` under ``quota = maildir`` and a 1 MiB rule, so Dovecot's
  quota plugin writes the file (header ``1048576S``); the account has no limit in LDAP,
  so ldapquota also takes the limit from Dovecot's header.

The oracle for usage is the MTA's own file, summed here line by line, and for Dovecot
also ``doveadm quota get``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from helpers import REPO, config_dict, run_cli, write_config
from servers.exim import give_to, rcpt, secret_for_exim, send

from ldapquota.config import load_config
from ldapquota.exim import render_exim_config, replace_blocks, split_blocks

pytestmark = pytest.mark.integration

DOMAIN = "example.org"
EXAMPLE = REPO / "examples" / "exim" / "exim4.conf"


def maildirsize_usage(path: Path) -> Tuple[str, int, int]:
    """(header, bytes, messages) of a maildirsize file: the sum of its usage lines."""
    lines = path.read_text().splitlines()
    total_bytes = total_count = 0
    for line in lines[1:]:
        if line.strip():
            size, count = line.split()
            total_bytes += int(size)
            total_count += int(count)
    return lines[0], total_bytes, total_count


def flags(ldap, address: str) -> Tuple[str, int | None]:
    """(isOverQuota, quotaFreeBytes) as slapd has them; an absent flag reads FALSE."""
    entries = ldap.ldapsearch(ldap.people_dn, f"(mail={address})", ["isOverQuota", "quotaFreeBytes"])
    (attrs,) = entries.values()
    lowered = {k.lower(): v[0] for k, v in attrs.items()}
    free = lowered.get("quotafreebytes")
    return lowered.get("isoverquota", "FALSE"), int(free) if free is not None else None


def sync(config_path: Path) -> None:
    result = run_cli(["-c", str(config_path), "--sync", "--force"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def mail_root() -> Iterator[Path]:
    """A mail root the MTA's delivery user (mail) owns, outside pytest's 0700 tmp tree."""
    directory = Path(tempfile.mkdtemp(prefix="ldapquota-roundtrip-"))
    directory.chmod(0o755)
    root = directory / "vmail"
    root.mkdir()
    give_to(root, "mail", 0o755)
    yield root
    shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- Exim


def test_exim_maildirsize_and_sync_agree_and_close_the_loop(ldap, exim_factory, mail_root, tmp_path):
    address = f"exim-rt@{DOMAIN}"
    limit = 60_000
    ldap.add_account(address, quota=limit)
    aliases = mail_root.parent / "aliases"
    aliases.write_text("")
    aliases.chmod(0o644)
    secret = secret_for_exim(ldap.exim_pw)
    config_path = write_config(
        tmp_path / "ldapquota.yaml",
        config_dict(ldap, mail_root, mta={"bind_dn": ldap.exim_dn, "bind_password_file": str(secret)}),
    )
    exim_conf = replace_blocks(EXAMPLE.read_text(), split_blocks(render_exim_config(load_config(str(config_path)))))
    exim = exim_factory(
        exim_conf,
        {
            "MAIL_DOMAINS": DOMAIN,
            "LDAP_SERVER": ldap.uri,
            "LDAP_BASE": ldap.people_dn,
            "LDAP_BIND": "",
            "ALIAS_FILE": str(aliases),
            "VMAIL_ROOT": str(mail_root),
            "VMAIL_USER": "mail",
        },
        name="exim-roundtrip",
    )

    def deliver(count: int, size: int) -> None:
        for i in range(count):
            body = f"Subject: round trip {i}\r\n\r\n".encode() + b"y" * size + b"\r\n"
            assert send(exim, [address], body) == {}
        result = exim.deliver()
        assert exim.queue_count() == 0, result.stdout + result.stderr + exim.logs()

    deliver(3, 10_000)
    maildir = mail_root / DOMAIN / "exim-rt" / "Maildir"
    header, used, messages = maildirsize_usage(maildir / "maildirsize")
    assert messages == 3 and 30_000 < used < limit, (header, used, messages)
    assert len(list((maildir / "new").iterdir())) == 3
    sync(config_path)
    assert flags(ldap, address) == ("FALSE", limit - used)

    deliver(3, 10_000)  # now past the limit: Exim itself has no quota here, ldapquota decides
    header, used, messages = maildirsize_usage(maildir / "maildirsize")
    assert messages == 6 and used >= limit
    sync(config_path)
    assert flags(ldap, address) == ("TRUE", 0)
    code, text = rcpt(exim, address)
    assert (code, text) == (452, "4.2.2 Mailbox full"), exim.logs()


# --------------------------------------------------------------------------- Dovecot


def dovecot_available() -> bool:
    return all(shutil.which(tool, path="/usr/sbin:/usr/bin") for tool in ("dovecot", "doveadm"))


class PrivateDovecot:
    """dovecot -F with a private config: no listeners, its own base_dir; stopped by PID."""

    def __init__(self, workdir: Path, mail_root: Path, users: Dict[str, int]) -> None:
        self.dir = workdir
        (workdir / "run").mkdir()
        (workdir / "state").mkdir()
        mail = __import__("pwd").getpwnam("mail")
        passwd = workdir / "users"
        lines = []
        for address, _ in users.items():
            local, _, domain = address.partition("@")
            home = mail_root / domain / local
            lines.append(f"{address}::{mail.pw_uid}:{mail.pw_gid}::{home}::userdb_mail=maildir:{home}/Maildir")
        passwd.write_text("\n".join(lines) + "\n")
        self.conf = workdir / "dovecot.conf"
        self.conf.write_text(
            f"""protocols =
base_dir = {workdir / 'run'}
state_dir = {workdir / 'state'}
log_path = {workdir / 'dovecot.log'}
ssl = no
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
default_internal_user = {os.environ.get('DOVECOT_INTERNAL_USER', 'dovecot')}
default_login_user = {os.environ.get('DOVECOT_LOGIN_USER', 'dovenull')}
mail_plugins = quota
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=1M
}}
"""
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (self.dir / "run" / "auth-userdb").exists():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"private dovecot did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def doveadm(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["doveadm", "-c", str(self.conf), *args], input=input, capture_output=True, timeout=60
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr, self.log())
        return result

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def test_dovecot_maildirsize_and_sync_agree(ldap, mail_root, tmp_path):
    if not dovecot_available():
        message = "dovecot-core is not installed (apt-get install dovecot-core)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    address = f"dove-rt@{DOMAIN}"
    ldap.add_account(address)  # no limit in LDAP: ldapquota reads Dovecot's header
    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-dovecot-"))
    workdir.chmod(0o755)  # Dovecot's auth process (user dovecot) reads the users file
    dovecot = PrivateDovecot(workdir, mail_root, {address: 1})
    dovecot.start()
    try:
        for i in range(4):
            message = f"From: a@b.test\nSubject: dovecot {i}\n\n".encode() + b"z" * (150_000 + i) + b"\n"
            dovecot.doveadm("save", "-u", address, "-m", "INBOX", input=message)
        maildir = mail_root / DOMAIN / "dove-rt" / "Maildir"
        dovecot.doveadm("quota", "recalc", "-u", address)
        header, used, messages = maildirsize_usage(maildir / "maildirsize")
        assert header == "1048576S" and messages == 4, (header, used, messages)
        reported = dovecot.doveadm("-f", "tab", "quota", "get", "-u", address).stdout.decode()
        storage = next(line.split("\t") for line in reported.splitlines() if "\tSTORAGE\t" in line)
        assert abs(int(storage[2]) - used / 1024) < 1, reported  # Dovecot's own view, in KiB (rounded up)
        # Deliveries after the recount append lines, as they do in real life.
        dovecot.doveadm("save", "-u", address, "-m", "INBOX", input=b"Subject: one more\n\n" + b"w" * 5000 + b"\n")
        header, used, messages = maildirsize_usage(maildir / "maildirsize")
        assert messages == 5 and len((maildir / "maildirsize").read_text().splitlines()) == 3
    finally:
        dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    config_path = write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root, accounts={"quota_attribute": None}))
    sync(config_path)
    assert flags(ldap, address) == ("FALSE", 1_048_576 - used)
