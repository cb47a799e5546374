#!/usr/bin/env python3
"""How fast does the daemon's flag follow a mailbox, and what does that cost?

For each size (default 10,000 and 100,000 mailboxes) this builds its own world:

* a private slapd on 127.0.0.1 (tests/servers/slapd.py, the test fixture), bulk-loaded
  offline with ``slapadd``: N accounts with ``mailQuota`` 1 GiB, 1 % of them over quota
  (and flagged, as after a previous sync);
* N maildirs under /dev/shm (tmpfs: building 100k maildirs on disk takes minutes here,
  see shared/reference/benchmarking.md): ``cur/ new/ tmp/``, one message whose size is in
  its name (``,S=``), and a one-line ``maildirsize`` (a day old for the mailboxes over
  quota, as when an MDA has been refusing their mail).

Then, with the daemon (``ldapquota --foreground``, default config, i.e. ``debounce 0.5s``)
running as a child process:

* **latency**: a mailbox gets a message that puts it over quota (file in ``new/``, a line
  appended to ``maildirsize``: what a Maildir++ MDA does); the clock runs from the append
  until ``ldapsearch`` (a fresh process each poll, every 20 ms, bound as the service
  account) sees ``isOverQuota: TRUE``. Then the message is expunged (file removed, a
  negative line appended) and the clock runs until it sees ``FALSE``. ``--trials`` of
  each, each on another mailbox; p50 / p90 / p99 / max.
* **idle CPU** of the daemon over ``--idle`` seconds with nothing changing (utime+stime
  from /proc), starting ``--settle`` seconds after the first account refresh and DN
  listing are done (the trials wait for them too; their cost is reported from the log:
  the listing's duration and how far apart the daemon spaces them), and slapd's CPU over
  the same window;
* **peak RSS**: VmHWM of the daemon from /proc/PID/status at the end (its start-up full
  sync included).

The baseline is the cron recipe: ``ldapquota --sync`` run from cron every I minutes. Its
latency is the wait for the next run plus the run itself: a change at a uniformly random
moment waits U(0, I), then up to one sync duration D. We *measure* D (``--sync`` on the
same data, daemon stopped, ``--sync-runs`` times, median) and its peak RSS (os.wait4 on
that child alone) and CPU, and report p50 = I/2 + D, p90 = 0.9 I + D, p99 = 0.99 I + D,
max = I + D for I = 5 and 60 min (the recipes' range). ``--cron-live SECONDS`` also runs
the cron recipe for real — ``--sync`` on a timer of that period — and measures a few
changes the same way as the daemon's (``--cron-live-trials`` each way), as a check on
the model.

At sizes beyond what ``fs.inotify.max_user_watches`` covers (a million here, with
192,540 watches shared by every process of the user), most mailboxes are polled: the
latency trials then pick mailboxes among the first ``--watched-range`` accounts (the
start-up sync follows mailboxes in the search's order, so those are the watched ones),
and ``--polled-trials`` more each way among the last accounts show what a polled
mailbox waits (up to ``daemon.poll_interval``, 30 s by default).

Usage:  .venv/bin/python benchmarks/daemon_latency.py [--sizes 10000,100000 | --accounts 1000000]
        [--trials 50] [--idle 60] [--cron-live 60 --cron-live-trials 5] [--workdir /dev/shm]
``--watch-limit N`` (root) raises ``fs.inotify.max_user_watches`` to N for the run and puts
the old value back at the end, as README's "Running at scale" tells an operator to do:
with one watch per maildir, a million mailboxes need a million watches, and the kernel's
default (1 % of RAM's worth: 192,540 on a 24 GiB machine) leaves most of them polled.
Without it, the machine's own limit is measured.

Needs slapd, ldap-utils (scripts/setup installs them) and about 1 GB in /dev/shm at 100k.
A million maildirs (seven inodes each) need a private tmpfs with enough inodes, about
12 GB of memory: ``mount -t tmpfs -o size=16G,nr_inodes=12M lqbench /tmp/lqbench`` and
``--workdir /tmp/lqbench`` (umount it after).
"""

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("SLAPD_LOGLEVEL", "0")  # no per-operation log: the polling is heavy

