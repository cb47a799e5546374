"""The daemon's process life: pidfile lock, detaching, privileges, signals, logging.

``ldapquota`` without a mode flag runs :func:`run`:

* the pidfile (``daemon.pidfile``) is opened and locked with ``flock()`` *before*
  anything else, so a second instance is refused with a clear message (exit 75) while
  the first one's lock is held, and a file left behind by a crash (no process holds
  its lock any more) is simply locked again and rewritten;
* the log handler (``logging.target``), ``metrics.textfile``'s directory and the
  ``metrics.listen`` socket are opened or checked while errors can still reach the
  terminal (exit 78, naming the key);
* without ``--foreground`` the process detaches as daemon(7) says (docs/contract.md §12),
  through python-daemon's DaemonContext: double fork, setsid, chdir /, umask 022,
  standard input, output and error on /dev/null (``logging.target: stderr`` becomes
  syslog, and the terminal is told), every other descriptor closed but the pidfile's,
  the log's and the metrics socket. The starting command waits on a pipe until the
  daemon runs (or failed to start: then it prints the error and exits with its code),
  so ``$(ldapquota)`` and init scripts return at once; the pidfile gets the daemon's pid;
  with ``--foreground`` (systemd ``Type=notify``) it stays attached;
* ``daemon.user`` / ``daemon.group`` are dropped to after the pidfile and log are open
  (and, with ``--foreground``, only when running as root);
* SIGTERM/SIGINT stop (exit 0), SIGHUP reloads the config, SIGUSR1 runs a full sync.
"""

import errno
import fcntl
import grp
import logging
import os
import pwd
import select
import signal
import sys
from types import FrameType
from typing import List, Optional, Tuple

from ldapquota import log as logsetup
from ldapquota import metrics, synclock
from ldapquota.config import default_config_path
from ldapquota.errors import EX_SOFTWARE, AlreadyRunning, ConfigError, LdapQuotaError
from ldapquota.service.loop import Service
from ldapquota.settings import Config

log = logging.getLogger(__name__)


class PidFile:
    """A pidfile held with an exclusive ``flock()`` for the life of the daemon.

    The lock, not the file's existence, says whether a daemon runs: the kernel drops it
    when the process dies, however it dies. The lock belongs to the open file, so it
    survives python-daemon's forks as long as the descriptor is kept open.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        """Lock and write our pid. Raises AlreadyRunning, or ConfigError if the file
        cannot be created."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise ConfigError(f"daemon.pidfile: cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {holder})" if holder else ""
                raise AlreadyRunning(
                    f"another ldapquota daemon is already running{who}: {self.path} is locked; not starting a second one"
                ) from None
            raise ConfigError(f"daemon.pidfile: cannot lock {self.path}: {exc.strerror}") from None
        self.fd = fd
        self.write(os.getpid())

    def write(self, pid: int) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def forget(self) -> None:
        """Close our descriptor only: another process (the detached daemon) holds the lock."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock."""
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            # After dropping privileges the directory may not be ours to change: a file
            # left behind is harmless (the next start locks it again).
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def resolve_owner(user: Optional[str], group: Optional[str]) -> Tuple[Optional[int], Optional[int], Optional[str]]:
    """``daemon.user``/``daemon.group`` → (uid, gid, user name); names or numbers.
    Without a group the user's primary group is used. Raises ConfigError."""
    uid = gid = None
    name = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except (KeyError, OverflowError):
            raise ConfigError(f"daemon.user: no such user {user!r}") from None
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except (KeyError, OverflowError):
            raise ConfigError(f"daemon.group: no such group {group!r}") from None
    return uid, gid, name


def drop_privileges(uid: Optional[int], gid: Optional[int], name: Optional[str]) -> None:
    """Become ``uid``/``gid`` (with the user's supplementary groups). Raises ConfigError."""
    if uid is None and gid is None:
        return
    try:
        if gid is not None and gid != os.getgid():
            if name is not None:
                os.initgroups(name, gid)
            else:
                os.setgroups([gid])
            os.setgid(gid)
        if uid is not None and uid != os.getuid():
            if name is not None and gid is None:
                os.initgroups(name, os.getgid())
            os.setuid(uid)
    except OSError as exc:
        raise ConfigError(f"daemon.user/daemon.group: cannot switch to uid {uid} gid {gid}: {exc.strerror}") from None


def _handler_fds(handler: logging.Handler) -> List[int]:
    """The descriptors a log handler writes to, to keep across detaching."""
    fds = []
    stream = getattr(handler, "stream", None)
    if stream is not None and hasattr(stream, "fileno"):
        try:
            fds.append(stream.fileno())
        except (OSError, ValueError):
            pass
    sock = getattr(handler, "socket", None)
    if sock is not None:
        try:
            fds.append(sock.fileno())
        except OSError:
            pass
    return fds


def install_signal_handlers(service: Service) -> None:
    def stop(signum: int, frame: Optional[FrameType]) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: service.request_reload())
    signal.signal(signal.SIGUSR1, lambda signum, frame: service.request_full_sync())


