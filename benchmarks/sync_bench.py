"""Benchmark of ``ldapquota --sync`` against its floor and the naive way, in one run.

Builds its own data: N accounts bulk-loaded into a private slapd with ``slapadd`` and N
maildirs with a ``maildirsize`` file (under /dev/shm by default: creating 100,000 small
files on disk takes minutes here, see shared/reference/benchmarking.md). 5 % of the
mailboxes are over quota. Then, each run in its own child process (so its peak RSS is its
own, read with wait4):

* cold       the first sync: no flags yet (writes the over-quota 5 %)
* unchanged  a sync with nothing changed (target: ≤ 1.3 × floor, zero account writes)
* changed    a sync after 5 % of the mailboxes changed state
* floor      a bare ldap3 paged search of the same entries and attributes, plus a bare
             read of the same maildirsize files: the least any sync must do in Python
* C floor    OpenLDAP's own ldapsearch (C) over the same entries and attributes (paged,
             -E pr=1000/noprompt, to /dev/null), then ``find | xargs cat`` of the same
             maildirsize files: the physical floor of the machine
* the parts  ldap3 search, C search (ldapsearch) and C read (cat) alone
* python-ldap  a bare paged search with python-ldap (C decoding, Debian's python3-ldap
             under /usr/bin/python3; skipped when not installed): would a C-decoding
             path bring a sync near the C floor?
* naive      the classic script: write every account's flag, every run (--skip-naive at a
             million: at the measured one-at-a-time rate it takes N / rate seconds)
* writes/s   the cold sync's kind of write (isOverQuota set, with the Assertion control)
             on 20,000 accounts the syncs left alone, one at a time (write_state) and
             pipelined (write_states), interleaved, each set back between rounds

"unchanged" and the floors are interleaved over several rounds; the median and min–max
are reported. LDAP writes are counted from slapd's stats log. The machine is shared:
run it under ``nice``; the load average is printed with the figures.

    .venv/bin/python benchmarks/sync_bench.py [--accounts 100000] [--rounds 3] [--dir /dev/shm]

A million maildirs take three million inodes: more than /dev/shm allows here (3.08 M, shared
with the other users). Give --dir a private tmpfs instead, e.g.
``mount -t tmpfs -o size=16G,nr_inodes=12M lqbench /tmp/lqbench`` (and umount it after).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import config_dict, write_config  # noqa: E402
from servers.slapd import Slapd, _tool, find_tool  # noqa: E402

DOMAINS = [f"d{n}.example.org" for n in range(50)]
QUOTA = 100_000_000  # bytes; far from full mailboxes stay outside the free margin
FREE_MARGIN = "1MB"
WRITE_RATE_ACCOUNTS = 20_000

FLOOR_CODE = r"""
import os, sys, ssl, ldap3
uri, bind_dn, pw_file, base, root = sys.argv[1:6]
attributes = sys.argv[6].split(",")
password = open(pw_file).read().rstrip("\n")
conn = ldap3.Connection(ldap3.Server(uri, get_info=ldap3.NONE), bind_dn, password, auto_bind=True, return_empty_attributes=False)
read = entries = 0
cookie = None
while True:
    conn.search(base, "(objectClass=inetOrgPerson)", attributes=attributes, paged_size=1000, paged_cookie=cookie)
    for response in conn.response:
        if response["type"] != "searchResEntry":
            continue
        entries += 1
        local, _, domain = response["attributes"]["mail"][0].rpartition("@")
        if not root:
            continue  # the search alone
        try:
            with open(os.path.join(root, domain, local, "Maildir", "maildirsize"), "rb") as handle:
                read += len(handle.read(5121))
        except FileNotFoundError:
            pass
    cookie = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
    if not cookie:
        break
print(entries, read)
"""

C_FLOOR_CODE = r"""
set -e
if [ "$8" != read ]; then
  "$1" -x -LLL -H "$2" -D "$3" -y "$4" -b "$5" -E pr=1000/noprompt -o ldif-wrap=no "(objectClass=inetOrgPerson)" $7 > /dev/null
fi
if [ "$8" != search ]; then
  find "$6" -name maildirsize -print0 | xargs -0 cat > /dev/null
