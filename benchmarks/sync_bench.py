"""Benchmark of ``ldapquota --sync`` against its floor and the naive way, in one run.

Builds its own data: N accounts bulk-loaded into a private slapd with ``slapadd`` and N
maildirs with a ``maildirsize`` file (under /dev/shm by default: creating 100,000 small
files on disk takes minutes here, see shared/reference/benchmarking.md). 5 % of the
mailboxes are over quota. Then, each run in its own child process (so its peak RSS is its
own, read with wait4):

* cold       the first sync: no flags yet (writes the over-quota 5 %)
* unchanged  a sync with nothing changed (target: ≤ 1.0 × the ldap3 floor, zero account writes)
* changed    a sync after 5 % of the mailboxes changed state
* floor      a bare ldap3 paged search of the same entries and attributes, plus a bare
             read of the same maildirsize files: the least any sync must do in Python
             with ldap3
* pl floor   the same with python-ldap's paged search (libldap decodes in C): the least
             a sync reading with ``ldap.reader: python-ldap`` must do in Python
* C floor    OpenLDAP's own ldapsearch (C) over the same entries and attributes (paged,
             -E pr=1000/noprompt, to /dev/null), then ``xargs cat`` of the same
             maildirsize files (their paths listed beforehand, untimed): the physical
             floor of the machine
* the parts  ldap3 search, python-ldap search, C search (ldapsearch) and C read (cat) alone
* naive      the classic script: write every account's flag, every run (--skip-naive at a
             million: at the measured one-at-a-time rate it takes N / rate seconds)
* writes/s   the cold sync's kind of write (isOverQuota set, with the Assertion control)
             on 20,000 accounts the syncs left alone, one at a time (write_state) and
             pipelined (write_states), interleaved, each set back between rounds

The syncs run with each ``--reader`` (ldap.reader; both by default when python-ldap is
installed, rows suffixed /pl for python-ldap): each reader's cold sync starts from the
same freshly loaded directory, and its changed sync flips the same 5 % (the second puts
back what the first changed). "unchanged" and the floors are interleaved over several
rounds; the median and min–max are reported. LDAP writes are counted from slapd's stats
log. The machine is shared: run it under ``nice``; the load average is printed with the
figures.

    .venv/bin/python benchmarks/sync_bench.py [--accounts 100000] [--rounds 3] [--dir /dev/shm]
                                              [--reader ldap3|python-ldap|both]

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
  xargs -0 cat < "$6" > /dev/null
fi
"""