def run(config: Config, *, foreground: bool, verbosity: int, config_path: Optional[str]) -> int:
    """The daemon: returns the exit code (0 after SIGTERM). Raises LdapQuotaError for
    what stops it from starting (AlreadyRunning 75, ConfigError 78). Detached, the
    command that started it returns this once the daemon runs (or failed to start)."""
    # SIGHUP re-reads this file; the daemon's working directory is / once detached.
    path = os.path.abspath(config_path or default_config_path())
    uid, gid, user_name = resolve_owner(config.daemon.user, config.daemon.group)
    if not foreground and config.logging.target == "stderr":
        # docs/contract.md §12: a detached daemon has no stderr (daemon(7)); say so while we still have one.
        print("ldapquota: logging.target is stderr, which a detached daemon does not have: it logs to syslog "
              "(facility mail) instead; use --foreground to keep stderr (e.g. under systemd)", file=sys.stderr)
        logsetup.without_stderr()
    try:
        handler = logsetup.make_handler(config.logging.target)
    except OSError as exc:
        raise ConfigError(f"logging.target: cannot open {config.logging.target}: {exc.strerror}") from None
    # Bad metrics settings stop the start here, on the operator's terminal (exit 78).
    metrics.check_textfile(config.metrics.textfile)
    server = metrics.MetricsServer(config.metrics.listen) if config.metrics.listen else None
    pidfile = PidFile(config.daemon.pidfile)
    try:
        pidfile.acquire()
        # While we may still create files there: cron's --sync and our full syncs meet on it.
        synclock.prepare(config)
    except BaseException:
        if server is not None:
            server.close()
        raise
    if foreground:
        try:
            if os.getuid() == 0:
                drop_privileges(uid, gid, user_name)
            elif uid is not None and uid != os.getuid():
                raise ConfigError(f"daemon.user: only root can switch to {config.daemon.user}")
            return _serve(config, handler, server, path, verbosity, None)
        finally:
            pidfile.release()
    started = StartReport()
    daemon_pid = started.fork()
    if daemon_pid is not None:  # the starting command: the daemon's lock is not ours to release
        pidfile.forget()
        if server is not None:
            server.close()
        return started.wait(daemon_pid)
    try:
        _detach(pidfile, handler, server, started, uid, gid)
        return _serve(config, handler, server, path, verbosity, started)
    except LdapQuotaError as exc:
        log.error("not started: %s", exc)
        started.failed(exc.exit_code, str(exc))
        raise
    except BaseException:
        started.failed(EX_SOFTWARE, "internal error during start-up; see the log")
        raise
    finally:
        pidfile.release()


def _serve(config: Config, handler: logging.Handler, server: Optional[metrics.MetricsServer], path: str,
           verbosity: int, started: Optional["StartReport"]) -> int:
    logsetup.configure(config.logging.target, config.logging.level, verbosity, handler=handler)
    service = Service(config, config_path=path, verbosity=verbosity, metrics_server=server)
    install_signal_handlers(service)
    if started is not None:
        started.done()
    return service.run()


class StartReport:
    """daemon(7): the command that starts the daemon returns once the daemon runs, with
    the daemon's start-up error (message and exit code) if it had one. A pipe from the
    daemon to it carries ``0`` or ``CODE MESSAGE``; the end of the pipe without either
    means the daemon died."""

    #: How long the starting command waits for the daemon to say it runs.
    WAIT = 60.0

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)

    def fork(self) -> Optional[int]:
        """In the starting command: the child's pid; in the child: None."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(self.write_fd)
            return pid
        os.close(self.read_fd)
        return None

    def wait(self, child: int) -> int:
        answer = b""
        with os.fdopen(self.read_fd, "rb", buffering=0) as pipe:
            while select.select([pipe], [], [], self.WAIT)[0]:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                answer += chunk
            else:
                print(f"ldapquota: the daemon has not said it runs after {self.WAIT:g}s; see its log", file=sys.stderr)
                return EX_SOFTWARE
        os.waitpid(child, 0)  # the first fork: it exits as soon as it has forked the daemon
        code, _, message = answer.decode("utf-8", "replace").partition(" ")
        if code.strip().isdigit():
            if message.strip():
                print(f"ldapquota: {message.strip()}", file=sys.stderr)
            return int(code)
        print("ldapquota: the daemon exited during start-up; see its log", file=sys.stderr)
        return EX_SOFTWARE

    def done(self) -> None:
        self._send("0")

    def failed(self, code: int, message: str) -> None:
        self._send(f"{code} {message}")

    def _send(self, text: str) -> None:
        if self.write_fd < 0:
            return
        try:
            os.write(self.write_fd, text.encode("utf-8", "replace")[:4000])
        except OSError:
            pass  # the starting command is gone: nobody to tell
        os.close(self.write_fd)
        self.write_fd = -1


def _detach(pidfile: PidFile, handler: logging.Handler, server: Optional[metrics.MetricsServer],
            started: StartReport, uid: Optional[int], gid: Optional[int]) -> None:
    """daemon(7) through python-daemon: double fork, setsid, chdir /, umask 022, standard
    input, output and error on /dev/null, every other descriptor closed but ours."""
    import daemon as python_daemon  # python-daemon

    assert pidfile.fd is not None
    keep = [pidfile.fd, started.write_fd] + _handler_fds(handler) + ([server.fileno()] if server else [])
    context = python_daemon.DaemonContext(
        detach_process=True,
        working_directory="/",
        umask=0o022,
        uid=uid if uid is not None else os.getuid(),
        gid=gid if gid is not None else os.getgid(),
        initgroups=uid is not None,
        files_preserve=keep,
        # Our own handlers are installed after open(); keep the job-control ones ignored.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    try:
        context.open()  # the first fork exits 0 in here
    except python_daemon.daemon.DaemonError as exc:
        raise ConfigError(f"daemon.user/daemon.group: cannot become the daemon: {exc}") from None
    pidfile.write(os.getpid())
