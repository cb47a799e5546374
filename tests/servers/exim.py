"""A private, real Exim (exim4-daemon-heavy) for the tests: a daemon on 127.0.0.1.

One :class:`Exim` is one daemon with its own work directory (config, spool, logs), started
as ``exim4 -C CONFIG -DNAME=value... -bdf -oX 127.0.0.1.PORT -odq``:

- ``-C`` runs our config; as root Exim keeps its privileges for it (docs/maildir-and-mta-facts.md §2.5).
- ``-D`` overrides the ``.ifndef`` macros of examples/exim/exim4.conf (paths, servers).
- ``-bdf``: the daemon stays in the foreground, so the PID we hold is the daemon's and we
  stop exactly what we started. ``-oX 127.0.0.1.PORT`` listens on loopback only and, with
  no ``-oP``, writes no pid file. ``-odq``: received messages are only queued; a test that
  wants them delivered calls :meth:`Exim.deliver` (a queue run in the foreground).

The spool and log directories belong to the Exim user (Debian-exim), which the SMTP
processes run as. The work directory is made with mode 0755 outside pytest's private
(0700) temp tree for the same reason. Ready means the 220 banner was read on the port
(within a monotonic deadline). Logs: :meth:`Exim.logs` (mainlog, rejectlog, paniclog).

Every SMTP check should use a fresh connection (:func:`rcpt`): Exim caches lookups per
SMTP session, so a second check in the same session could be answered from the cache.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

EXIM_USER = os.environ.get("EXIM_USER", "Debian-exim")


class EximError(RuntimeError):
    """Exim could not be started (config error, port lost...); the message says why."""


def find_exim() -> Optional[str]:
    """Path of the Exim binary (Debian: /usr/sbin/exim4), honouring $EXIM."""
    if os.environ.get("EXIM"):
        return os.environ["EXIM"]
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which("exim4", path=search) or shutil.which("exim", path=search)


def exim_available() -> Tuple[bool, str]:
    """(usable, why not): an Exim with LDAP lookups, run by root (needed for -bd)."""
    binary = find_exim()
    if binary is None:
        return False, "exim4 not installed (apt-get install exim4-daemon-heavy)"
    try:
        version = subprocess.run([binary, "-bV"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{binary} -bV failed: {exc}"
    lookups = next((line for line in version.splitlines() if line.startswith("Lookups")), "")
    if " ldap " not in lookups + " ":
        return False, f"{binary} has no LDAP lookups (install exim4-daemon-heavy, not -light)"
    if os.geteuid() != 0:
        return False, "a private Exim daemon (-bd) needs root"
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        return False, f"the Exim user {EXIM_USER} does not exist"
    return True, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def give_to(path: Path, user: str = EXIM_USER, mode: Optional[int] = None) -> Path:
    """chown ``path`` to ``user`` (and its group), optionally chmod."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if mode is not None:
        os.chmod(path, mode)
    return path


_SECRET_DIRS: list = []


def secret_for_exim(content: str, name: str = "ldap.secret") -> Path:
    """A file holding ``content`` that the Exim user can read and nobody else (0400),
    in a directory of its own; removed when the test process ends."""
    directory = Path(tempfile.mkdtemp(prefix="ldapquota-exim-secret-"))
    os.chmod(directory, 0o711)
    if not _SECRET_DIRS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _SECRET_DIRS])
    _SECRET_DIRS.append(directory)
    path = directory / name
    path.write_text(content)
    return give_to(path, mode=0o400)