from servers.slapd import Slapd, find_tool  # noqa: E402

GiB = 1024 ** 3
LIMIT = GiB
USED = 100 * 1024 ** 2  # far from full: no quotaFreeBytes (free_margin 50MiB)
OVER_USED = LIMIT + 10 * 1024 ** 2
DOMAINS = 100
POLL = 0.02
HZ = os.sysconf("SC_CLK_TCK")


def address(i: int) -> str:
    return f"u{i:06d}@d{i % DOMAINS:03d}.example"


def is_over(i: int) -> bool:
    return i % 100 == 7  # 1 %


# --------------------------------------------------------------------------- world


def build_directory(workdir: Path, n: int) -> Slapd:
    slapd = Slapd(workdir / "slapd")
    slapd.start()  # builds cn=config, ACLs (examples/slapd-acl.ldif), base entries
    slapd.stop()
    ldif = workdir / "accounts.ldif"
    # Stamped a day old, as a directory's accounts are: freshly slapadd-ed entries would
    # all fall in the daemon's first account refresh (which asks from five minutes before
    # its start-up sync), and at a million that one refresh reads every entry again.
    stamp = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() - 86400))
    with open(ldif, "w") as out:
        for i in range(n):
            uid = f"u{i:06d}"
            over = is_over(i)
            out.write(
                f"dn: uid={uid},{slapd.people_dn}\nobjectClass: inetOrgPerson\nobjectClass: testMailAccount\n"
                + ("objectClass: ldapQuotaStatus\n" if over else "")
                + f"uid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {address(i)}\nmailQuota: {LIMIT}\n"
                + ("isOverQuota: TRUE\nquotaFreeBytes: 0\n" if over else "")
                + f"createTimestamp: {stamp}\nmodifyTimestamp: {stamp}\n\n"
            )
    started = time.monotonic()
    proc = subprocess.run([find_tool("slapadd"), "-q", "-F", str(slapd.config_dir), "-b", slapd.suffix, "-l", str(ldif)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"slapadd failed: {proc.stderr}")
    print(f"  slapadd of {n} accounts: {time.monotonic() - started:.1f}s", flush=True)
    ldif.unlink()
    slapd.start()
    return slapd


def maildir_of(root: Path, i: int) -> Path:
    local, domain = address(i).split("@")
    return root / domain / local / "Maildir"


def build_maildirs(root: Path, n: int) -> None:
    started = time.monotonic()
    for i in range(n):
        path = maildir_of(root, i)
        used = OVER_USED if is_over(i) else USED
        for sub in ("cur", "new", "tmp"):
            os.makedirs(path / sub, exist_ok=True)
        # The size is in the name: a walk (Maildir++ recount) finds the same usage.
        open(path / "cur" / f"1.bench,S={used}:2,S", "w").close()
        with open(path / "maildirsize", "w") as handle:
            handle.write(f"{LIMIT}S\n{used} 1\n")
        if is_over(i):
            # Over quota for a day already (an MDA refusing mail leaves maildirsize alone):
            # its over verdict is stale, so the daemon walks it and watches it deep.
            os.utime(path / "maildirsize", (time.time() - 86400,) * 2)
    print(f"  {n} maildirs under {root}: {time.monotonic() - started:.1f}s", flush=True)


def write_config(workdir: Path, slapd: Slapd, root: Path, reader: str = "ldap3") -> Path:
    import yaml

    config = {
        "ldap": {
            "uri": slapd.uri, "bind_dn": slapd.ldapquota_dn, "bind_password_file": str(slapd.ldapquota_pw_file),
            "base_dn": slapd.people_dn, "filter": "(objectClass=inetOrgPerson)", "status_dn": slapd.ldapquota_dn,
            "reader": reader,
        },
        "accounts": {"quota_attribute": "mailQuota"},
        "mailboxes": {"root": str(root)},
        "daemon": {"pidfile": str(workdir / "ldapquota.pid")},  # everything else: defaults
        "logging": {"target": str(workdir / "daemon.log"), "level": "debug"},  # shows the DN listings
    }
    path = workdir / "ldapquota.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------- measuring


class Flags:
    """Reads isOverQuota with ldapsearch (the MTA's view), bound as the service account."""

    def __init__(self, slapd: Slapd):
        self.argv = [find_tool("ldapsearch"), "-x", "-LLL", "-H", slapd.uri, "-D", slapd.ldapquota_dn,
                     "-y", str(slapd.ldapquota_pw_file), "-s", "base", "-o", "ldif-wrap=no"]
        self.env = {"PATH": os.environ.get("PATH", ""), "LDAPCONF": str(slapd.workdir / "ldap.conf"),
                    "HOME": str(slapd.workdir)}
        self.people = slapd.people_dn

    def get(self, i: int) -> str:
        dn = f"uid=u{i:06d},{self.people}"
        out = subprocess.run(self.argv + ["-b", dn, "(objectClass=*)", "isOverQuota"], capture_output=True,
                             text=True, env=self.env).stdout
        for line in out.splitlines():
            if line.lower().startswith("isoverquota:"):
                return line.split(":", 1)[1].strip()
        return "absent"

    def wait(self, i: int, want: str, since: float, timeout: float) -> float:
        deadline = since + timeout
        while True:
            if self.get(i) == want:
                return time.monotonic() - since
            if time.monotonic() > deadline:
                return float("inf")
            time.sleep(POLL)


def deliver(path: Path, size: int, tag: str) -> Path:
    message = path / "new" / f"{time.time():.0f}.{tag},S={size}"
    open(message, "w").close()
    with open(path / "maildirsize", "a") as handle:
        handle.write(f"{size} 1\n")
    return message


def expunge(path: Path, message: Path, size: int) -> None:
    message.unlink()
    with open(path / "maildirsize", "a") as handle:
        handle.write(f"-{size} -1\n")


def latency_trials(flags: Flags, root: Path, picks, timeout: float, gap=(0.6, 1.0)):
    up, down = [], []
    for n, i in enumerate(picks):
        path = maildir_of(root, i)
        size = LIMIT  # 100 MiB + 1 GiB: over
        message = deliver(path, size, f"t{n}")
        up.append(flags.wait(i, "TRUE", time.monotonic(), timeout))
        time.sleep(random.uniform(*gap))
        expunge(path, message, size)
        down.append(flags.wait(i, "FALSE", time.monotonic(), timeout))
        time.sleep(random.uniform(0.1, 0.3))
    return up, down


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime, stime


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    return 0


def pct(values, q):
    finite = sorted(values)
    if not finite:
        return float("nan")
    k = max(0, min(len(finite) - 1, int(round(q / 100 * len(finite) + 0.5)) - 1))
    return finite[k]


def summary(values):
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99), "max": max(values)}


