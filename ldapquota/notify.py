"""systemd's notification protocol (sd_notify(3); docs/contract.md §12), by hand: one
datagram per message to ``$NOTIFY_SOCKET`` — a file system path, or ``@name`` for an
abstract socket. Without ``$NOTIFY_SOCKET`` (not started by systemd with Type=notify)
every call does nothing.

Like ``sd_notify(unset_environment=1)`` the variables are taken out of the environment,
so that the programs the daemon runs (doveadm, Cyrus's quota, worker processes) cannot
talk to systemd in its name.
"""

import logging
import os
import socket
from typing import MutableMapping, Optional

log = logging.getLogger(__name__)

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, environ: Optional[MutableMapping[str, str]] = None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for name in ENVIRONMENT:
            env.pop(name, None)
        self.address: Optional[str] = None
        if path and path[0] in "/@":
            self.address = "\0" + path[1:] if path[0] == "@" else path
        elif path:
            log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract @name: not notifying systemd", path)
        #: Half of WatchdogSec (systemd's advice), or None: no watchdog asked for us.
        self.watchdog_every: Optional[float] = None
        if self.address and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_every = int(usec) / 2e6
        self._socket: Optional[socket.socket] = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> None:
        """One message; lines such as ``READY=1`` or ``STATUS=...``. A failure is logged
        once and never stops the daemon (systemd may be restarting itself)."""
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc.strerror)
            self._failed = True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def status_text(text: str) -> str:
    """A STATUS= value: one line (systemd shows it in `systemctl status`)."""
    return "STATUS=" + " ".join(text.split())