fi
"""

PYTHON_LDAP_CODE = r"""
import sys, ldap
from ldap.controls import SimplePagedResultsControl
uri, bind_dn, pw_file, base = sys.argv[1:5]
attributes = sys.argv[5].split(",")
conn = ldap.initialize(uri)
conn.simple_bind_s(bind_dn, open(pw_file).read().rstrip("\n"))
page = SimplePagedResultsControl(True, size=1000, cookie=b"")
entries = 0
while True:
    msgid = conn.search_ext(base, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", attributes, serverctrls=[page])
    _, data, _, controls = conn.result3(msgid)
    entries += sum(1 for dn, _ in data if dn)
    cookie = next((c.cookie for c in controls if c.controlType == SimplePagedResultsControl.controlType), b"")
    if not cookie:
        break
    page.cookie = cookie
print(entries)
"""

WRITE_RATE_CODE = r"""
import sys, time, json
from ldapquota.config import load_config
from ldapquota.flagstore import FlagStore
from ldapquota.ldap.store import LdapStore
from ldapquota.quota import QuotaState
from ldapquota.sync import Change
import os
config_path, dn_file, rounds, slapd_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dns = open(dn_file).read().split()
config = load_config(config_path)
fine, full = QuotaState(False, None), QuotaState(True, 0)
rates = {"one at a time": [], "pipelined": []}
# Where the time goes: this process's CPU (all its threads: ldap3's ASYNC reader too) and
# slapd's, per second of each counted run. A side at ~100 % of a core is the limit.
cpu = {"one at a time": [], "pipelined": []}
HZ = os.sysconf("SC_CLK_TCK")
def slapd_cpu():
    fields = open(f"/proc/{slapd_pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / HZ
def own_cpu():
    times = os.times()
    return times.user + times.system
with LdapStore(config.ldap) as store:
    def run(kind, old, new, has_class):
        changes = [Change(dn, dn, old, new, has_class, "bench") for dn in dns]
        started, client0, server0 = time.monotonic(), own_cpu(), slapd_cpu()
        if kind == "one at a time":
            outcomes = list(FlagStore.write_states(store, changes, if_unchanged=True))
        else:
            outcomes = list(store.write_states(changes, if_unchanged=True))
        took = time.monotonic() - started
        assert all(problem is None for _, problem in outcomes), [p for _, p in outcomes if p][:3]
        return len(dns) / took, ((own_cpu() - client0) / took, (slapd_cpu() - server0) / took)
    # Warm-up (not counted): the class added, the flag set and back.
    run("pipelined", fine, full, False)
    run("pipelined", full, fine, True)
    for n in range(rounds):
        order = ["one at a time", "pipelined"] if n % 2 == 0 else ["pipelined", "one at a time"]
        for kind in order:
            # The cold sync's write (the flag set, conditionally), then back.
            rate, shares = run(kind, fine, full, True)
            rates[kind].append(rate)
            cpu[kind].append(shares)
            run("pipelined", full, fine, True)
print(json.dumps({"rates": rates, "cpu": cpu}))
"""

NAIVE_CODE = r"""
import sys, ldap3
uri, bind_dn, pw_file, base = sys.argv[1:5]
password = open(pw_file).read().rstrip("\n")
conn = ldap3.Connection(ldap3.Server(uri, get_info=ldap3.NONE), bind_dn, password, auto_bind=True, return_empty_attributes=False)
dns = []
cookie = None
while True:
    conn.search(base, "(objectClass=inetOrgPerson)", attributes=["isOverQuota"], paged_size=1000, paged_cookie=cookie)
    dns.extend(r["dn"] for r in conn.response if r["type"] == "searchResEntry")
    cookie = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
    if not cookie:
        break
written = 0
for dn in dns:
    # The classic script: every account gets its flag written on every run (with the
    # auxiliary class added where the entry lacks it: objectClassViolation, 65).
    flag = {"isOverQuota": [(ldap3.MODIFY_REPLACE, ["FALSE"])]}
    conn.modify(dn, flag)
    if conn.result["result"] == 65:
        conn.modify(dn, dict(flag, objectClass=[(ldap3.MODIFY_ADD, ["ldapQuotaStatus"])]))
    written += conn.result["result"] == 0
print(written)
"""


def address(n: int) -> str:
    return f"user{n}@{DOMAINS[n % len(DOMAINS)]}"


def write_maildirsize(root: Path, n: int, used: int, count: int) -> None:
    local, _, domain = address(n).rpartition("@")
    path = root / domain / local / "Maildir" / "maildirsize"
    path.write_text(f"{QUOTA}S\n{used} {count}\n")


def build(workdir: Path, accounts: int, over: set) -> tuple:
    slapd = Slapd(workdir / "slapd")
    slapd.start()  # config, ACLs, base tree
    slapd.stop()
    ldif = workdir / "accounts.ldif"
    with open(ldif, "w") as out:
        for n in range(accounts):
            local = f"user{n}"
            out.write(
                f"dn: uid={local},{slapd.people_dn}\nobjectClass: inetOrgPerson\nobjectClass: testMailAccount\n"
                f"uid: {local}\ncn: {local}\nsn: {local}\nmail: {address(n)}\nmailQuota: {QUOTA}\n\n"
            )
    started = time.monotonic()
    subprocess.run([_tool("slapadd"), "-q", "-F", str(slapd.config_dir), "-b", slapd.suffix, "-l", str(ldif)], check=True)
    print(f"slapadd of {accounts} accounts: {time.monotonic() - started:.1f} s", flush=True)
    slapd.start()

    root = workdir / "vmail"
    started = time.monotonic()
    for n in range(accounts):
        local, _, domain = address(n).rpartition("@")
        (root / domain / local / "Maildir").mkdir(parents=True)
        used = QUOTA + 5000 if n in over else random.randrange(1000, QUOTA // 2)
        write_maildirsize(root, n, used, 10)
    print(f"{accounts} maildirs under {root}: {time.monotonic() - started:.1f} s", flush=True)
    return slapd, root


def _descendants(pid: int) -> list:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(argv, env=None) -> tuple:
    """(seconds, peak RSS MiB of the process, peak RSS MiB of the whole tree, stdout).

    Peaks are VmHWM from /proc, sampled every 0.1 s (it only grows, so the last sample
    misses at most the last 0.1 s of growth), for the process and each descendant
    (forkserver workers, ldapsearch under sh). Not ru_maxrss from wait4: Linux carries
    the high-water mark of the address space replaced by exec into it, so every child
    would show this benchmark's own size."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO))
    peaks = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.1):
            for pid in [proc.pid] + _descendants(proc.pid):
                peaks[pid] = max(peaks.get(pid, 0), _hwm_kib(pid))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # Read the pipes ourselves so that wait4 (not Popen) reaps the child.
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, _ = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    stop.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv[:5]))} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    own = peaks.get(proc.pid, 0) / 1024
    return seconds, own, sum(peaks.values()) / 1024, out.decode()