def run_sync_child(config: Path):
    """One `ldapquota --sync`: wall seconds, CPU seconds, peak RSS (kB) of that child alone."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(config), "--sync", "-q"],
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"--sync failed ({proc.returncode}): {out} {proc.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def cron_live(config: Path, flags: Flags, root: Path, period: float, trials: int, picks):
    """The cron recipe for real: --sync every `period` seconds; changes at random moments."""
    stop = [False]
    runs = []

    import threading

    def timer():
        next_at = time.monotonic()
        while not stop[0]:
            runs.append(run_sync_child(config)[0])
            next_at += period
            while not stop[0] and time.monotonic() < next_at:
                time.sleep(0.1)

    thread = threading.Thread(target=timer, daemon=True)
    thread.start()
    up, down = [], []
    for n, i in enumerate(picks[:trials]):
        time.sleep(random.uniform(0, period))
        path = maildir_of(root, i)
        message = deliver(path, LIMIT, f"c{n}")
        up.append(flags.wait(i, "TRUE", time.monotonic(), 3 * period))
        time.sleep(random.uniform(0, period))
        expunge(path, message, LIMIT)
        down.append(flags.wait(i, "FALSE", time.monotonic(), 3 * period))
    stop[0] = True
    thread.join()
    return up, down, runs


# --------------------------------------------------------------------------- one size


def bench_size(n: int, args) -> dict:
    print(f"\n== {n} mailboxes", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"lqbench-{n}-", dir=args.workdir))
    result = {"mailboxes": n, "workdir": str(workdir)}
    slapd = None
    daemon = None
    try:
        slapd = build_directory(workdir, n)
        root = workdir / "vmail"
        build_maildirs(root, n)
        config = write_config(workdir, slapd, root, args.reader)
        flags = Flags(slapd)
        rng = random.Random(n)

        # ---- the daemon
        started = time.monotonic()
        daemon = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(config), "--foreground"],
                                  cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(workdir / "daemon.stderr", "w"))  # noqa: SIM115 (lives as long as the daemon)
        log = workdir / "daemon.log"
        while "ready: " not in (log.read_text() if log.exists() else ""):
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited: {(workdir / 'daemon.stderr').read_text()}")
            if time.monotonic() - started > 1800:
                raise SystemExit("daemon not ready after 30 min")
            time.sleep(0.2)
        ready_at = time.monotonic()
        result["daemon_ready_s"] = ready_at - started
        result["ready_rss_mb"] = vm(daemon.pid, "VmRSS") / 1024
        result["ready_peak_rss_mb"] = vm(daemon.pid, "VmHWM") / 1024
        ready_line = [line for line in log.read_text().splitlines() if "ready: " in line][0]
        # The start-up sync follows mailboxes in the search's order (slapadd's): the first
        # ones got the watches there were (other processes of this user hold some).
        watched = int(re.search(r"(\d+) mailboxes followed with notifications", ready_line).group(1))
        watched_range = min(n, args.watched_range, int(0.95 * watched) if watched < n else n)
        picks = rng.sample([i for i in range(watched_range) if not is_over(i)], args.trials + args.cron_live_trials)
        polled_picks = []
        if watched < n and args.polled_trials:
            polled_picks = rng.sample([i for i in range(n - n // 10, n) if not is_over(i)], args.polled_trials)
        print(f"  daemon ready in {result['daemon_ready_s']:.1f}s: {ready_line.split('ready: ')[1]}; RSS "
              f"{result['ready_rss_mb']:.0f} MB (peak {result['ready_peak_rss_mb']:.0f} MB), load {os.getloadavg()[0]:.1f}",
              flush=True)
        # The trials and the idle window start after the first account refresh and its DN
        # listing (daemon.account_refresh after ready; 20 s of work at a million): their
        # cost is reported below, and the steady state is what is measured.
        while "account listing: " not in log.read_text():
            if time.monotonic() - ready_at > 600 or daemon.poll() is not None:
                raise SystemExit("no account listing within 10 min of ready")
            time.sleep(0.5)
        listed_at = time.monotonic()
        print(f"  first account refresh and DN listing done {listed_at - ready_at:.0f}s after ready", flush=True)

        gap = tuple(float(v) for v in args.gap.split(","))
        up, down = latency_trials(flags, root, picks[: args.trials], timeout=30, gap=gap)
        result["latency_set"] = summary(up)
        result["latency_clear"] = summary(down)
        result["latency_raw"] = {"set": up, "clear": down, "gap_s": gap}
        where = f" (mailboxes among the first {watched_range}: watched)" if n > watched_range else ""
        where += f", expunge {gap[0]:g}-{gap[1]:g} s after the flag was seen"
        print(f"  latency set   (s){where}: {fmt(result['latency_set'])}", flush=True)
        print(f"  latency clear (s){where}: {fmt(result['latency_clear'])}", flush=True)
        if polled_picks:
            up, down = latency_trials(flags, root, polled_picks, timeout=120)
            result["latency_polled_set"] = summary(up)
            result["latency_polled_clear"] = summary(down)
            print(f"  latency of polled mailboxes (among the last {n // 10}): set {fmt(summary(up))}; "
                  f"clear {fmt(summary(down))}", flush=True)

        # Idle: the steady state (refreshes, over-quota re-checks, nothing else).
        time.sleep(max(3.0, listed_at + args.settle - time.monotonic()))
        d0, s0 = cpu_seconds(daemon.pid), cpu_seconds(slapd.pid)
        time.sleep(args.idle)
        d1, s1 = cpu_seconds(daemon.pid), cpu_seconds(slapd.pid)
        result["idle_cpu_pct"] = 100 * (d1 - d0) / args.idle
        result["idle_slapd_cpu_pct"] = 100 * (s1 - s0) / args.idle
        result["peak_rss_mb"] = vm(daemon.pid, "VmHWM") / 1024
        result["rss_mb"] = vm(daemon.pid, "VmRSS") / 1024
        print(f"  idle CPU over {args.idle}s: daemon {result['idle_cpu_pct']:.2f}% of one core, "
              f"slapd {result['idle_slapd_cpu_pct']:.2f}% (load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"  daemon RSS: peak {result['peak_rss_mb']:.0f} MB, now {result['rss_mb']:.0f} MB", flush=True)
        listings = re.findall(r"account listing: \d+ accounts, \d+ gone, ([\d.]+)s; next in (\d+)s", log.read_text())
        if listings:
            took, every = float(listings[0][0]), float(listings[0][1])
            result["dn_listing"] = {"seconds": took, "every_s": every, "amortized_cpu_pct_max": 100 * took / every}
            print(f"  DN listing (deleted accounts): {took:.2f}s every {every:.0f}s, at most "
                  f"{100 * took / every:.2f}% of a core on average", flush=True)
        daemon.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        result["daemon_exit"] = daemon.wait(60)
        result["daemon_stop_s"] = time.monotonic() - t0
        daemon = None

        # ---- the baseline: ldapquota --sync, as cron runs it
        if not args.sync_runs:
            return result
        runs = [run_sync_child(config) for _ in range(args.sync_runs)]
        duration = statistics.median(r[0] for r in runs)
        result["sync_s"] = {"median": duration, "min": min(r[0] for r in runs), "max": max(r[0] for r in runs)}
        result["sync_cpu_s"] = statistics.median(r[1] for r in runs)
        result["sync_peak_rss_mb"] = max(r[2] for r in runs) / 1024
        print(f"  ldapquota --sync: {duration:.1f}s (min {result['sync_s']['min']:.1f}, max {result['sync_s']['max']:.1f}), "
              f"CPU {result['sync_cpu_s']:.1f}s, peak RSS {result['sync_peak_rss_mb']:.0f} MB", flush=True)
        cron = {}
        for minutes in (5, 60):
            interval = minutes * 60
            cron[f"{minutes}min"] = {
                "p50": interval * 0.5 + duration, "p90": interval * 0.9 + duration,
                "p99": interval * 0.99 + duration, "max": interval + duration,
                "cpu_pct": 100 * result["sync_cpu_s"] / interval,
            }
            print(f"  cron every {minutes:2d} min (model U(0,I)+D), latency (s): {fmt(cron[f'{minutes}min'])}; "
                  f"CPU {cron[f'{minutes}min']['cpu_pct']:.2f}% of one core", flush=True)
        result["cron_model"] = cron
        if args.cron_live:
            up, down, sync_runs = cron_live(config, flags, root, args.cron_live, args.cron_live_trials,
                                            picks[args.trials:])
            result["cron_live"] = {"period_s": args.cron_live, "set": summary(up), "clear": summary(down),
                                   "sync_runs": len(sync_runs)}
            print(f"  cron live, --sync every {args.cron_live:g}s: set {fmt(summary(up))}; clear {fmt(summary(down))}",
                  flush=True)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if slapd is not None:
            slapd.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


WATCH_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


@contextlib.contextmanager
def watch_limit(wanted):
    """fs.inotify.max_user_watches raised to ``wanted`` (never lowered) for the block."""
    old = int(WATCH_LIMIT.read_text())
    if wanted is None or wanted <= old:
        yield old
        return
    WATCH_LIMIT.write_text(f"{wanted}\n")
    print(f"fs.inotify.max_user_watches raised from {old} to {wanted} for this run", flush=True)
    try:
        yield wanted
    finally:
        WATCH_LIMIT.write_text(f"{old}\n")
        print(f"fs.inotify.max_user_watches back to {old}", flush=True)


def fmt(s):
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items() if k != "cpu_pct")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--accounts", type=int, help="one size (overrides --sizes)")
    parser.add_argument("--gap", default="0.6,1.0",
                        help="seconds (low,high) from seeing the flag set to the expunge; past daemon.debounce (0.5 s) "
                             "the expunge is the first change of a quiet mailbox, below it (0.1,0.3: the runs before "
                             "this option) the second change of a burst, measured at the burst's end")
    parser.add_argument("--watched-range", type=int, default=100_000,
                        help="latency trials pick mailboxes among the first this many accounts (the watched ones)")
    parser.add_argument("--polled-trials", type=int, default=5,
                        help="trials each way on mailboxes past the watch limit (polled), when there are any")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--sync-runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=30.0,
                        help="start the idle window this long after the first DN listing is done (s)")
    parser.add_argument("--cron-live", type=float, default=0.0, help="also run --sync on a timer of this period (s)")
    parser.add_argument("--cron-live-trials", type=int, default=0)
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--reader", choices=["ldap3", "python-ldap"], default="ldap3",
                        help="ldap.reader of the daemon and of the --sync baseline (python-ldap: the [fast] extra)")
    parser.add_argument("--watch-limit", type=int,
                        help="raise fs.inotify.max_user_watches to this for the run (root; restored at the end)")
    args = parser.parse_args()
    if args.cron_live and not args.cron_live_trials:
        args.cron_live_trials = 5
    print(f"ldapquota daemon benchmark: {os.cpu_count()} CPUs, maildirs and slapd under {args.workdir} (tmpfs), "
          f"fs.inotify.max_user_watches={WATCH_LIMIT.read_text().strip()}, ldap.reader {args.reader}")
    sizes = [args.accounts] if args.accounts else [int(size) for size in args.sizes.split(",")]
    print(f"load average at the start: {os.getloadavg()[0]:.1f}", flush=True)
    with watch_limit(args.watch_limit):
        results = [bench_size(size, args) for size in sizes]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print("\nsummary (seconds; CPU in % of one core; RSS in MB)")
    for r in results:
        print(f"  {r['mailboxes']:>7} mailboxes: daemon set p50 {r['latency_set']['p50']:.2f} p90 {r['latency_set']['p90']:.2f} "
              f"p99 {r['latency_set']['p99']:.2f} max {r['latency_set']['max']:.2f} | clear p50 {r['latency_clear']['p50']:.2f} "
              f"p90 {r['latency_clear']['p90']:.2f} p99 {r['latency_clear']['p99']:.2f} max {r['latency_clear']['max']:.2f} | "
              f"idle CPU {r['idle_cpu_pct']:.2f}% | peak RSS {r['peak_rss_mb']:.0f} | ready in {r['daemon_ready_s']:.0f}")
        if "cron_model" not in r:
            continue
        c5, c60 = r["cron_model"]["5min"], r["cron_model"]["60min"]
        print(f"  {'':>7}   cron 5 min: p50 {c5['p50']:.0f} p90 {c5['p90']:.0f} max {c5['max']:.0f}, CPU {c5['cpu_pct']:.2f}% | "
              f"cron 60 min: p50 {c60['p50']:.0f} p90 {c60['p90']:.0f} max {c60['max']:.0f}, CPU {c60['cpu_pct']:.2f}% | "
              f"--sync {r['sync_s']['median']:.1f}s, peak RSS {r['sync_peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
