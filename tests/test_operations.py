"""Running it like a service (docs/contract.md §12): metrics (checked with the Prometheus
project's own ``promtool check metrics``), systemd notifications (a datagram socket
stands in for systemd's), and detaching as daemon(7) says. Real slapd, real processes."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers import REPO, config_dict, run_cli, write_config
from prometheus_client.parser import text_string_to_metric_families
from servers.promtool import Promtool, find_promtool
from servers.slapd import requires
from test_daemon import FAST, deliver, flag, mailbox, wait_until

from ldapquota import metrics

pytestmark = pytest.mark.integration

CONTRACT_NAMES = {
    "ldapquota_accounts", "ldapquota_accounts_over_quota", "ldapquota_sync_duration_seconds",
    "ldapquota_last_sync_success_timestamp_seconds", "ldapquota_writes_total", "ldapquota_errors_total",
}
DAEMON_NAMES = {"ldapquota_ldap_up", "ldapquota_pending_writes"}


@pytest.fixture(scope="session")
def promtool() -> Promtool:
    binary = find_promtool()
    requires(binary is not None, "promtool (from Debian's prometheus package, unpacked by tests/servers/promtool.py)")
    return Promtool(binary)


def samples(exposition: bytes) -> dict:
    """``name`` or ``name{label="value"}`` → value."""
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return answer.read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accounts(ldap, mail_root):
    """One account over quota, one under: the first pass sets one flag."""
    ldap.add_account("full@example.org", quota="10000")
    ldap.add_account("room@example.org", quota="10000")
    mailbox(mail_root, "full@example.org", 10000, 12000)
    return mailbox(mail_root, "room@example.org", 10000, 1000)


def make_config(tmp_path, ldap, mail_root, daemon=None, **sections) -> Path:
    values = dict(FAST, pidfile=str(tmp_path / "ldapquota.pid"))
    values.update(daemon or {})
    return write_config(tmp_path / "ldapquota.yaml", config_dict(ldap, mail_root, daemon=values, **sections))


class Daemon:
    """``ldapquota --foreground`` with an environment of the test's choosing."""

    def __init__(self, config: Path, log: Path, env=None):
        environment = {k: v for k, v in os.environ.items() if k not in ("LDAPQUOTA_CONFIG", "JOURNAL_STREAM")}
        environment.update(env or {})
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ldapquota", "-c", str(config), "--foreground"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO), env=environment)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(20)
        finally:
            self._log.close()


class NotifySocket:
    """What systemd listens on: a datagram socket at a path or an abstract @name. Every
    message is kept with the time it arrived."""

    def __init__(self, tmp_path: Path, abstract: bool):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"ldapquota-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.sock.settimeout(0.2)
        self.messages: list = []  # (arrival, [lines])
        self._stop = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def lines(self):
        return [line for _, lines in list(self.messages) for line in lines]

    def watchdog_times(self, since=0.0):
        return [at for at, lines in list(self.messages) if "WATCHDOG=1" in lines and at >= since]

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


# --------------------------------------------------------------------------- the exposition


def test_every_metric_is_clean_for_promtool_and_carries_no_address(promtool):
    latency = metrics.Latency()
    for seconds in (0.1, 0.7, 3.0, 4000.0):
        latency.observe(seconds)
    full = metrics.Figures(accounts=5, over=2, sync_seconds=0.25, last_success=1.7e9, writes=3, errors=1,
                           ldap_up=False, pending=4, outages=1, watched=3, polled=2, latency=latency)
    for figures in (full, metrics.Figures()):
        exposition = metrics.render(figures)
        promtool.check(exposition)
        for family in text_string_to_metric_families(exposition.decode()):
            assert family.name.startswith("ldapquota_")
            for sample in family.samples:
                assert set(sample.labels) <= {"mode", "le"}, sample
    found = samples(metrics.render(full))
    assert set(found) >= CONTRACT_NAMES | DAEMON_NAMES
    assert found["ldapquota_flag_latency_seconds_count"] == 4
    assert found['ldapquota_flag_latency_seconds_bucket{le="1.0"}'] == 2
    assert found['ldapquota_mailboxes{mode="polled"}'] == 2


