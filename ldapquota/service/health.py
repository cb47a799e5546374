"""What the daemon tells the outside about itself (docs/contract.md §12): systemd
notifications (:mod:`ldapquota.notify`) and metrics (:mod:`ldapquota.metrics`).

Everything here is called from the loop's own thread — each turn, and each tick of the
loop inside a full sync or a refresh — never from a side thread: ``WATCHDOG=1`` is proof
that the loop turns, so a stuck loop is seen by systemd even while the metrics thread
still answers. The metrics thread only serves the snapshot rendered here.
"""

import logging
import time
from typing import TYPE_CHECKING, Dict, Optional

from ldapquota import metrics
from ldapquota.notify import Notifier, status_text
from ldapquota.sync import Change, SyncReport

if TYPE_CHECKING:
    from ldapquota.service.loop import Service

log = logging.getLogger(__name__)

#: STATUS= and the metrics snapshot are brought up to date at most this often (seconds).
REFRESH_EVERY = 1.0
#: While the first full sync makes progress, systemd's start timeout is pushed this far
#: ahead (EXTEND_TIMEOUT_USEC), every third of it: a big first sync is not killed, a stuck one is.
START_EXTENSION = 30.0


class Health:
    def __init__(self, service: "Service", server: Optional[metrics.MetricsServer] = None,
                 notifier: Optional[Notifier] = None):
        self.service = service
        self.server = server
        self.notifier = notifier or Notifier()
        self.figures = metrics.Figures(latency=metrics.Latency(), outages=0)
        self.exposition = metrics.Exposition()
        self._noticed: Dict[str, float] = {}  # account key → when a change of its mailbox was seen
        self._shown: Optional[object] = None
        self._status = ""
        self._updated_at = float("-inf")
        self._stale = False
        self._watchdog_at = float("-inf")
        self._extended_at = float("-inf")
        service.pending.on_change_written = self.written
        service.pending.on_write_failed = self.measure_failed

    # ------------------------------------------------------------------ the loop's calls

    def started(self) -> None:
        self.update(force=True)
        self.notifier.send(self._status)
        if self.server is not None:
            self.server.start()

    def turned(self) -> None:
        """The loop turned (or ticked inside a long sync): the watchdog, then the rest."""
        now = self.service.clock()
        lines = []
        every = self.notifier.watchdog_every
        if every is not None and now >= self._watchdog_at + every:
            lines.append("WATCHDOG=1")
            self._watchdog_at = now
        if not self.service.ready and self.service.in_sync and now >= self._extended_at + START_EXTENSION / 3:
            lines.append(f"EXTEND_TIMEOUT_USEC={int(START_EXTENSION * 1e6)}")
            self._extended_at = now
        status = self.update()
        if status is not None:
            lines.append(status)
        if lines:
            self.notifier.send(*lines)

    def wake_at(self) -> float:
        """When the loop must turn next: for the watchdog, or to show what changed since
        the last update (at most every REFRESH_EVERY) (monotonic clock)."""
        every = self.notifier.watchdog_every
        due = float("inf") if every is None else self._watchdog_at + every
        return min(due, self._updated_at + REFRESH_EVERY) if self._stale else due

    def first_pass_done(self) -> None:
        self.update(force=True)
        self.notifier.send("READY=1", self._status)

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", status_text("stopping"))
        self.notifier.close()
        # The metrics socket closes with the process: scrapes meanwhile get the last figures.

    # ------------------------------------------------------------------ what happened

    def noticed(self, key: str, now: float) -> None:
        self._noticed.setdefault(key, now)

    def settled(self, key: str) -> None:
        """Measured, and nothing to write (or it cannot be measured): no latency to count."""
        self._noticed.pop(key, None)

    def written(self, key: str, change: Change) -> None:
        """The loop wrote a change found by an event."""
        figures = self.figures
        figures.writes += 1
        if change.flip:
            if change.new.over:
                figures.flags_set += 1
            else:
                figures.flags_cleared += 1
        seen = self._noticed.pop(key, None)
        if seen is not None and figures.latency is not None:
            figures.latency.observe(max(0.0, self.service.clock() - seen))

    def measure_failed(self) -> None:
        """An account that could not be measured, or its change not written."""
        self.figures.errors += 1

    def sync_passed(self, report: SyncReport) -> None:
        metrics.count_sync(self.figures, report, self.service.wall())

    def sync_refused(self) -> None:
        self.figures.refused += 1

    def sync_failed(self, exc: Exception) -> None:
        self.figures.failed += 1
        report: Optional[SyncReport] = getattr(exc, "report", None)
        if report is not None:  # it stopped part-way: what it wrote stays written
            self.figures.writes += report.writes
            self.figures.errors += report.errors

    def sync_ended(self) -> None:
        """After every full sync, whatever its outcome: the text file."""
        self.update(force=True)
        path = self.service.config.metrics.textfile
        if path is None:
            return
        try:
            metrics.write_textfile(path, self.exposition.render(self.figures))
        except OSError as exc:
            log.error("metrics.textfile: cannot write %s: %s", path, exc.strerror)

    # ------------------------------------------------------------------ figures

    def update(self, force: bool = False) -> Optional[str]:
        """The figures and the status line from the loop's state; a new snapshot for the
        endpoint if they changed. Returns a new STATUS= line, or None. Not more often
        than REFRESH_EVERY (unless forced): what changed meanwhile is shown later
        (``_stale``: the loop wakes for it)."""
        service = self.service
        figures = self.figures
        figures.pending = len(service.pending)
        figures.ldap_up = service.link.up
        figures.outages = service.link.outages
        if service.feed is not None:
            figures.watched, figures.polled = service.feed.watched_count, service.feed.polled_count
        if service.ready:
            figures.accounts, figures.over = len(service.table), len(service.table.over)
        shown, status = figures.key(), status_text(self._status_line())
        now = service.clock()
        if not force and now < self._updated_at + REFRESH_EVERY:
            self._stale = shown != self._shown or status != self._status
            return None
        self._updated_at, self._stale = now, False
        if len(self._noticed) > len(service.table) + 1000:  # keys of accounts gone meanwhile
            self._noticed = {key: seen for key, seen in self._noticed.items() if key in service.table.records}
        if self.server is not None and shown != self._shown:
            self.server.publish(self.exposition.render(figures))
        self._shown = shown
        if status == self._status:
            return None
        self._status = status
        return status

    def _status_line(self) -> str:
        service = self.service
        link = service.link
        ldap = "LDAP up" if link.up else "LDAP down" if link.down_since is not None else "LDAP not connected yet"
        if not service.ready:
            return f"starting: first full sync, {len(service.table)} accounts read; {ldap}"
        line = (f"{len(service.table)} accounts, {len(service.table.over)} over quota, "
                f"{len(service.pending)} pending writes, {ldap}")
        if self.figures.last_success is not None:
            line += "; last full sync " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.figures.last_success))
        if service.refused:
            line += "; full syncs REFUSED by a safety rule (see the log)"
        return line
