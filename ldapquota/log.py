"""Logging set-up, in one place: stderr (journal), syslog (mail facility) or a file."""

import logging
import logging.handlers
import os
import sys
from typing import Optional

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
SYSLOG_FORMAT = "ldapquota[%(process)d]: %(levelname)s %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: Set by a daemon about to detach: its stderr will be /dev/null (docs/contract.md §12).
_stderr_gone = False


def without_stderr() -> None:
    """From now on ``logging.target: stderr`` means syslog (also on a reload)."""
    global _stderr_gone
    _stderr_gone = True


def make_handler(target: str) -> logging.Handler:
    """A handler for ``logging.target``. Raises OSError if a log file cannot be opened."""
    if target == "stderr" and _stderr_gone:
        target = "syslog"
    if target == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        # Under systemd the journal adds its own time stamp.
        fmt = "%(levelname)-7s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else FORMAT
        handler.setFormatter(logging.Formatter(fmt))
        return handler
    if target == "syslog":
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        handler = logging.handlers.SysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        return handler
    handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def configure(target: str = "stderr", level: str = "info", verbosity: int = 0,
              handler: Optional[logging.Handler] = None) -> logging.Handler:
    """Route the ``ldapquota`` loggers to one handler. ``verbosity``: -1 quiet, +1 debug."""
    root = logging.getLogger("ldapquota")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler = handler or make_handler(target)
    root.addHandler(handler)
    root.propagate = False
    if verbosity > 0:
        root.setLevel(logging.DEBUG)
    elif verbosity < 0:
        root.setLevel(logging.ERROR)
    else:
        root.setLevel(LEVELS[level])
    return handler