PYTHON_LDAP_CODE = r"""
import os, sys, ldap
from ldap.controls.libldap import SimplePagedResultsControl
uri, bind_dn, pw_file, base, root = sys.argv[1:6]
attributes = sys.argv[6].split(",")
conn = ldap.initialize(uri)
conn.simple_bind_s(bind_dn, open(pw_file).read().rstrip("\n"))
page = SimplePagedResultsControl(True, size=1000, cookie=b"")
read = entries = 0
while True:
    msgid = conn.search_ext(base, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", attributes, serverctrls=[page])
    _, data, _, controls = conn.result3(msgid, resp_ctrl_classes={page.controlType: SimplePagedResultsControl})
    for dn, found in data:
        if not dn:
            continue
        entries += 1
        if not root:
            continue  # the search alone
        local, _, domain = found["mail"][0].decode().rpartition("@")
        try:
            with open(os.path.join(root, domain, local, "Maildir", "maildirsize"), "rb") as handle:
                read += len(handle.read(5121))
        except FileNotFoundError:
            pass
    page.cookie = next((c.cookie for c in controls if c.controlType == page.controlType), b"")
    if not page.cookie:
        break
print(entries, read)
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
    """The mailbox's ``maildirsize``, and one message in ``cur/`` whose name carries the
    same size: a walk (Maildir++ recount) must agree with the file, as it does in a real
    store. Without it, an over-quota ``maildirsize`` left 15 minutes old is walked (the
    Courier rule, docs/maildir-and-mta-facts.md) and found empty, and a sync then clears
    every over-quota flag in the middle of the benchmark."""
    local, _, domain = address(n).rpartition("@")
    maildir = root / domain / local / "Maildir"
    cur = maildir / "cur"
    cur.mkdir(exist_ok=True)
    for old in cur.iterdir():
        old.unlink()
    (cur / f"1.bench,S={used}:2,S").touch()
    (maildir / "maildirsize").write_text(f"{QUOTA}S\n{used} {count}\n")


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


READER_SUFFIX = {"ldap3": "", "python-ldap": "/pl"}


def readers_wanted(choice):
    """The ldap.reader values to run the syncs with."""
    installed = subprocess.run([sys.executable, "-c", "import ldap"], capture_output=True).returncode == 0
    if choice is None:
        choice = "both" if installed else "ldap3"
        if not installed:
            print("python-ldap is not installed here: the syncs read with ldap3 only "
                  "(pip install -e '.[fast]' for both)", flush=True)
    wanted = ["ldap3", "python-ldap"] if choice == "both" else [choice]
    if "python-ldap" in wanted and not installed:
        raise SystemExit(f"--reader {choice}: python-ldap is not installed for {sys.executable} (pip install -e '.[fast]')")
    return wanted


def sync_commands(workdir: Path, slapd, root: Path, readers: list) -> dict:
    """reader → (sync with workers auto, sync measuring in the main process)."""
    policy = {"max_changes": "100%", "free_margin": FREE_MARGIN}
    commands = {}
    for reader in readers:
        suffix = reader.replace("-", "")
        ldap = {"reader": reader}
        config = write_config(workdir / f"ldapquota-{suffix}.yaml", config_dict(slapd, root, policy=policy, ldap=ldap))
        config0 = write_config(workdir / f"ldapquota-{suffix}-w0.yaml",
                               config_dict(slapd, root, policy=policy, ldap=ldap, mailboxes={"workers": 0}))
        commands[reader] = [[sys.executable, "-m", "ldapquota", "-c", str(path), "--sync", "-q"] for path in (config, config0)]
    return commands


def print_summary(n: int, results: dict, rounds: int) -> None:
    print(f"\nsummary ({n} accounts; median of {rounds} rounds where repeated, min–max in brackets; "
          f"load average over the runs {statistics.median(row[4] for rows in results.values() for row in rows):.1f} "
          f"on {os.cpu_count()} CPUs):")
    floors = {name: statistics.median(row[0] for row in results[name]) for name in ("floor", "pl floor", "C floor")
              if name in results}
    for name, rows in results.items():
        seconds = [row[0] for row in rows]
        median = statistics.median(seconds)
        spread = f"[{min(seconds):.2f}–{max(seconds):.2f}]" if len(rows) > 1 else ""
        ratios = "".join(f"{median / floor:5.2f}× {label} " for label, floor in floors.items())
        print(f"  {name:16s} {median:7.2f} s {spread:17s} {n / median:8.0f} accounts/s  {ratios} "
              f"LDAP writes {rows[-1][3]:7d}  peak RSS {max(row[1] for row in rows):6.1f} MiB, "
              f"with workers {max(row[2] for row in rows):6.1f} MiB")
    print("  (/pl: read with ldap.reader python-ldap; unchanged: measuring in worker processes, mailboxes.workers "
          "auto; unchanged/w0: measuring in the main process)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm", help="where maildirs and slapd data go (default /dev/shm)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive write-everything run")
    parser.add_argument("--reader", choices=["ldap3", "python-ldap", "both"],
                        help="ldap.reader of the syncs (default: both when python-ldap is installed)")
    args = parser.parse_args()
    readers = readers_wanted(args.reader)
    random.seed(42)
    n = args.accounts
    over = set(random.sample(range(n), n // 20))
    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-bench-", dir=args.dir))
    slapd = None
    try:
        slapd, root = build(workdir, n, over)
        pristine = slapd.slapcat() if len(readers) > 1 else None  # each reader's cold sync starts from it
        syncs = sync_commands(workdir, slapd, root, readers)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        from ldapquota.config import load_config
        from ldapquota.evaluation import Evaluator

        evaluator = Evaluator(load_config(str(syncs[readers[0]][0][4])))
        attributes = ",".join(evaluator.attributes)
        evaluator.close()
        bind = [slapd.uri, slapd.ldapquota_dn, str(slapd.ldapquota_pw_file), slapd.people_dn]
        floor = [sys.executable, "-c", FLOOR_CODE, *bind, str(root), attributes]
        # The files cat reads, named in advance (as the floors in Python compute each path
        # from the address): `find` would add a walk of every directory, which no sync does.
        paths = workdir / "maildirsize-paths"
        with open(paths, "w") as listing:
            for k in range(n):
                local, _, domain = address(k).rpartition("@")
                listing.write(f"{root}/{domain}/{local}/Maildir/maildirsize\0")
        c_floor = ["sh", "-c", C_FLOOR_CODE, "c-floor", find_tool("ldapsearch"), *bind, str(paths),
                   attributes.replace(",", " "), "both"]
        python_ldap = None
        if subprocess.run([sys.executable, "-c", "import ldap"], capture_output=True).returncode == 0:
            python_ldap = [sys.executable, "-c", PYTHON_LDAP_CODE, *bind, str(root), attributes]
        results = {}

        def measure(name, argv):
            mark = slapd.log_mark()
            seconds, rss, tree, out = run_measured(argv, env)
            writes = len(slapd.writes_since(mark, under=slapd.people_dn))
            results.setdefault(name, []).append((seconds, rss, tree, writes, os.getloadavg()[0]))
            print(f"  {name:16s} {seconds:7.2f} s  {n / seconds:8.0f} accounts/s  writes={writes:6d}  "
                  f"peak RSS {rss:6.1f} MiB (with workers {tree:6.1f} MiB)  load {os.getloadavg()[0]:.1f}", flush=True)
            return out

        print(f"\nruns ({n} accounts, {len(over)} over quota, maildirs in {args.dir}, readers {', '.join(readers)}):",
              flush=True)
        for k, reader in enumerate(readers):
            if k:
                slapd.restore(pristine)  # the directory as loaded: no flags yet
            measure("cold" + READER_SUFFIX[reader], syncs[reader][0])
        for _ in range(args.rounds):
            measure("floor", floor)
            if python_ldap:
                measure("pl floor", python_ldap)
            measure("C floor", c_floor)
            # The parts: each search alone, the C read alone.
            measure("ldap3 search", floor[:-2] + ["", attributes])
            if python_ldap:
                measure("pl search", python_ldap[:-2] + ["", attributes])
            measure("C search", c_floor[:-1] + ["search"])
            measure("C read", c_floor[:-1] + ["read"])
            for reader in readers:
                measure("unchanged" + READER_SUFFIX[reader], syncs[reader][0])
                measure("unchanged/w0" + READER_SUFFIX[reader], syncs[reader][1])
        # 5 % change state: half of the over-quota mailboxes are emptied, as many others
        # fill up; the next reader's changed sync finds them put back as they were.
        changed = sorted(over)[: len(over) // 2]
        fresh = random.sample(sorted(set(range(n)) - over), len(changed))
        for k, reader in enumerate(readers):
            emptied, filled = (changed, fresh) if k % 2 == 0 else (fresh, changed)
            for account in emptied:
                write_maildirsize(root, account, 1000, 1)
            for account in filled:
                write_maildirsize(root, account, QUOTA + 1, 11)
            measure("changed" + READER_SUFFIX[reader], syncs[reader][0])
        if not args.skip_naive:
            measure("naive", [sys.executable, "-c", NAIVE_CODE, *bind])
        rates = write_rates(workdir, syncs[readers[0]][0][4], env, sorted(set(range(n)) - over - set(fresh)),
                            slapd.people_dn, args.rounds, slapd.pid)

        print_summary(n, results, args.rounds)
        cpu, rates = rates["cpu"], rates["rates"]
        one, piped = statistics.median(rates["one at a time"]), statistics.median(rates["pipelined"])
        print(f"  writes/s     one at a time {one:6.0f} [{min(rates['one at a time']):.0f}–{max(rates['one at a time']):.0f}], "
              f"pipelined {piped:6.0f} [{min(rates['pipelined']):.0f}–{max(rates['pipelined']):.0f}]: {piped / one:.2f}×")
        for kind, shares in cpu.items():
            client, server = statistics.median(c for c, _ in shares), statistics.median(s for _, s in shares)
            print(f"  {'':16s} {kind}: ldapquota {100 * client:.0f} % of a core, slapd {100 * server:.0f} % "
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
