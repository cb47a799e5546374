#!/usr/bin/env python3
"""What the daemon's distrust costs (docs/contract.md §5, "Daemon cache"): after a lost
connection, or a directory that went back in time, it runs a full sync.

For each size (default 10,000 mailboxes) this builds the world of daemon_latency.py (a
private slapd bulk-loaded with slapadd, maildirs under /dev/shm, 1 % over quota and
flagged) and measures, with the daemon running (``--foreground``, default config):

* **idle**: the daemon's and slapd's CPU over ``--idle`` seconds, probe included (a few
  base-scope reads every 10 s);
* **restart**: slapd stopped and started (``--rounds`` times). From slapd answering again
  until the daemon's full sync after it has finished (times from the daemon's log): the
  detection delay, the sync's own seconds, the daemon's and slapd's CPU, the writes (none:
  nothing changed);
* **restore**: a slapcat backup in which 1 % of the accounts under quota carry a stale
  TRUE restored with slapadd (stop, empty, slapadd, start): the same figures, the writes
  (the stale flags cleared), and the flags counted with ldapsearch afterwards.

The baseline, in the same run: ``ldapquota --sync`` on the same data (what a cron job or
a SIGUSR1 costs), median of ``--sync-runs``.

Usage:  .venv/bin/python benchmarks/reconnect_sync.py [--sizes 10000] [--rounds 3] [--idle 30]
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_latency import REPO, build_directory, build_maildirs, cpu_seconds, is_over, run_sync_child, vm, write_config

SYNC_LINE = re.compile(r"^(\S+ \S+) INFO +ldapquota\.service\.fullsync: full sync: (accounts=\d+ .*seconds=([\d.]+))$", re.M)
DISTRUST_LINE = re.compile(r"^(\S+ \S+) WARNING +ldapquota\.service\.trust: (.*?): the cache of what LDAP holds", re.M)


def log_time(stamp: str) -> float:
    """A log line's time (``2026-01-02 03:04:05,678``, local time) as seconds since the epoch."""
    day, _, millis = stamp.partition(",")
    return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def wait_for_sync(log: Path, count: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while len(SYNC_LINE.findall(log.read_text())) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"no full sync #{count} within {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def over_count(slapd) -> int:
    out = subprocess.run(
        [shutil.which("ldapsearch") or "ldapsearch", "-x", "-LLL", "-H", slapd.uri, "-D", slapd.ldapquota_dn,
         "-y", str(slapd.ldapquota_pw_file), "-b", slapd.people_dn, "-E", "pr=1000/noprompt", "(isOverQuota=TRUE)", "1.1"],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", ""), "LDAPCONF": str(slapd.workdir / "ldap.conf"),
                                             "HOME": str(slapd.workdir)}).stdout
    return sum(1 for line in out.splitlines() if line.startswith("dn: "))


def one_round(name: str, slapd, daemon: subprocess.Popen, log: Path, act) -> dict:
    """``act()`` disturbs the directory and returns the wall time slapd answers again; then
    wait for the daemon's next full sync and read the figures."""
    syncs = len(SYNC_LINE.findall(log.read_text()))
    d0 = cpu_seconds(daemon.pid)
    up_at = act()
    s_before = cpu_seconds(slapd.pid)  # the new slapd's, once it answers
    wait_for_sync(log, syncs + 1)
    d1, s1 = cpu_seconds(daemon.pid), cpu_seconds(slapd.pid)
    text = log.read_text()
    stamp, summary, seconds = SYNC_LINE.findall(text)[syncs]
    distrust = [m for m in DISTRUST_LINE.findall(text) if log_time(m[0]) >= up_at - 1]
    noticed = log_time(distrust[0][0]) - up_at if distrust else float("nan")
    result = {"round": name, "noticed_s": noticed, "sync_s": float(seconds), "done_s": log_time(stamp) - up_at,
              "daemon_cpu_s": d1 - d0, "slapd_cpu_s": s1 - s_before, "summary": summary,
              "why": distrust[0][1] if distrust else None}
    print(f"  {name}: noticed {noticed:.2f}s after slapd answered, full sync {float(seconds):.2f}s, flags verified "
          f"{result['done_s']:.2f}s after slapd answered; CPU daemon {d1 - d0:.2f}s, slapd {s1 - s_before:.2f}s; "
          f"{summary.split(' seconds=')[0]}", flush=True)
    return result