def test_the_textfile_is_replaced_never_rewritten_in_place(tmp_path):
    path = tmp_path / "ldapquota.prom"
    metrics.write_textfile(str(path), metrics.render(metrics.Figures(syncs=1)))
    before = os.stat(path)
    with open(path, "rb") as held:  # a reader in the middle of reading the old file
        metrics.write_textfile(str(path), metrics.render(metrics.Figures(syncs=2)))
        assert samples(held.read())["ldapquota_syncs_total"] == 1  # still the whole old file
    assert os.stat(path).st_ino != before.st_ino
    assert samples(path.read_bytes())["ldapquota_syncs_total"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ldapquota.prom"]  # no temporary left behind


def test_a_reader_never_sees_a_partial_textfile_while_the_daemon_syncs_again_and_again(ldap, mail_root, tmp_path,
                                                                                       promtool):
    accounts(ldap, mail_root)
    textfile = tmp_path / "ldapquota.prom"
    path = make_config(tmp_path, ldap, mail_root, daemon={"interval": "0.01s"}, metrics={"textfile": str(textfile)})
    daemon = Daemon(path, tmp_path / "daemon.log")
    reads, counts, inodes = 0, [], set()
    try:
        wait_until(lambda: daemon.alive() and textfile.exists(), 20, "the first textfile")
        expected = set(samples(textfile.read_bytes()))
        while not counts or counts[-1] < 30:  # thirty full syncs, read as fast as we can
            daemon.alive()
            with open(textfile, "rb") as handle:
                inodes.add(os.fstat(handle.fileno()).st_ino)
                text = handle.read()
            found = samples(text)  # a torn file would not parse, or would lack the last families
            assert set(found) == expected, text
            counts.append(found["ldapquota_syncs_total"])
            reads += 1
            assert reads < 200_000, "the daemon does not sync again"
    finally:
        assert daemon.stop() == 0
    assert counts == sorted(counts) and len(set(counts)) > 2 and len(inodes) > 1
    promtool.check(textfile.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


# --------------------------------------------------------------------------- --sync


def test_sync_writes_the_textfile_and_keeps_counting_across_runs(ldap, mail_root, tmp_path, promtool):
    room = accounts(ldap, mail_root)
    textfile = tmp_path / "prom" / "ldapquota.prom"
    textfile.parent.mkdir()
    path = make_config(tmp_path, ldap, mail_root, metrics={"textfile": str(textfile)})

    first = run_cli(["-c", str(path), "--sync"])
    assert first.returncode == 0, first.stderr
    exposition = textfile.read_bytes()
    promtool.check(exposition)
    found = samples(exposition)
    assert set(found) >= CONTRACT_NAMES and not DAEMON_NAMES & set(found)
    assert (found["ldapquota_accounts"], found["ldapquota_accounts_over_quota"]) == (2, 1)
    assert found["ldapquota_writes_total"] >= 1 and found["ldapquota_syncs_total"] == 1
    assert abs(found["ldapquota_last_sync_success_timestamp_seconds"] - time.time()) < 600
    passed_at = found["ldapquota_last_sync_success_timestamp_seconds"]

    dry = run_cli(["-c", str(path), "--sync", "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert textfile.read_bytes() == exposition  # a dry run is not a sync

    deliver(room, 9500)  # now over too
    second = run_cli(["-c", str(path), "--sync"])
    assert second.returncode == 0, second.stderr
    found2 = samples(textfile.read_bytes())
    assert found2["ldapquota_syncs_total"] == 2 and found2["ldapquota_accounts_over_quota"] == 2
    assert found2["ldapquota_writes_total"] == found["ldapquota_writes_total"] + 1  # carried on, plus this run's
    assert found2["ldapquota_flags_set_total"] == 2

    for child in list(mail_root.iterdir()):  # the store looks unmounted: refused, exit 75
        subprocess.run(["rm", "-rf", str(child)], check=True)
    refused = run_cli(["-c", str(path), "--sync"])
    assert refused.returncode == 75, refused.stderr
    exposition3 = textfile.read_bytes()
    promtool.check(exposition3)
    found3 = samples(exposition3)
    assert found3["ldapquota_syncs_refused_total"] == 1 and found3["ldapquota_syncs_total"] == 2
    # The success time stays that of the last sync that passed: an alert on its age fires.
    assert passed_at <= found3["ldapquota_last_sync_success_timestamp_seconds"] == \
        found2["ldapquota_last_sync_success_timestamp_seconds"]


def test_bad_metrics_settings_stop_the_start_with_78_naming_the_key(ldap, mail_root, tmp_path):
    accounts(ldap, mail_root)
    missing_dir = tmp_path / "no" / "such" / "dir" / "ldapquota.prom"
    path = make_config(tmp_path, ldap, mail_root, metrics={"textfile": str(missing_dir)})
    for args in (["--sync"], [], ["--foreground"]):
        result = run_cli(["-c", str(path), *args], timeout=30)
        assert result.returncode == 78, (args, result.stderr)
        assert "metrics.textfile" in result.stderr and str(missing_dir.parent) in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = make_config(tmp_path, ldap, mail_root, metrics={"listen": f"127.0.0.1:{port}"})
        for args in ([], ["--foreground"]):
            result = run_cli(["-c", str(path), *args], timeout=30)
            assert result.returncode == 78, (args, result.stderr)
            assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "ldapquota.pid").exists()
    path = make_config(tmp_path, ldap, mail_root, metrics={"listen": "9100"})
    result = run_cli(["-c", str(path), "--sync"], timeout=30)
    assert result.returncode == 78 and "metrics.listen" in result.stderr and "line" in result.stderr


# --------------------------------------------------------------------------- detaching


def test_detaching_leaves_the_callers_pipes_and_logs_to_syslog(ldap, mail_root, tmp_path, promtool):
    accounts(ldap, mail_root)
    port = free_port()
    textfile = tmp_path / "ldapquota.prom"
    path = make_config(tmp_path, ldap, mail_root, metrics={"listen": f"127.0.0.1:{port}", "textfile": str(textfile)})
    pidfile = tmp_path / "ldapquota.pid"
    env = {k: v for k, v in os.environ.items() if k not in ("LDAPQUOTA_CONFIG", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    # What `$(ldapquota -c FILE)` or an init script does: read the output to its end.
    starter = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(path)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), env=env)
    try:
        out, err = starter.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        starter.kill()
        raise AssertionError("the starting command did not return: the daemon kept its output open") from None
    assert starter.returncode == 0, err
    assert out == b""
    assert b"logs to syslog" in err  # logging.target: stderr, said before detaching
    pid = int(pidfile.read_text())  # written before the starting command returned
    try:
        assert os.getsid(pid) != os.getsid(0)
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        wait_until(lambda: samples(scrape(port)).get("ldapquota_accounts") == 2, 20, "the first pass in the metrics")
        exposition = scrape(port)
        promtool.check(exposition)
        found = samples(exposition)
        assert set(found) >= CONTRACT_NAMES | DAEMON_NAMES
        assert found["ldapquota_ldap_up"] == 1 and found["ldapquota_accounts_over_quota"] == 1
        wait_until(textfile.exists, 10, "the daemon's textfile")
        promtool.check(textfile.read_bytes())
        assert flag(ldap, "full@example.org") == "TRUE"
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 20, "the daemon to exit")
    assert not pidfile.exists()


def _zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


# --------------------------------------------------------------------------- systemd


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_after_the_first_pass_then_watchdog_then_stopping(ldap, mail_root, tmp_path, promtool, abstract):
    accounts(ldap, mail_root)
    notify = NotifySocket(tmp_path, abstract)
    textfile = tmp_path / "ldapquota.prom"
    path = make_config(tmp_path, ldap, mail_root, metrics={"textfile": str(textfile)})
    daemon = Daemon(path, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "400000"})
    try:
        wait_until(lambda: daemon.alive() and "READY=1" in notify.lines(), 20, "READY=1")
        # READY=1 comes once the first pass is done: its write is in LDAP already.
        assert flag(ldap, "full@example.org") == "TRUE"
        promtool.check(textfile.read_bytes())
        ready = notify.lines().index("READY=1")
        status = [line for line in notify.lines()[ready:] if line.startswith("STATUS=")][0]
        assert "2 accounts, 1 over quota, 0 pending writes, LDAP up" in status
        count = len(notify.watchdog_times())
        wait_until(lambda: len(notify.watchdog_times()) >= count + 3, 20, "WATCHDOG=1 as the loop turns")
    finally:
        assert daemon.stop() == 0
        time.sleep(0.3)  # the last datagram is in the socket already; let the reader take it
        notify.close()
    lines = notify.lines()
    assert lines.count("READY=1") == 1
    assert "STOPPING=1" in lines and "WATCHDOG=1" not in lines[lines.index("STOPPING=1"):]


def test_the_watchdog_goes_on_through_an_outage_and_stops_while_the_loop_is_stuck(ldap, mail_root, tmp_path, promtool):
    room = accounts(ldap, mail_root)
    notify = NotifySocket(tmp_path, abstract=True)
    port = free_port()
    path = make_config(tmp_path, ldap, mail_root, metrics={"listen": f"127.0.0.1:{port}"})
    daemon = Daemon(path, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "400000"})
    try:
        wait_until(lambda: daemon.alive() and "READY=1" in notify.lines(), 20, "READY=1")

        # An outage the loop rides out: it keeps turning, and says so.
        ldap.stop()
        deliver(room, 9500)
        wait_until(lambda: any("LDAP down" in line for line in notify.lines()), 20, "STATUS=... LDAP down")
        outage = time.monotonic()
        wait_until(lambda: len(notify.watchdog_times(outage)) >= 3, 20, "WATCHDOG=1 during the outage")
        wait_until(lambda: samples(scrape(port)).get("ldapquota_pending_writes") == 1, 20, "the change held")
        exposition = scrape(port)
        promtool.check(exposition)
        found = samples(exposition)
        assert found["ldapquota_ldap_up"] == 0 and found["ldapquota_ldap_outages_total"] >= 1
        ldap.start()
        wait_until(lambda: flag(ldap, "room@example.org") == "TRUE", 30, "the held change written")

        # A directory that hangs holds the loop in a call (up to the 5 s receive timeout):
        # no WATCHDOG=1 then, although the metrics thread goes on answering at once.
        ldap.pause()
        stuck = time.monotonic()
        daemon.proc.send_signal(signal.SIGUSR1)  # a full sync, on a connection that hangs
        time.sleep(2.5)
        promtool.check(scrape(port))  # answered from the last figures
        ldap.resume()
        wait_until(lambda: len(notify.watchdog_times(stuck)) >= 3, 30, "WATCHDOG=1 once the loop turns again")
        times = [stuck] + notify.watchdog_times(stuck)
        assert max(b - a for a, b in zip(times, times[1:])) >= 2.0, times  # silent while stuck
        wait_until(lambda: samples(scrape(port)).get("ldapquota_syncs_total", 0) >= 2, 30, "the full sync")
        found = samples(scrape(port))
        assert found["ldapquota_flag_latency_seconds_count"] >= 1  # the change held through the outage
        assert found["ldapquota_accounts_over_quota"] == 2
    finally:
        ldap.ensure_running()
        assert daemon.stop() == 0
        notify.close()


# --------------------------------------------------------------------------- the notifier itself


def test_the_notifier_reads_and_hides_its_environment(tmp_path):
    from ldapquota.notify import Notifier

    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "1"}
    notifier = Notifier(env)
    assert notifier.address == "\0x" and notifier.watchdog_every == 1.5
    assert env == {"OTHER": "1"}  # what the daemon runs cannot talk to systemd in its name
    # The watchdog was asked of another process (the one systemd started before a fork):
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}).watchdog_every is None
    assert not Notifier({}).enabled and Notifier({}).watchdog_every is None
    assert not Notifier({"NOTIFY_SOCKET": "relative"}).enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    gone.send("READY=1")  # systemd away: logged once, never raised
    gone.send("READY=1")
    gone.close()