class Exim:
    """One private Exim daemon. ``config`` is the configuration text; ``macros`` are
    passed as ``-DNAME=value`` (they override ``.ifndef`` defaults in the file)."""

    start_timeout = 15.0
    stop_timeout = 10.0

    def __init__(self, config: str, macros: Optional[Mapping[str, str]] = None, name: str = "exim") -> None:
        self.binary = find_exim() or "exim4"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ldapquota-{name}-"))
        os.chmod(self.workdir, 0o755)
        self.spool_dir = give_to(self._mkdir("spool"))
        self.log_dir = give_to(self._mkdir("log"))
        self.config_file = self.workdir / "exim.conf"
        self.config_file.write_text(config)
        os.chmod(self.config_file, 0o644)
        self.macros = {"SPOOL_DIR": str(self.spool_dir), "LOG_DIR": str(self.log_dir), **(macros or {})}
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._output = self.workdir / "daemon.out"

    def __repr__(self) -> str:
        return f"<Exim 127.0.0.1:{self.port} workdir={self.workdir} running={self.is_running}>"

    def _mkdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(mode=0o750)
        return path

    # -- running ---------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        """An exim command line for this config and macros, plus ``args``."""
        return [self.binary, "-C", str(self.config_file), *[f"-D{k}={v}" for k, v in self.macros.items()], *args]

    def check_config(self) -> None:
        """``exim -bV``: raises EximError with Exim's complaint if the config is bad."""
        proc = subprocess.run(self.argv("-bV"), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise EximError(f"exim -bV refused {self.config_file}:\n{proc.stdout}{proc.stderr}")

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Exim:
        self.check_config()
        for _attempt in range(3):
            self.port = free_port()
            with open(self._output, "ab") as out:
                self.proc = subprocess.Popen(
                    self.argv("-bdf", "-oX", f"127.0.0.1.{self.port}", "-odq"),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            atexit.register(self.stop)
            if self._wait_ready():
                return self
            self.stop()
        raise EximError(f"Exim did not come up on 127.0.0.1; output and logs:\n{self.logs()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.is_running:
                return False  # e.g. the port was taken in the meantime
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    if sock.recv(512).startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM the daemon we started (by its PID), SIGKILL after stop_timeout."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.stop_timeout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def deliver(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Deliver everything queued (one queue run in the foreground, forced)."""
        return subprocess.run(self.argv("-qff"), capture_output=True, text=True, timeout=timeout)

    def queue_count(self) -> int:
        proc = subprocess.run(self.argv("-bpc"), capture_output=True, text=True, timeout=30)
        return int(proc.stdout.strip() or 0)

    # -- looking -----------------------------------------------------------------------

    def logs(self) -> str:
        """Daemon output and every log file, for failure messages."""
        parts = []
        for path in [self._output, *sorted(self.log_dir.glob("*log"))]:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    def smtp(self, timeout: float = 30.0) -> smtplib.SMTP:
        """A connected SMTP client after EHLO."""
        client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=timeout)
        client.ehlo()
        return client


def rcpt(
    exim: Exim,
    recipient: str,
    size: Optional[int] = None,
    sender: str = "sender@client.test",
    timeout: float = 30.0,
) -> Tuple[int, str]:
    """(code, text) of ``RCPT TO:<recipient>`` in a fresh SMTP session, after
    ``MAIL FROM:<sender>`` with ``SIZE=size`` if given."""
    client = exim.smtp(timeout=timeout)
    try:
        options = [f"SIZE={size}"] if size is not None else []
        code, text = client.mail(sender, options)
        if code != 250:
            raise AssertionError(f"MAIL FROM refused: {code} {text!r}")
        code, text = client.rcpt(recipient)
        return code, text.decode("utf-8", "replace")
    finally:
        hang_up(client)


def hang_up(client: smtplib.SMTP) -> None:
    """QUIT without waiting for the answer: Exim lingers ~200 ms before its 221."""
    try:
        client.send("QUIT\r\n")
    except (OSError, smtplib.SMTPException):
        pass
    client.close()


def send(
    exim: Exim,
    recipients: Sequence[str],
    body: bytes,
    sender: str = "sender@client.test",
) -> dict:
    """Send one message; returns smtplib's refused-recipients dict (empty: all accepted)."""
    with exim.smtp() as client:
        return client.sendmail(sender, list(recipients), body)
