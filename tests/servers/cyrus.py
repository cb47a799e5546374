"""A private, real Cyrus IMAP (Debian's cyrus-imapd 3.6) for the tests.

One :class:`Cyrus` is one ``master`` with its own work directory: imapd.conf, cyrus.conf,
``configdirectory``, the mail partition and the sockets, none of them the system's
(/etc/imapd.conf and /var/lib/cyrus are never touched; a system Cyrus that the package
started is left alone). It is started as::

    master -C WORKDIR/imapd.conf -M WORKDIR/cyrus.conf -p WORKDIR/run/master.pid -L WORKDIR/master.log

which stays in the foreground (no ``-d``), so the PID we hold is the master's; SIGTERM to
it stops its services too (master(8)). Every service line carries ``-C`` itself: master
does not hand its own down (docs/maildir-and-mta-facts.md §9). Started as root, master
switches to the ``cyrus`` user, who owns the work directory.

Services on loopback: IMAP and LMTP (``lmtpd -a``: pre-authenticated) on free ports, and
LMTP on a unix socket (``lmtp_socket``, the service line of examples/cyrus/cyrus.conf) for
Exim's lmtp transport. Logins: the admin is
``cyrus``; ``sasl_pwcheck_method: alwaystrue`` accepts any password (tests only).

Naming schemes (docs/contract.md §7 ``cyrus.quota_root``): ``unixhierarchysep`` off gives
roots ``user.jane``, on ``user/jane``; ``virtdomains: userid`` adds ``@domain``.

Event notifications: the lines of examples/cyrus/imapd.conf, with ``notifysocket`` set to
``notify_socket``, where ldapquota's daemon listens (``events=False`` leaves out
``event_notifier`` and ``event_groups``).

Mailboxes are created and their quotas set over IMAP as the admin; mail is delivered
over LMTP and removed over IMAP as the user (STORE \\Deleted, EXPUNGE). The oracle for
what Cyrus counts is its own report (:meth:`Cyrus.report`), read here with plain json.
"""

from __future__ import annotations

import atexit
import contextlib
import imaplib
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

CYRUS_BIN = Path(os.environ.get("CYRUS_BIN", "/usr/lib/cyrus/bin"))
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The files users get: the notification lines of imapd.conf, the LMTP service of cyrus.conf.
IMAPD_EXAMPLE = REPO_ROOT / "examples" / "cyrus" / "imapd.conf"
CYRUS_CONF_EXAMPLE = REPO_ROOT / "examples" / "cyrus" / "cyrus.conf"
CYRUS_USER = os.environ.get("CYRUS_USER", "cyrus")
QUOTA_COMMAND = str(CYRUS_BIN / "quota")
ADMIN = "cyrus"


class CyrusError(RuntimeError):
    """Cyrus could not be started, or refused what a test asked; the message says why."""


def cyrus_available() -> Tuple[bool, str]:
    for program in ("master", "imapd", "lmtpd", "quota", "ctl_cyrusdb"):
        if not os.access(CYRUS_BIN / program, os.X_OK):
            return False, f"{CYRUS_BIN / program} missing (apt-get install cyrus-imapd)"
    if os.geteuid() != 0:
        return False, "a private Cyrus master runs as root (it switches to the cyrus user)"
    try:
        pwd.getpwnam(CYRUS_USER)
    except KeyError:
        return False, f"the user {CYRUS_USER} does not exist"
    return True, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def message(size: int, subject: str = "test") -> bytes:
    """An RFC 5322 message of ``size`` bytes (CRLF line ends). Cyrus stores a little more:
    lmtpd adds Return-Path and Received."""
    head = f"From: sender@client.test\r\nSubject: {subject}\r\n\r\n".encode()
    left = size - len(head)
    lines = []
    while left > 2:
        width = min(76, left - 2)
        lines.append(b"x" * width + b"\r\n")
        left -= width + 2
    return head + b"".join(lines) + b"x" * max(0, left)


