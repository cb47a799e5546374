#!/usr/bin/env python3
"""Cyrus IMAP as the usage source (``mailboxes.source: cyrus``): full-sync time and the
daemon's latency, against the baselines of the same run.

The world (private, on loopback, torn down at the end):

* a private Cyrus 3.6 (tests/servers/cyrus.py, the test fixture) with its configdirectory
  and partition under ``--workdir`` (default /dev/shm: Cyrus fsyncs on every CREATE, which
  on disk makes 10,000 mailboxes take minutes). ``--mailboxes`` users are created over
  IMAP as the admin (pipelined, one session), each with a quota root of its own (100 MiB;
  100 KiB for 2 %); 1 % get a 120 KB message over LMTP, which puts them over quota, the
  other 1 % serve the latency trials. User names start
  with all 26 letters, as real ones do (Cyrus's default quota database, quotalegacy,
  hashes roots into 26 directories by that letter);
* a private slapd (tests/servers/slapd.py) bulk-loaded with ``slapadd``: one account per
  mailbox, no quota attribute (Cyrus's own limit counts).

Figures:

* **full sync**: ``ldapquota --sync`` (a child process, default config but for the
  source), median of ``--sync-runs``; the first run writes the 1 % flags. Baseline: the
  bare report, ``quota -J -C imapd.conf`` into /dev/null, median of ``--report-runs``: what
  the sync cannot go below, since it reads that report once.
* **latency** with the daemon running (``ldapquota --foreground``, default config: Cyrus's
  event notifications, ``daemon.poll_interval`` 30 s as the net): from just before the LMTP
  delivery that puts a mailbox over quota until ``ldapsearch`` (a fresh process every
  20 ms, bound as the service account) sees ``isOverQuota: TRUE``; and from just before
  the IMAP EXPUNGE (as the user, the messages already flagged \\Deleted) that brings it
  back under until it sees ``FALSE``. ``--trials`` of each, each on another mailbox;
  p50 / p90 / max.
* **baseline for latency**: the 2005 recipe's hourly cron job (a quota report written to
  an lsearch file). A change at a random moment waits U(0, 1 h) for the next run, then the
  run itself, D = the bare report's median: p50 = 30 min + D, p90 = 54 min + D,
  max = 60 min + D (computed, not waited for).

Usage:  .venv/bin/python benchmarks/cyrus_bench.py [--mailboxes 10000] [--trials 30]
        [--workdir /dev/shm] [--sync-runs 3] [--report-runs 5] [--json FILE]
Needs cyrus-imapd, slapd, ldap-utils (scripts/setup installs them) and root (Cyrus's
master switches to the cyrus user).
"""

import argparse
import json
import os
import random
import shutil
import smtplib
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("SLAPD_LOGLEVEL", "0")  # no per-operation log: the polling is heavy

from servers.cyrus import QUOTA_COMMAND, Cyrus, message  # noqa: E402
from servers.slapd import Slapd, find_tool  # noqa: E402

KiB = 1024
LIMIT_KIB = 100 * 1024  # most mailboxes: far from full (no quotaFreeBytes with free_margin 50MiB)
SMALL_KIB = 100  # the over-quota ones and those the latency trials use
OVER_SIZE = 120_000  # one message puts an empty 100 KiB mailbox over
POLL = 0.02
HOUR = 3600.0


def local(i: int) -> str:
    return f"{string.ascii_lowercase[i % 26]}{i:06d}"


def address(i: int) -> str:
    return f"{local(i)}@example.org"


def is_over(i: int) -> bool:
    return i % 100 == 7  # 1 %


def is_trial(i: int) -> bool:
    return i % 100 == 13  # another 1 %, for the latency trials


def limit_kib(i: int) -> int:
    return SMALL_KIB if is_over(i) or is_trial(i) else LIMIT_KIB


# --------------------------------------------------------------------------- world