def stale_backup(slapd, n: int) -> tuple:
    """A slapcat in which 1 % of the accounts under quota carry isOverQuota TRUE."""
    backup = slapd.slapcat()
    stale = {f"uid=u{i:06d}," for i in range(n) if not is_over(i) and i % 100 == 3}
    blocks = []
    for block in backup.split("\n\n"):
        if any(block.startswith(f"dn: {prefix}") for prefix in stale):
            dn, _, rest = block.partition("\n")
            block = f"{dn}\nobjectClass: ldapQuotaStatus\n{rest}\nisOverQuota: TRUE"
        blocks.append(block)
    return "\n\n".join(blocks), len(stale)


def bench_size(n: int, args) -> dict:
    print(f"\n== {n} mailboxes", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"lqreconnect-{n}-", dir=args.workdir))
    result = {"mailboxes": n}
    slapd = daemon = None
    try:
        slapd = build_directory(workdir, n)
        root = workdir / "vmail"
        build_maildirs(root, n)
        config = write_config(workdir, slapd, root)
        log = workdir / "daemon.log"
        config.write_text(config.read_text().replace("level: debug", "level: info"))

        runs = [run_sync_child(config) for _ in range(args.sync_runs)]
        result["baseline_sync_s"] = statistics.median(r[0] for r in runs)
        result["baseline_sync_cpu_s"] = statistics.median(r[1] for r in runs)
        print(f"  baseline ldapquota --sync: {result['baseline_sync_s']:.2f}s wall, CPU {result['baseline_sync_cpu_s']:.2f}s, "
              f"peak RSS {max(r[2] for r in runs) / 1024:.0f} MB", flush=True)

        daemon = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(config), "--foreground"], cwd=str(REPO),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(workdir / "daemon.stderr", "w"))  # noqa: SIM115 (lives as long as the daemon)
        wait_for_sync(log, 1)
        time.sleep(2)
        d0, s0 = cpu_seconds(daemon.pid), cpu_seconds(slapd.pid)
        time.sleep(args.idle)
        d1, s1 = cpu_seconds(daemon.pid), cpu_seconds(slapd.pid)
        result["idle_cpu_pct"] = {"daemon": 100 * (d1 - d0) / args.idle, "slapd": 100 * (s1 - s0) / args.idle}
        print(f"  idle over {args.idle:g}s (probe included): daemon {result['idle_cpu_pct']['daemon']:.2f}% of a core, "
              f"slapd {result['idle_cpu_pct']['slapd']:.2f}%", flush=True)

        def restart() -> float:
            slapd.stop()
            time.sleep(1.0)
            slapd.start()
            return time.time()

        result["restart"] = [one_round(f"restart {k + 1}", slapd, daemon, log, restart) for k in range(args.rounds)]
        backup, stale = stale_backup(slapd, n)

        def restore() -> float:
            slapd.restore(backup)
            return time.time()

        result["restore"] = one_round(f"restore ({stale} stale TRUE)", slapd, daemon, log, restore)
        over = over_count(slapd)
        result["restore"]["over_after"] = over
        print(f"  after the restore: {over} flags TRUE in LDAP, {sum(1 for i in range(n) if is_over(i))} mailboxes over "
              f"quota; daemon peak RSS {vm(daemon.pid, 'VmHWM') / 1024:.0f} MB", flush=True)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        daemon = None
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if slapd is not None:
            slapd.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--sync-runs", type=int, default=3)
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(f"ldapquota reconnect/restore benchmark: {os.cpu_count()} CPUs, data under {args.workdir}")
    results = [bench_size(int(size), args) for size in args.sizes.split(",")]
    print("\nsummary (seconds)")
    for r in results:
        restarts = r["restart"]
        sync = statistics.median(x["sync_s"] for x in restarts)
        print(f"  {r['mailboxes']:>7}: after a restart, noticed in median {statistics.median(x['noticed_s'] for x in restarts):.2f}, "
              f"full sync {sync:.2f} (baseline --sync {r['baseline_sync_s']:.2f}), daemon CPU "
              f"{statistics.median(x['daemon_cpu_s'] for x in restarts):.2f}, slapd CPU "
              f"{statistics.median(x['slapd_cpu_s'] for x in restarts):.2f}; per 1,000,000 accounts at this rate: "
              f"{sync * 1_000_000 / r['mailboxes']:.0f} s; restore: flags verified {r['restore']['done_s']:.2f} after slapd answered")


if __name__ == "__main__":
    main()