def write_rates(workdir: Path, config: Path, env: dict, candidates: list, people_dn: str, rounds: int, slapd_pid: int) -> dict:
    """Writes per second, one at a time and pipelined, on accounts the syncs left alone."""
    picked = candidates[:: max(1, len(candidates) // WRITE_RATE_ACCOUNTS)][:WRITE_RATE_ACCOUNTS]
    dn_file = workdir / "write-rate-dns"
    dn_file.write_text("".join(f"uid=user{k},{people_dn}\n" for k in picked))
    proc = subprocess.run([sys.executable, "-c", WRITE_RATE_CODE, str(config), str(dn_file), str(rounds), str(slapd_pid)],
                          capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"write rate run failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm", help="where maildirs and slapd data go (default /dev/shm)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive write-everything run")
    args = parser.parse_args()
    random.seed(42)
    n = args.accounts
    over = set(random.sample(range(n), n // 20))
    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-bench-", dir=args.dir))
    slapd = None
    try:
        slapd, root = build(workdir, n, over)
        policy = {"max_changes": "100%", "free_margin": FREE_MARGIN}
        config = write_config(workdir / "ldapquota.yaml", config_dict(slapd, root, policy=policy))
        config0 = write_config(workdir / "ldapquota-w0.yaml", config_dict(slapd, root, policy=policy, mailboxes={"workers": 0}))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        sync = [sys.executable, "-m", "ldapquota", "-c", str(config), "--sync", "-q"]
        sync0 = [sys.executable, "-m", "ldapquota", "-c", str(config0), "--sync", "-q"]
        from ldapquota.config import load_config
        from ldapquota.evaluation import Evaluator

        evaluator = Evaluator(load_config(str(config)))
        attributes = ",".join(evaluator.attributes)
        evaluator.close()
        floor = [sys.executable, "-c", FLOOR_CODE, slapd.uri, slapd.ldapquota_dn, str(slapd.ldapquota_pw_file),
                 slapd.people_dn, str(root), attributes]
        c_floor = ["sh", "-c", C_FLOOR_CODE, "c-floor", find_tool("ldapsearch"), slapd.uri, slapd.ldapquota_dn,
                   str(slapd.ldapquota_pw_file), slapd.people_dn, str(root), attributes.replace(",", " "), "both"]
        python_ldap = None
        if subprocess.run(["/usr/bin/python3", "-c", "import ldap"], capture_output=True).returncode == 0:
            python_ldap = ["/usr/bin/python3", "-c", PYTHON_LDAP_CODE, slapd.uri, slapd.ldapquota_dn,
                           str(slapd.ldapquota_pw_file), slapd.people_dn, attributes]
        results = {}

        def measure(name, argv):
            mark = slapd.log_mark()
            seconds, rss, tree, out = run_measured(argv, env)
            writes = len(slapd.writes_since(mark, under=slapd.people_dn))
            results.setdefault(name, []).append((seconds, rss, tree, writes, os.getloadavg()[0]))
            print(f"  {name:12s} {seconds:7.2f} s  {n / seconds:8.0f} accounts/s  writes={writes:6d}  "
                  f"peak RSS {rss:6.1f} MiB (with workers {tree:6.1f} MiB)  load {os.getloadavg()[0]:.1f}", flush=True)
            return out

        print(f"\nruns ({n} accounts, {len(over)} over quota, maildirs in {args.dir}):", flush=True)
        measure("cold", sync)
        for _ in range(args.rounds):
            measure("floor", floor)
            measure("C floor", c_floor)
            # The parts: each search alone, the C read alone.
            measure("ldap3 search", floor[:-2] + ["", attributes])
            measure("C search", c_floor[:-1] + ["search"])
            if python_ldap:
                measure("python-ldap", python_ldap)
            measure("C read", c_floor[:-1] + ["read"])
            measure("unchanged", sync)
            measure("unchanged/w0", sync0)
        # 5 % change state: half of the over-quota mailboxes are emptied, as many others fill up.
        changed = sorted(over)[: len(over) // 2]
        fresh = random.sample(sorted(set(range(n)) - over), len(changed))
        for k in changed:
            write_maildirsize(root, k, 1000, 1)
        for k in fresh:
            write_maildirsize(root, k, QUOTA + 1, 11)
        measure("changed", sync)
        if not args.skip_naive:
            measure("naive", [sys.executable, "-c", NAIVE_CODE, slapd.uri, slapd.ldapquota_dn, str(slapd.ldapquota_pw_file), slapd.people_dn])
        rates = write_rates(workdir, config, env, sorted(set(range(n)) - over - set(fresh)), slapd.people_dn, args.rounds,
                            slapd.pid)

        print(f"\nsummary ({n} accounts; median of {args.rounds} rounds where repeated, min–max in brackets; "
              f"load average over the runs {statistics.median(row[4] for rows in results.values() for row in rows):.1f} "
              f"on {os.cpu_count()} CPUs):")
        floor_median = statistics.median(row[0] for row in results["floor"])
        c_median = statistics.median(row[0] for row in results["C floor"])
        for name, rows in results.items():
            seconds = [row[0] for row in rows]
            median = statistics.median(seconds)
            spread = f"[{min(seconds):.2f}–{max(seconds):.2f}]" if len(rows) > 1 else ""
            rss = max(row[1] for row in rows)
            tree = max(row[2] for row in rows)
            writes = rows[-1][3]
            print(f"  {name:12s} {median:7.2f} s {spread:17s} {n / median:8.0f} accounts/s  "
                  f"{median / floor_median:5.2f}× floor {median / c_median:5.2f}× C floor  LDAP writes {writes:7d}  "
                  f"peak RSS {rss:6.1f} MiB, with workers {tree:6.1f} MiB")
        print("  (unchanged: measuring in worker processes, mailboxes.workers auto; "
              "unchanged/w0: measuring in the main process)")
        cpu, rates = rates["cpu"], rates["rates"]
        one, piped = statistics.median(rates["one at a time"]), statistics.median(rates["pipelined"])
        print(f"  writes/s     one at a time {one:6.0f} [{min(rates['one at a time']):.0f}–{max(rates['one at a time']):.0f}], "
              f"pipelined {piped:6.0f} [{min(rates['pipelined']):.0f}–{max(rates['pipelined']):.0f}]: {piped / one:.2f}×")
        for kind, shares in cpu.items():
            client, server = statistics.median(c for c, _ in shares), statistics.median(s for _, s in shares)
            print(f"  {'':12s} {kind}: ldapquota {100 * client:.0f} % of a core, slapd {100 * server:.0f} % "
                  f"(CPU per write: {1e6 * client / (one if kind == 'one at a time' else piped):.0f} µs client, "
                  f"{1e6 * server / (one if kind == 'one at a time' else piped):.0f} µs slapd)")
        if args.skip_naive:
            print(f"  naive        not run: {n} writes at {one:.0f}/s one at a time ≈ {n / one:.0f} s")
        return 0
    finally:
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