def build_cyrus(workdir: Path, n: int) -> Cyrus:
    cyrus = Cyrus("bench", base=workdir).start()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", cyrus.imap_port), timeout=120) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"a LOGIN cyrus any\r\n")
        while not reader.readline().startswith(b"a "):
            pass
        for start in range(0, n, 250):
            stop = min(n, start + 250)
            sock.sendall(b"".join(f"c{i} CREATE user.{local(i)}\r\nq{i} SETQUOTA user.{local(i)} (STORAGE {limit_kib(i)})\r\n"
                                  .encode() for i in range(start, stop)))
            waiting = 2 * (stop - start)
            while waiting:
                line = reader.readline()
                if line[:1] in (b"c", b"q"):
                    if not line.split(b" ", 2)[1] == b"OK":
                        raise SystemExit(f"Cyrus refused: {line!r}")
                    waiting -= 1
        sock.sendall(b"z LOGOUT\r\n")
    print(f"  {n} Cyrus mailboxes, each with a quota root ({LIMIT_KIB} KiB; {SMALL_KIB} KiB for 2 %): "
          f"{time.monotonic() - started:.1f}s", flush=True)
    started = time.monotonic()
    lmtp = smtplib.LMTP("127.0.0.1", cyrus.lmtp_port, timeout=60)
    over = [i for i in range(n) if is_over(i)]
    for i in over:
        lmtp.sendmail("sender@client.test", [address(i)], message(OVER_SIZE))
    lmtp.quit()
    print(f"  {len(over)} of them filled over quota over LMTP: {time.monotonic() - started:.1f}s", flush=True)
    return cyrus


def build_directory(workdir: Path, n: int) -> Slapd:
    slapd = Slapd(workdir / "slapd")
    slapd.start()  # builds cn=config, ACLs (examples/slapd-acl.ldif), base entries
    slapd.stop()
    ldif = workdir / "accounts.ldif"
    with open(ldif, "w") as out:
        for i in range(n):
            out.write(f"dn: uid={local(i)},{slapd.people_dn}\nobjectClass: inetOrgPerson\nuid: {local(i)}\n"
                      f"cn: {local(i)}\nsn: {local(i)}\nmail: {address(i)}\n\n")
    proc = subprocess.run([find_tool("slapadd"), "-q", "-F", str(slapd.config_dir), "-b", slapd.suffix, "-l", str(ldif)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"slapadd failed: {proc.stderr}")
    ldif.unlink()
    slapd.start()
    return slapd


def write_config(workdir: Path, slapd: Slapd, cyrus: Cyrus) -> Path:
    import yaml

    config = {
        "ldap": {"uri": slapd.uri, "bind_dn": slapd.ldapquota_dn, "bind_password_file": str(slapd.ldapquota_pw_file),
                 "base_dn": slapd.people_dn, "status_dn": slapd.ldapquota_dn},
        "mailboxes": {"source": "cyrus"},
        "cyrus": {"quota_command": QUOTA_COMMAND, "imapd_conf": str(cyrus.imapd_conf), "quota_root": "user.{localpart}"},
        "daemon": {"pidfile": str(workdir / "ldapquota.pid")},  # everything else: defaults
        "logging": {"target": str(workdir / "daemon.log")},
    }
    path = workdir / "ldapquota.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- measuring


class Flags:
    """isOverQuota as ldapsearch sees it (the MTA's view), bound as the service account."""

    def __init__(self, slapd: Slapd):
        self.argv = [find_tool("ldapsearch"), "-x", "-LLL", "-H", slapd.uri, "-D", slapd.ldapquota_dn,
                     "-y", str(slapd.ldapquota_pw_file), "-s", "base", "-o", "ldif-wrap=no"]
        self.env = {"PATH": os.environ.get("PATH", ""), "LDAPCONF": str(slapd.workdir / "ldap.conf"),
                    "HOME": str(slapd.workdir)}
        self.people = slapd.people_dn

    def get(self, i: int) -> str:
        out = subprocess.run(self.argv + ["-b", f"uid={local(i)},{self.people}", "(objectClass=*)", "isOverQuota"],
                             capture_output=True, text=True, env=self.env).stdout
        for line in out.splitlines():
            if line.lower().startswith("isoverquota:"):
                return line.split(":", 1)[1].strip()
        return "absent"

    def wait(self, i: int, want: str, since: float, timeout: float = 60.0) -> float:
        while True:
            if self.get(i) == want:
                return time.monotonic() - since
            if time.monotonic() > since + timeout:
                return float("inf")
            time.sleep(POLL)


def timed(argv: List[str], runs: int) -> List[float]:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(REPO))
        times.append(time.monotonic() - started)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return times


