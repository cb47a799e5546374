"""Prometheus metrics (docs/contract.md §12): the figures, their text exposition, the
atomically replaced ``metrics.textfile`` and the daemon's ``GET /metrics`` endpoint.

The figures are plain numbers kept by whoever counts them (``--sync`` in
:mod:`ldapquota.cli`, the daemon in :mod:`ldapquota.service.health`); this module only
renders them, with prometheus_client's exposition code and a registry of our own (not the
process-wide default one). Conventions: base units (seconds, no milli-anything), counters
end in ``_total``, and no label ever holds an address (or any other per-account value).

The endpoint serves a snapshot rendered by the daemon's loop: a scrape never waits for
the loop (nor a full sync in progress) and answers at once with the last figures.
"""

import bisect
import contextlib
import logging
import os
import socket
import socketserver
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterable, List, Optional, Tuple

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from ldapquota.config_values import split_listen_address
from ldapquota.errors import ConfigError, LdapQuotaError, SafetyRefusal
from ldapquota.sync import SyncReport

log = logging.getLogger(__name__)

#: Flag latency buckets (seconds): the daemon's target is about a second after the
#: delivery (debounce 0.5 s included); the long tail shows outages and held flips.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: What generate_latest() writes: the classic text format every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: A previous textfile larger than this is not ours: it is not read back.
MAX_PREVIOUS = 1 << 20


@dataclass
class Latency:
    """A histogram of seconds from "a mailbox changed" (the event seen) to "its flag written"."""

    counts: List[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> List[Tuple[str, float]]:
        bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]
        running, pairs = 0, []
        for bound, count in zip(bounds, self.counts):
            running += count
            pairs.append((bound, float(running)))
        return pairs


@dataclass
class Figures:
    """What is exposed. ``None``: not known (yet), or not this kind of run: not exposed."""

    # After a full sync (--sync and the daemon; the daemon keeps them current).
    accounts: Optional[int] = None
    over: Optional[int] = None
    sync_seconds: Optional[float] = None
    last_success: Optional[float] = None  # Unix time the last full sync that passed ended
    # Counters.
    writes: int = 0
    errors: int = 0
    flags_set: int = 0
    flags_cleared: int = 0
    syncs: int = 0
    refused: int = 0
    failed: int = 0
    # The daemon only.
    ldap_up: Optional[bool] = None
    pending: Optional[int] = None
    outages: Optional[int] = None
    watched: Optional[int] = None
    polled: Optional[int] = None
    latency: Optional[Latency] = None

    def key(self) -> Tuple[object, ...]:
        """Compared by the daemon to render only when something changed."""
        values = [getattr(self, item.name) for item in fields(self) if item.name != "latency"]
        latency = self.latency
        return tuple(values) + ((tuple(latency.counts), latency.total) if latency else ())


# name (without _total), help, Figures attribute
_GAUGES = (
    ("ldapquota_accounts", "Accounts matching ldap.filter, as of the last full sync (the daemon: kept current).", "accounts"),
    ("ldapquota_accounts_over_quota", "Accounts whose isOverQuota is (to be) TRUE.", "over"),
    ("ldapquota_sync_duration_seconds", "Duration of the last full sync that passed.", "sync_seconds"),
    ("ldapquota_last_sync_success_timestamp_seconds", "Unix time at which the last full sync that passed ended.",
     "last_success"),
    ("ldapquota_ldap_up", "1 while the daemon's LDAP connection works, 0 while it rides out an outage.", "ldap_up"),
    ("ldapquota_pending_writes", "Flag changes decided but not yet written to LDAP.", "pending"),
)
_COUNTERS = (
    ("ldapquota_writes", "Modifies of account entries (isOverQuota, quotaFreeBytes).", "writes"),
    ("ldapquota_errors", "Accounts that could not be measured or written (their flag was kept).", "errors"),
    ("ldapquota_flags_set", "isOverQuota flips FALSE/absent -> TRUE written.", "flags_set"),
    ("ldapquota_flags_cleared", "isOverQuota flips TRUE -> FALSE written.", "flags_cleared"),
    ("ldapquota_syncs", "Full syncs that passed.", "syncs"),
    ("ldapquota_syncs_refused", "Full syncs refused by a safety rule (docs/contract.md §5): nothing written.", "refused"),
    ("ldapquota_syncs_failed", "Full syncs that failed (LDAP or the usage source unreachable, bind refused).", "failed"),
    ("ldapquota_ldap_outages", "Times LDAP became unreachable for the daemon (it keeps changes and writes them "
     "once LDAP is back).", "outages"),
)


class _FiguresCollector(Collector):
    def __init__(self) -> None:
        self.figures = Figures()

    def collect(self) -> Iterable[Metric]:
        figures = self.figures
        for name, text, attribute in _GAUGES:
            value = getattr(figures, attribute)
            if value is not None:
                yield GaugeMetricFamily(name, text, value=float(value))
        for name, text, attribute in _COUNTERS:
            value = getattr(figures, attribute)
            if value is not None:
                yield CounterMetricFamily(name, text, value=float(value))
        if figures.watched is not None and figures.polled is not None:
            mailboxes = GaugeMetricFamily(
                "ldapquota_mailboxes", "Mailboxes the daemon follows, by how: watched (inotify) or polled (stat).",
                labels=["mode"])
            mailboxes.add_metric(["watched"], float(figures.watched))
            mailboxes.add_metric(["polled"], float(figures.polled))
            yield mailboxes
        if figures.latency is not None:
            yield HistogramMetricFamily(
                "ldapquota_flag_latency_seconds", "From a mailbox change seen by the daemon to its flag written in LDAP.",
                buckets=figures.latency.cumulative(), sum_value=figures.latency.total)