class Cyrus:
    start_timeout = 20.0
    stop_timeout = 10.0

    def __init__(self, name: str = "cyrus", *, unixhierarchysep: bool = False, virtdomains: bool = False,
                 events: bool = True, options: Optional[Dict[str, str]] = None, base: Optional[Path] = None) -> None:
        self.name = name
        self.options = dict(options or {})  # more imapd.conf lines (the benchmark's)
        self.unixhierarchysep = unixhierarchysep
        self.virtdomains = virtdomains
        self.events = events
        # base: where the work directory goes (the benchmark's /dev/shm: Cyrus fsyncs a lot)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ldapquota-{name}-", dir=base))
        os.chmod(self.workdir, 0o755)
        entry = pwd.getpwnam(CYRUS_USER)
        for sub in ("conf", "part", "run"):
            (self.workdir / sub).mkdir(mode=0o750)
        for path in [self.workdir, *(self.workdir / sub for sub in ("conf", "part", "run"))]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.workdir / "run", 0o755)  # the LMTP socket is reached through it
        self.imapd_conf = self.workdir / "imapd.conf"
        self.cyrus_conf = self.workdir / "cyrus.conf"
        self.pidfile = self.workdir / "run" / "master.pid"
        self.notify_socket = self.workdir / "run" / "ldapquota-events"
        self.lmtp_socket = self.workdir / "run" / "lmtp"
        self.imap_port = 0
        self.lmtp_port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def __repr__(self) -> str:
        return f"<Cyrus {self.name} imap={self.imap_port} lmtp={self.lmtp_port} workdir={self.workdir}>"

    # -- configuration -----------------------------------------------------------------

    def config_text(self) -> str:
        run = self.workdir / "run"
        lines = [
            f"configdirectory: {self.workdir / 'conf'}",
            f"partition-default: {self.workdir / 'part'}",
            "defaultpartition: default",
            f"admins: {ADMIN}",
            "sasl_pwcheck_method: alwaystrue",
            "sasl_mech_list: PLAIN LOGIN",
            "allowplaintext: yes",
            f"unixhierarchysep: {'yes' if self.unixhierarchysep else 'no'}",
            f"virtdomains: {'userid' if self.virtdomains else 'off'}",
            "lmtp_downcase_rcpt: yes",
            f"lmtpsocket: {self.lmtp_socket}",
            f"idlesocket: {run / 'idle'}",
            f"proc_path: {run / 'proc'}",
            f"mboxname_lockpath: {run / 'lock'}",
            "master_bind_errors_fatal: 1",
            f"syslog_prefix: ldapquota-test-{self.name}",
            *(f"{key}: {value}" for key, value in self.options.items()),
        ]
        # The lines examples/cyrus/imapd.conf adds, with this instance's socket.
        for line in IMAPD_EXAMPLE.read_text().splitlines():
            key = line.partition(":")[0].strip()
            if not line.strip() or line.startswith("#") or (key.startswith("event_") and not self.events):
                continue
            lines.append(f"notifysocket: {self.notify_socket}" if key == "notifysocket" else line)
        return "\n".join(lines) + "\n"

    def lmtpunix_line(self) -> str:
        """examples/cyrus/cyrus.conf's LMTP service, with -C and this instance's socket."""
        line = next(line for line in CYRUS_CONF_EXAMPLE.read_text().splitlines() if line.strip().startswith("lmtpunix"))
        line = line.replace('cmd="lmtpd', f'cmd="lmtpd -C {self.imapd_conf}')
        return re.sub(r'listen="[^"]*"', f'listen="{self.lmtp_socket}"', line)

    def _write_config(self) -> None:
        conf = self.imapd_conf
        self.imapd_conf.write_text(self.config_text())
        self.cyrus_conf.write_text(
            "START {\n"
            f'  recover cmd="ctl_cyrusdb -C {conf} -r"\n'
            "}\n"
            "SERVICES {\n"
            f'  imap cmd="imapd -C {conf}" listen="127.0.0.1:{self.imap_port}" prefork=0\n'
            f'  lmtp cmd="lmtpd -a -C {conf}" listen="127.0.0.1:{self.lmtp_port}" prefork=0\n'
            f"  {self.lmtpunix_line().strip()}\n"
            "}\n"
        )
        for path in (self.imapd_conf, self.cyrus_conf):
            os.chmod(path, 0o644)

    # -- running -----------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Cyrus:
        for _attempt in range(3):
            self.imap_port, self.lmtp_port = free_port(), free_port()
            self._write_config()
            with open(self.workdir / "master.out", "ab") as out:
                self.proc = subprocess.Popen(
                    [str(CYRUS_BIN / "master"), "-C", str(self.imapd_conf), "-M", str(self.cyrus_conf),
                     "-p", str(self.pidfile), "-L", str(self.workdir / "master.log")],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                )
            atexit.register(self.stop)
            if self._wait_ready():
                return self
            self.stop()
        raise CyrusError(f"Cyrus master did not come up on 127.0.0.1:\n{self.logs()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        waiting = [(self.imap_port, b"* OK"), (self.lmtp_port, b"220")]
        while waiting and time.monotonic() < deadline:
            if not self.is_running:
                return False  # a port was taken meanwhile (master_bind_errors_fatal)
            port, banner = waiting[0]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    if sock.recv(512).startswith(banner):
                        waiting.pop(0)
                        continue
            except OSError:
                pass
            time.sleep(0.05)
        return not waiting

    def _children(self, pid: int) -> List[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
        return children

    def stop(self) -> None:
        """SIGTERM the master we started (it stops its services); SIGKILL it and its
        children, by PID, if it does not go."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            children = self._children(proc.pid)
            proc.kill()
            proc.wait(timeout=self.stop_timeout)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        parts = []
        for name in ("master.out", "master.log"):
            try:
                parts.append(f"--- {name}\n" + (self.workdir / name).read_text(errors="replace"))
            except FileNotFoundError:
                continue
        return "\n".join(parts)

    # -- names -------------------------------------------------------------------------

    @property
    def separator(self) -> str:
        return "/" if self.unixhierarchysep else "."

    @property
    def quota_root_template(self) -> str:
        """``cyrus.quota_root`` for this instance's naming scheme."""
        return f"user{self.separator}{{localpart}}" + ("@{domain}" if self.virtdomains else "")

    def root(self, address: str) -> str:
        """The quota root of ``address``'s INBOX, as the report spells it."""
        localpart, _, domain = address.partition("@")
        return f"user{self.separator}{localpart}" + (f"@{domain}" if self.virtdomains else "")

    def login_name(self, address: str) -> str:
        return address if self.virtdomains else address.partition("@")[0]

    # -- admin -------------------------------------------------------------------------

    @contextlib.contextmanager
    def imap(self, user: str = ADMIN) -> Iterator[imaplib.IMAP4]:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        try:
            checked(client.login(user, "any password"), "LOGIN", user)
            yield client
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                client.logout()

    def add_user(self, address: str, storage_kib: Optional[int] = None, messages: Optional[int] = None) -> str:
        """The user's INBOX, with a quota root of its own when a limit is given (IMAP
        SETQUOTA: STORAGE in KiB, MESSAGE a count). Returns the root's name."""
        root = self.root(address)
        with self.imap() as admin:
            checked(admin.create(root), "CREATE", root)
            if storage_kib is not None or messages is not None:
                self._set_quota(admin, root, storage_kib, messages)
        return root

    def set_quota(self, address: str, storage_kib: Optional[int] = None, messages: Optional[int] = None) -> None:
        with self.imap() as admin:
            self._set_quota(admin, self.root(address), storage_kib, messages)

    @staticmethod
    def _set_quota(admin: imaplib.IMAP4, root: str, storage_kib: Optional[int], messages: Optional[int]) -> None:
        limits = []
        if storage_kib is not None:
            limits += ["STORAGE", str(storage_kib)]
        if messages is not None:
            limits += ["MESSAGE", str(messages)]
        checked(admin.setquota(root, f"({' '.join(limits)})"), "SETQUOTA", root)

    # -- mail --------------------------------------------------------------------------

    def deliver(self, address: str, size: int = 2000) -> Dict[str, Tuple[int, bytes]]:
        """One message over LMTP; returns the refused recipients ({} when delivered)."""
        client = smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=30)
        try:
            return client.sendmail("sender@client.test", [address], message(size))
        except smtplib.SMTPRecipientsRefused as exc:
            return dict(exc.recipients)
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()

    def expunge_all(self, address: str) -> int:
        """Remove every message of the user's INBOX, as the user does it over IMAP."""
        with self.imap(self.login_name(address)) as user:
            status, data = user.select("INBOX")
            checked((status, data), "SELECT", address)
            count = int(data[0] or 0)
            if count:
                checked(user.store("1:*", "+FLAGS", "\\Deleted"), "STORE", address)
                checked(user.expunge(), "EXPUNGE", address)
            return count

    def report(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """Cyrus's own quota report (``quota -J``), the oracle for usage and limits."""
        proc = subprocess.run([QUOTA_COMMAND, "-C", str(self.imapd_conf), "-J"], capture_output=True, timeout=60)
        if proc.returncode != 0:
            raise CyrusError(f"quota -J failed: {proc.stderr.decode(errors='replace')}")
        report: Dict[str, Dict[str, Dict[str, int]]] = json.loads(proc.stdout)
        return report


def checked(answer: Tuple[str, list], command: str, name: str) -> list:
    status, data = answer
    if status != "OK":
        raise CyrusError(f"IMAP {command} {name}: {status} {data!r}")
    return data
