"""A private, real Dovecot (2.3) for the tests, wired to ldapquota by the shipped examples.

One :class:`Dovecot` is ``dovecot -F -c WORKDIR/dovecot.conf``: its own base_dir (sockets,
LMTP on a unix socket), state_dir and log, ``protocols = lmtp`` and, when asked, the doveadm
HTTP API on a free loopback port. Its userdb and passdb are LDAP, against the test slapd,
bound as ``cn=dovecot`` with the read access of **examples/dovecot/slapd-acl-dovecot.ldif**.
The files under examples/dovecot/ are loaded **as shipped**, with only the site-specific
values replaced (each replacement must find its text, so the examples cannot drift away
from what is tested):

- ``dovecot-ldap.conf.ext``: LDAP URI, password, the mail user (``vmail`` → ``mail``);
- ``90-ldapquota.conf``: the hook's path and user, the quota backend when asked
  (``count`` → ``maildir``);
- ``ldapquota-hook``: the ldapquota command (this checkout's) and its config;
- ``ldapquota.yaml``: LDAP, and ``doveadm -c WORKDIR/dovecot.conf``.

The hook runs as the mail user where that user may run this checkout's Python, else as
root (a checkout under /root, as here: the mail user cannot enter it).

Mail arrives by LMTP (:meth:`deliver`, smtplib.LMTP on the socket) and leaves with
``doveadm expunge`` (:meth:`expunge`); :meth:`quota` asks doveadm, the oracle for usage.
Stopped by the PID we started (SIGTERM, then SIGKILL); Debian's own dovecot service is
neither used nor touched.
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from servers.slapd import REPO_ROOT, Slapd, free_port, ssha

EXAMPLES = REPO_ROOT / "examples" / "dovecot"
DOVECOT_DN = "cn=dovecot,ou=services,dc=example,dc=org"
MAIL_USER = os.environ.get("DOVECOT_MAIL_USER", "mail")
#: Mail locations per format (%d/%n: domain and local part of the user name).
LOCATIONS = {
    "maildir": "maildir:{root}/%d/%n/Maildir",
    "sdbox": "sdbox:{root}/%d/%n/sdbox",
    "mdbox": "mdbox:{root}/%d/%n/mdbox",
}


class DovecotError(RuntimeError):
    pass


def dovecot_available() -> Tuple[bool, str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    for tool in ("dovecot", "doveadm"):
        if shutil.which(tool, path=search) is None:
            return False, "dovecot-core not installed (apt-get install dovecot-core dovecot-ldap dovecot-lmtpd)"
    for module, package in (("/usr/lib/dovecot/modules/auth/libauthdb_ldap.so", "dovecot-ldap"),
                            ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd")):
        if not os.path.exists(module):
            return False, f"{package} not installed (apt-get install {package})"
    if os.geteuid() != 0:
        return False, "a private Dovecot with a mail user needs root"
    return True, ""


def substitute(text: str, replacements: Sequence[Tuple[str, str]], name: str) -> str:
    """Replace site-specific values of a shipped example; each must be found."""
    for old, new in replacements:
        if old not in text:
            raise DovecotError(f"examples/dovecot/{name} no longer contains {old!r}: update tests/servers/dovecot.py")
        text = text.replace(old, new)
    return text


def grant_dovecot_read(slapd: Slapd) -> Path:
    """The cn=dovecot identity and the shipped ACL for it (once per slapd)."""
    password_file = slapd.workdir / "dovecot.secret"
    if password_file.exists():
        return password_file
    password = secrets.token_urlsafe(18)
    slapd.ldapadd(
        f"dn: {DOVECOT_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
        f"cn: dovecot\nuserPassword: {ssha(password)}\n"
    )
    slapd.ldapmodify((EXAMPLES / "slapd-acl-dovecot.ldif").read_text(), external=True)
    password_file.write_text(password)
    return password_file


def hook_user() -> str:
    """The mail user when it can run this checkout's Python, else root."""
    try:
        done = subprocess.run(["runuser", "-u", MAIL_USER, "--", sys.executable, "-c", "import ldapquota"],
                              capture_output=True, timeout=30, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return "root"
    return MAIL_USER if done.returncode == 0 else "root"


class Dovecot:
    """One private Dovecot; see the module docstring."""

    start_timeout = 15.0
    stop_timeout = 10.0

    def __init__(self, slapd: Slapd, *, mail_format: str = "maildir", backend: str = "count", http: bool = False,
                 name: str = "dovecot", parent: str = "/tmp") -> None:
        self.slapd = slapd
        self.mail_format = mail_format
        self.backend = backend
        # Not under pytest's 0700 tree: Dovecot's processes and the mail user enter it.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"lq-{name}-", dir=parent))
        self.workdir.chmod(0o755)  # Dovecot's processes and the mail user read parts of it
        self.run_dir = self.workdir / "run"
        self.mail_root = self.workdir / "vmail"
        self.log_file = self.workdir / "dovecot.log"
        self.conf = self.workdir / "dovecot.conf"
        self.lmtp_socket = self.run_dir / "lmtp"
        self.ldapquota_config = self.workdir / "ldapquota.yaml"
        self.hook = self.workdir / "ldapquota-hook"
        self.mail = pwd.getpwnam(MAIL_USER)
        self.hook_user = hook_user()
        self.http_port: Optional[int] = free_port() if http else None
        self.api_key = secrets.token_urlsafe(18) if http else None
        self._proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def http_url(self) -> str:
        assert self.http_port is not None
        return f"http://127.0.0.1:{self.http_port}/doveadm/v1"

    # -- configuration --------------------------------------------------------------

    def _write_files(self) -> None:
        for sub in ("run", "state"):
            (self.workdir / sub).mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, self.mail.pw_uid, self.mail.pw_gid)
        password = grant_dovecot_read(self.slapd).read_text()
        ldap_conf = self.workdir / "dovecot-ldap.conf.ext"
        ldap_conf.write_text(substitute((EXAMPLES / "dovecot-ldap.conf.ext").read_text(), [
            ("uris = ldap://127.0.0.1\n", f"uris = {self.slapd.uri}\n"),
            ("dnpass = secret\n", f"dnpass = {password}\n"),
            ("=uid=vmail, =gid=vmail", f"=uid={MAIL_USER}, =gid={self.mail.pw_gid}"),
        ], "dovecot-ldap.conf.ext"))
        ldap_conf.chmod(0o600)
        quota = [
            ("executable = script /usr/local/bin/ldapquota-hook\n  user = vmail\n",
             f"executable = script {self.hook}\n  user = {self.hook_user}\n"),
            ("unix_listener quota-warning {\n    user = vmail\n", f"unix_listener quota-warning {{\n    user = {MAIL_USER}\n"),
        ]
        if self.backend == "maildir":
            quota.append(("  quota = count:User quota\n", "  quota = maildir:User quota\n"))
        (self.workdir / "90-ldapquota.conf").write_text(
            substitute((EXAMPLES / "90-ldapquota.conf").read_text(), quota, "90-ldapquota.conf"))
        self._write_hook()
        self.conf.write_text(self._harness(ldap_conf))

    def _write_hook(self) -> None:
        command = Path(sys.executable).with_name("ldapquota")
        self.hook.write_text(substitute((EXAMPLES / "ldapquota-hook").read_text(), [
            ("LDAPQUOTA=/usr/bin/ldapquota\n", f"LDAPQUOTA={command}\n"),
            ("CONFIG=/etc/ldapquota/ldapquota.yaml\n", f"CONFIG={self.ldapquota_config}\n"),
        ], "ldapquota-hook"))
        self.hook.chmod(0o755)
        secret = self.workdir / "bind.secret"
        secret.write_text(self.slapd.ldapquota_pw)
        self.write_ldapquota_config(self.ldapquota_config, secret)
        owner = pwd.getpwnam(self.hook_user)
        for path in (secret, self.ldapquota_config):
            os.chown(path, owner.pw_uid, owner.pw_gid)
            path.chmod(0o600)

    def write_ldapquota_config(self, path: Path, secret: Path, extra: Sequence[Tuple[str, str]] = ()) -> Path:
        """examples/dovecot/ldapquota.yaml for this Dovecot and slapd; ``extra`` replacements
        come on top (one for a line this one replaces too wins)."""
        replacements = {
            "  uri: ldap://127.0.0.1:389\n": f"  uri: {self.slapd.uri}\n",
            "  bind_password_file: /etc/ldapquota/bind.secret\n": f"  bind_password_file: {secret}\n",
            "  doveadm: doveadm\n": f"  doveadm: doveadm -c {self.conf}\n",
            "  target: syslog\n": "  target: stderr\n",
            "  max_changes: 10%\n": "  max_changes: 100%\n",
            "  bind_password_file: /etc/ldapquota/exim.secret\n": f"  bind_password_file: {self.slapd.exim_pw_file}\n",
        }
        replacements.update(extra)
        path.write_text(substitute((EXAMPLES / "ldapquota.yaml").read_text(), list(replacements.items()), "ldapquota.yaml"))
        return path

    def _harness(self, ldap_conf: Path) -> str:
        """The test's own dovecot.conf around the shipped 90-ldapquota.conf."""
        lines = [
            "protocols = lmtp",
            "listen = 127.0.0.1",
            f"base_dir = {self.run_dir}",
            f"state_dir = {self.workdir / 'state'}",
            f"log_path = {self.log_file}",
            "ssl = no",
            f"first_valid_uid = {self.mail.pw_uid}",
            f"first_valid_gid = {self.mail.pw_gid}",
            f"mail_location = {LOCATIONS[self.mail_format].format(root=self.mail_root)}",
            f"default_internal_user = {os.environ.get('DOVECOT_INTERNAL_USER', 'dovecot')}",
            f"default_login_user = {os.environ.get('DOVECOT_LOGIN_USER', 'dovenull')}",
            f"passdb {{\n  driver = ldap\n  args = {ldap_conf}\n}}",
            f"userdb {{\n  driver = ldap\n  args = {ldap_conf}\n}}",
            "service lmtp {\n  unix_listener lmtp {\n    mode = 0666\n  }\n}",
            # Dovecot refuses user names outside [a-zA-Z0-9.-_@] by default; the tests use
            # names full of shell and HTTP metacharacters to show they travel safely.
            "auth_username_chars =",
        ]
        if self.http_port is not None:
            lines.append(f"doveadm_api_key = {self.api_key}")
            lines.append("service doveadm {\n  inet_listener http {\n"
                         f"    address = 127.0.0.1\n    port = {self.http_port}\n  }}\n}}")
        lines.append(f"!include {self.workdir / '90-ldapquota.conf'}")
        return "\n".join(lines) + "\n"

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Dovecot:
        self._write_files()
        with open(self.workdir / "dovecot.stdout", "ab") as out:
            self._proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self.lmtp_socket.exists() and (self.run_dir / "auth-userdb").exists() and self._http_up():
                return self
            time.sleep(0.05)
        self.stop()
        raise DovecotError(f"private Dovecot did not start:\n{self.logs()}")

    def _http_up(self) -> bool:
        if self.http_port is None:
            return True
        try:
            socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        parts = []
        for path in (self.log_file, self.workdir / "dovecot.stdout"):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    # -- mail in, mail out, and the oracle --------------------------------------------

    def deliver(self, address: str, size: int, subject: str = "test") -> int:
        """One message of about ``size`` bytes to ``address`` by LMTP; Dovecot's reply code."""
        body = f"From: sender@example.net\r\nTo: {address}\r\nSubject: {subject}\r\n\r\n".encode()
        body += (b"x" * 76 + b"\r\n") * max(0, size // 78)
        with smtplib.LMTP(str(self.lmtp_socket), timeout=30) as client:
            try:
                refused = client.sendmail("sender@example.net", [address], body)
            except smtplib.SMTPRecipientsRefused as exc:
                return exc.recipients[address][0]
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code
        return refused[address][0] if address in refused else 250

    def doveadm(self, *args: str, check: bool = True, user: Optional[str] = None,
                stdin: str = "") -> subprocess.CompletedProcess[str]:
        argv = ["doveadm", "-c", str(self.conf), *args]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, input=stdin)
        if check and done.returncode != 0:
            raise DovecotError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}\n{self.logs()}")
        return done

    def expunge(self, address: str, *query: str) -> None:
        # -F -: the name taken literally (-u reads * and ? as wildcards)
        self.doveadm("expunge", "-F", "-", "mailbox", "INBOX", *(query or ("all",)), stdin=address + "\n")

    def quota(self, address: str) -> Dict[str, Tuple[int, Optional[int]]]:
        """doveadm's own answer: {"STORAGE": (KiB, limit KiB), "MESSAGE": (n, limit)}."""
        out = self.doveadm("-f", "tab", "-h", "quota", "get", "-F", "-", stdin=address + "\n").stdout
        report: Dict[str, Tuple[int, Optional[int]]] = {}
        for line in out.splitlines():
            _user, _root, kind, value, limit, _percent = line.split("\t")
            report[kind] = (int(value), None if limit == "-" else int(limit))
        return report

    def hook_errors(self) -> str:
        """What the hook (or ldapquota in it) said in Dovecot's log."""
        return "\n".join(line for line in self.logs().splitlines() if "quota-warning" in line)