class Exposition:
    """Renders figures in the Prometheus text format (version 0.0.4)."""

    def __init__(self) -> None:
        self._collector = _FiguresCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)

    def render(self, figures: Figures) -> bytes:
        self._collector.figures = figures
        return generate_latest(self._registry)


def count_sync(figures: Figures, report: SyncReport, ended: float) -> None:
    """A full sync that passed, ending at Unix time ``ended``."""
    figures.accounts = report.accounts
    figures.over = report.over
    figures.sync_seconds = report.seconds
    figures.last_success = ended
    figures.writes += report.writes
    figures.errors += report.errors
    figures.flags_set += report.set
    figures.flags_cleared += report.cleared
    figures.syncs += 1


def render(figures: Figures) -> bytes:
    return Exposition().render(figures)


# --------------------------------------------------------------------------- the text file


def check_textfile(path: Optional[str]) -> None:
    """At start-up: can ``metrics.textfile`` be written? Raises ConfigError (exit 78)."""
    if path is None:
        return
    directory = os.path.dirname(path) or "/"
    if os.path.isdir(path):
        raise ConfigError(f"metrics.textfile: {path} is a directory; name the file (e.g. {path}/ldapquota.prom)")
    try:
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".ldapquota-probe.")
    except OSError as exc:
        raise ConfigError(f"metrics.textfile: cannot write in {directory}: {exc.strerror}") from None
    os.close(handle)
    os.unlink(probe)


def write_textfile(path: str, data: bytes) -> None:
    """Replace ``path`` atomically: a temporary file in the same directory, renamed over it,
    so a reader (node_exporter's textfile collector) sees the old file or the new one,
    never half of one. The temporary name does not end in .prom: the collector skips it."""
    directory = os.path.dirname(path) or "/"
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def carried_over(path: str) -> Figures:
    """The counters and the last success time from the previous ``--sync``'s file, so that
    what cron writes keeps counting (a rate() over it works) and an alert on a stale
    success time keeps its reference across failed runs. Anything unreadable: start afresh."""
    figures = Figures()
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_PREVIOUS + 1).decode("utf-8")
        if len(text) > MAX_PREVIOUS:
            return figures
        samples: Dict[str, float] = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if not sample.labels}
    except FileNotFoundError:
        return figures
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("metrics.textfile: cannot read the previous %s (%s); counters start again from 0", path, exc)
        return figures
    for name, _, attribute in _COUNTERS:
        value = samples.get(f"{name}_total")
        if value is not None and value >= 0 and getattr(figures, attribute) is not None:
            setattr(figures, attribute, int(value))
    figures.last_success = samples.get("ldapquota_last_sync_success_timestamp_seconds")
    return figures


# --------------------------------------------------------------------------- GET /metrics


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = 10  # a client that stalls does not hold a thread for ever
    server_version = "ldapquota"

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, kind, status = self.server.snapshot, CONTENT_TYPE, 200
        elif path == "/":
            body, kind, status = b"ldapquota: metrics at /metrics\n", "text/plain; charset=utf-8", 200
        else:
            body, kind, status = b"not found; try /metrics\n", "text/plain; charset=utf-8", 404
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], family: int):
        self.address_family = family
        self.snapshot = b""
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own would look up the host's FQDN (DNS, maybe slow) for nothing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class MetricsServer:
    """``metrics.listen``: bound when made (before the daemon detaches, so a port that is
    taken is exit 78 on the operator's terminal); served from a thread once started."""

    def __init__(self, listen: str):
        host, port = split_listen_address(listen)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            raise ConfigError(f"metrics.listen: cannot resolve {host!r}: {exc.strerror}") from None
        try:
            self.server = _Server((host, port), family)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc.strerror}") from None
        self.listen = listen
        self._thread: Optional[threading.Thread] = None

    def fileno(self) -> int:
        return self.server.fileno()

    def start(self) -> None:
        # No polling: the thread sleeps in select() until a client connects (an idle
        # daemon stays idle); it is a daemon thread, so it ends with the process.
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 3600.0},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics served on http://%s/metrics", self.listen)

    def publish(self, snapshot: bytes) -> None:
        self.server.snapshot = snapshot  # one reference swap: a scrape sees old or new

    def close(self) -> None:
        """Close the socket of a server that was never started (the serving thread ends
        with the process: its select() would not notice a close)."""
        assert self._thread is None
        self.server.server_close()


class SyncTextfile:
    """``metrics.textfile`` for a one-shot full sync (``--sync``): checked when made
    (exit 78 before anything else), written when the sync has passed, been refused or
    failed (what an operator most wants to be told about). Counters go on from the
    previous file (:func:`carried_over`). ``path`` None: nothing to do."""

    def __init__(self, path: Optional[str]):
        check_textfile(path)
        self.path = path
        self.figures = carried_over(path) if path else Figures()

    def passed(self, report: SyncReport) -> None:
        count_sync(self.figures, report, time.time())
        self._write()

    def ended(self, failure: LdapQuotaError) -> None:
        report: Optional[SyncReport] = getattr(failure, "report", None)
        if isinstance(failure, SafetyRefusal):
            self.figures.refused += 1
        else:
            self.figures.failed += 1
            if report is not None:  # stopped part-way: what it wrote stays written
                self.figures.writes += report.writes
                self.figures.errors += report.errors
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            write_textfile(self.path, render(self.figures))
        except OSError as exc:
            log.error("metrics.textfile: cannot write %s: %s", self.path, exc.strerror)