def latency_trials(cyrus: Cyrus, flags: Flags, picks: List[int]) -> Tuple[List[float], List[float]]:
    up, down = [], []
    for i in picks:
        started = time.monotonic()
        refused = cyrus.deliver(address(i), OVER_SIZE)
        if refused:
            raise SystemExit(f"LMTP refused {address(i)}: {refused}")
        up.append(flags.wait(i, "TRUE", started))
        time.sleep(random.uniform(0.1, 0.3))
        with cyrus.imap(local(i)) as user:
            user.select("INBOX")
            user.store("1:*", "+FLAGS", "\\Deleted")
            started = time.monotonic()
            user.expunge()
        down.append(flags.wait(i, "FALSE", started))
        time.sleep(random.uniform(0.1, 0.3))
    return up, down


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def summary(values: List[float]) -> Dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "max": max(values)}


def wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}:\n{path.read_text(errors='replace')}")
        time.sleep(0.1)
    raise SystemExit(f"the daemon did not log {text!r} within {timeout:g}s")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- the run


def bench(args: argparse.Namespace) -> dict:
    n = args.mailboxes
    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-cyrus-bench-", dir=args.workdir))
    workdir.chmod(0o755)  # Cyrus's processes (user cyrus) reach their directory through it
    cyrus = slapd = daemon = None
    try:
        print(f"building {n} mailboxes under {workdir}", flush=True)
        cyrus = build_cyrus(workdir, n)
        slapd = build_directory(workdir, n)
        config = write_config(workdir, slapd, cyrus)
        print("measuring", flush=True)
        report = timed([QUOTA_COMMAND, "-C", str(cyrus.imapd_conf), "-J"], args.report_runs)
        syncs = timed([sys.executable, "-m", "ldapquota", "-c", str(config), "--sync", "-q"], args.sync_runs)
        flags = Flags(slapd)
        over = sum(1 for i in range(n) if is_over(i))
        written = len(slapd.ldapsearch(slapd.people_dn, "(isOverQuota=TRUE)", ["1.1"]))

        log = workdir / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(config), "--foreground"],
                                  cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT)
        wait_log(log, "ready: ", daemon)
        picks = random.sample([i for i in range(n) if is_trial(i)], args.trials)
        up, down = latency_trials(cyrus, flags, picks)
        rss = peak_rss_kib(daemon.pid)
        notifications = "event notifications on" in log.read_text(errors="replace")
        d = statistics.median(report)
        return {
            "mailboxes": n, "over": over, "flags_seen_over": written,
            "bare_report_s": {"median": d, "runs": report},
            "full_sync_s": {"median": statistics.median(syncs), "runs": syncs},
            "latency_over_s": summary(up), "latency_cleared_s": summary(down),
            "daemon_peak_rss_kib": rss, "daemon_used_notifications": notifications,
            "hourly_cron_s": {"p50": HOUR / 2 + d, "p90": 0.9 * HOUR + d, "max": HOUR + d},
        }
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(timeout=30)
        if cyrus is not None:
            cyrus.stop()
        if slapd is not None:
            slapd.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def show(result: dict) -> None:
    def s(value: float) -> str:
        return f"{value:.3f}s" if value < 100 else f"{value:.0f}s"

    n = result["mailboxes"]
    report, sync = result["bare_report_s"], result["full_sync_s"]
    print(f"\nCyrus source, {n} mailboxes ({result['over']} over quota; {result['flags_seen_over']} flagged TRUE "
          "in LDAP after the syncs)")
    print(f"  bare report (quota -J, baseline)   median {s(report['median'])}   runs {', '.join(s(v) for v in report['runs'])}")
    print(f"  ldapquota --sync (full)            median {s(sync['median'])}   runs {', '.join(s(v) for v in sync['runs'])}"
          f"   ({sync['median'] / report['median']:.2f} x the bare report)")
    for key, what in (("latency_over_s", "delivery -> TRUE "), ("latency_cleared_s", "expunge  -> FALSE")):
        figures = result[key]
        print(f"  daemon latency {what}   p50 {s(figures['p50'])}  p90 {s(figures['p90'])}  max {s(figures['max'])}"
              f"   ({figures['n']} trials)")
    cron = result["hourly_cron_s"]
    print(f"  the recipe's hourly cron (computed) p50 {s(cron['p50'])}  p90 {s(cron['p90'])}  max {s(cron['max'])}")
    print(f"  daemon peak RSS {result['daemon_peak_rss_kib'] / 1024:.0f} MiB; followed Cyrus's notifications: "
          f"{result['daemon_used_notifications']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--sync-runs", type=int, default=3)
    parser.add_argument("--report-runs", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    result = bench(args)
    show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
