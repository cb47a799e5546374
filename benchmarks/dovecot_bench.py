#!/usr/bin/env python3
"""Dovecot as the usage source: what a full sync costs, and how fast the hooks move the flag.

The world (built here, torn down at the end): a private slapd (tests/servers/slapd.py)
bulk-loaded with ``slapadd`` — N accounts, ``mailQuota`` 1 GiB, 1 % of them at 20,000
bytes and filled past it (flagged), ``--trials`` of them at 100,000 bytes filled to 60 %
for the latency trials — and a private Dovecot 2.3 (tests/servers/dovecot.py: LDAP
userdb, maildir store, count backend, the doveadm HTTP API, and examples/dovecot/ as
shipped, so the hooks run ``ldapquota --sync ADDRESS``) with its mail store under
``--workdir`` (tmpfs by default). Every account gets one message by LMTP first.

Measured, baseline beside product, both in this run:

* **per-account cost of asking Dovecot**: one ``doveadm quota get -u USER`` process per
  account (the naive way) against ``doveadm -f json quota get -F -`` batches of 500 (what
  ldapquota runs); and the HTTP API, one request per account against batches of 100 users
  (quotaGet plus the INBOX probe). Interleaved, ``--reps`` times, median;
* **a full sync** (``ldapquota --sync``, default workers) of the N accounts, local doveadm
  and HTTP API, ``--sync-runs`` each (after one warm-up run), median;
* **latency**: the LMTP delivery that crosses the limit → ``isOverQuota: TRUE`` seen by
  ldapsearch (a fresh process every 20 ms); ``doveadm expunge`` → ``FALSE``; the clock
  starts before the delivery (the expunge) starts. ``--trials`` each way, p50/p90/max.
  Also how long the crossing LMTP transaction itself took against an ordinary one (does
  the hook hold up the delivery?).
* **the baseline recipe**: ``ldapquota --sync`` from cron every 5 minutes: a change waits
  U(0, 300 s) for the next run, then one sync duration D (measured above): p50 = 150 + D,
  p90 = 270 + D, max = 300 + D (as benchmarks/daemon_latency.py computes it).

Usage:  .venv/bin/python benchmarks/dovecot_bench.py [--users 10000] [--trials 30] [--workdir /dev/shm]
Needs root, slapd, ldap-utils, dovecot-core, dovecot-ldap, dovecot-lmtpd (scripts/setup).
"""

import argparse
import json
import os
import random
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("SLAPD_LOGLEVEL", "0")  # no per-operation log: the polling is heavy

from servers.dovecot import Dovecot  # noqa: E402
from servers.slapd import Slapd, find_tool  # noqa: E402

GiB = 1024**3
OVER_LIMIT = 20_000
TRIAL_LIMIT = 100_000
DOMAINS = 100
POLL = 0.02


def address(i: int) -> str:
    return f"u{i:06d}@d{i % DOMAINS:03d}.example"


def is_over(i: int) -> bool:
    return i % 100 == 7


def build_directory(workdir: Path, n: int, trial_ids) -> Slapd:
    slapd = Slapd(workdir / "slapd")
    slapd.start()
    slapd.stop()
    ldif = workdir / "accounts.ldif"
    with open(ldif, "w") as out:
        for i in range(n):
            over = is_over(i)
            limit = OVER_LIMIT if over else TRIAL_LIMIT if i in trial_ids else GiB
            out.write(
                f"dn: uid=u{i:06d},{slapd.people_dn}\nobjectClass: inetOrgPerson\nobjectClass: testMailAccount\n"
                + ("objectClass: ldapQuotaStatus\nisOverQuota: TRUE\nquotaFreeBytes: 0\n" if over else "")
                + f"uid: u{i:06d}\ncn: u{i:06d}\nsn: u{i:06d}\nmail: {address(i)}\nmailQuota: {limit}\n\n"
            )
    started = time.monotonic()
    subprocess.run([find_tool("slapadd"), "-q", "-F", str(slapd.config_dir), "-b", slapd.suffix, "-l", str(ldif)],
                   check=True, capture_output=True)
    print(f"  slapadd of {n} accounts: {time.monotonic() - started:.1f}s", flush=True)
    ldif.unlink()
    slapd.start()
    return slapd


def message(size: int) -> bytes:
    return b"From: bench@example.net\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, size // 78)


def lmtp_many(client: smtplib.LMTP, recipients, body: bytes) -> None:
    """One LMTP transaction for many recipients (smtplib reads only one reply after DATA;
    LMTP sends one per recipient). ``body`` ends with CRLF and has no line starting with '.'."""
    client.mail("bench@example.net")
    for rcpt in recipients:
        code, text = client.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
    code, text = client.docmd("DATA")
    assert code == 354, (code, text)
    client.send(body + b".\r\n")
    for rcpt in recipients:
        code, text = client.getreply()
        assert code == 250, (rcpt, code, text)


def populate(dovecot: Dovecot, n: int, trial_ids) -> None:
    """One small message for everyone (100 recipients a transaction); the over-quota 1 %
    past their limit, the trial accounts to 60 %."""
    started = time.monotonic()
    small = message(2_000)
    with smtplib.LMTP(str(dovecot.lmtp_socket), timeout=120) as client:
        everyone = [address(i) for i in range(n)]
        for start in range(0, n, 100):
            lmtp_many(client, everyone[start : start + 100], small)
        for i in range(n):
            if is_over(i):
                client.sendmail("bench@example.net", [address(i)], message(OVER_LIMIT - 1_000))
            elif i in trial_ids:
                client.sendmail("bench@example.net", [address(i)], message(58_000))
    print(f"  {n} mailboxes filled by LMTP: {time.monotonic() - started:.1f}s", flush=True)


# --------------------------------------------------------------------------- asking Dovecot


def doveadm(dovecot: Dovecot, *args: str, stdin: str = "") -> float:
    started = time.monotonic()
    subprocess.run(["doveadm", "-c", str(dovecot.conf), *args], input=stdin.encode(), capture_output=True, check=True)
    return time.monotonic() - started


def per_process(dovecot: Dovecot, users) -> float:
    return sum(doveadm(dovecot, "-f", "json", "quota", "get", "-u", user) for user in users) / len(users)


def batched(dovecot: Dovecot, users, size=500) -> float:
    total = 0.0
    for start in range(0, len(users), size):
        chunk = users[start : start + size]
        total += doveadm(dovecot, "-f", "json", "quota", "get", "-F", "-", stdin="".join(u + "\n" for u in chunk))
    return total / len(users)


def http(dovecot: Dovecot, users, size: int) -> float:
    from ldapquota.settings import DovecotConfig
    from ldapquota.sources.dovecot import HttpDoveadm

    client = HttpDoveadm(DovecotConfig(http_url=dovecot.http_url, http_key=dovecot.api_key))
    started = time.monotonic()
    for start in range(0, len(users), size):
        outcomes = client.ask(users[start : start + size])
        assert all(isinstance(o, list) for o in outcomes.values()), outcomes
    return (time.monotonic() - started) / len(users)


def asking_costs(dovecot: Dovecot, n: int, sample: int, reps: int) -> dict:
    rng = random.Random(7)
    users = [address(i) for i in rng.sample(range(n), sample)]
    big = [address(i) for i in range(min(n, 5000))]
    runs = {"doveadm -u, a process per account": [], "doveadm -F -, a process per account": [],
            "doveadm -F -, batches of 500": [],
            "doveadm -F -, 5000 accounts": [], "HTTP API, a request per account": [], "HTTP API, batches of 100": []}
    for _ in range(reps):  # interleaved: A B A B ...
        runs["doveadm -u, a process per account"].append(per_process(dovecot, users))
        runs["doveadm -F -, a process per account"].append(batched(dovecot, users, size=1))
        runs["doveadm -F -, batches of 500"].append(batched(dovecot, users))
        runs["doveadm -F -, 5000 accounts"].append(batched(dovecot, big))
        runs["HTTP API, a request per account"].append(http(dovecot, users, 1))
        runs["HTTP API, batches of 100"].append(http(dovecot, users, 100))
    costs = {}
    for name, values in runs.items():
        costs[name] = {"ms_per_account": 1000 * statistics.median(values), "min": 1000 * min(values),
                       "max": 1000 * max(values)}
        print(f"  {name:38s} {costs[name]['ms_per_account']:7.2f} ms/account "
              f"(min {costs[name]['min']:.2f}, max {costs[name]['max']:.2f})", flush=True)
    return costs


def full_syncs(config: Path, runs: int) -> dict:
    def once() -> float:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ldapquota", "-c", str(config), "-q", "--sync", "--force"],
                              capture_output=True, text=True, cwd=str(REPO))
        took = time.monotonic() - started
        if done.returncode not in (0, 1):
            raise SystemExit(f"--sync failed ({done.returncode}): {done.stdout}{done.stderr[-2000:]}")
        return took

    once()  # warm-up: writes what the population left to write
    times = [once() for _ in range(runs)]
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


# --------------------------------------------------------------------------- latency


class Flags:
    def __init__(self, slapd: Slapd):
        self.argv = [find_tool("ldapsearch"), "-x", "-LLL", "-H", slapd.uri, "-D", slapd.ldapquota_dn,
                     "-y", str(slapd.ldapquota_pw_file), "-s", "base", "-o", "ldif-wrap=no"]
        self.env = {"PATH": os.environ.get("PATH", ""), "LDAPCONF": str(slapd.workdir / "ldap.conf"),
                    "HOME": str(slapd.workdir)}
        self.people = slapd.people_dn

    def get(self, i: int) -> str:
        out = subprocess.run(self.argv + ["-b", f"uid=u{i:06d},{self.people}", "(objectClass=*)", "isOverQuota"],
                             capture_output=True, text=True, env=self.env).stdout
        for line in out.splitlines():
            if line.lower().startswith("isoverquota:"):
                return line.split(":", 1)[1].strip()
        return "absent"

    def wait(self, i: int, want: str, since: float, timeout: float = 30.0) -> float:
        while True:
            if self.get(i) == want:
                return time.monotonic() - since
            if time.monotonic() > since + timeout:
                return float("inf")
            time.sleep(POLL)


def latency_trials(dovecot: Dovecot, flags: Flags, trial_ids) -> dict:
    up, down, crossing, ordinary = [], [], [], []
    for i in trial_ids:
        user = address(i)
        started = time.monotonic()
        with smtplib.LMTP(str(dovecot.lmtp_socket), timeout=60) as client:
            client.sendmail("bench@example.net", [user], message(2_000))
        ordinary.append(time.monotonic() - started)
        started = time.monotonic()
        with smtplib.LMTP(str(dovecot.lmtp_socket), timeout=60) as client:
            client.sendmail("bench@example.net", [user], message(45_000))
        crossing.append(time.monotonic() - started)
        up.append(flags.wait(i, "TRUE", started))
        started = time.monotonic()
        dovecot.expunge(user)
        down.append(flags.wait(i, "FALSE", started))
    return {"set": summary(up), "clear": summary(down), "lmtp_crossing": summary(crossing),
            "lmtp_ordinary": summary(ordinary)}


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values):
    return {"n": len(values), "p50": pct(values, 0.5), "p90": pct(values, 0.9), "max": max(values)}


def fmt(s):
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--sample", type=int, default=200, help="accounts in the per-account cost runs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sync-runs", type=int, default=3)
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    n = args.users
    rng = random.Random(1)
    trial_ids = sorted(rng.sample([i for i in range(n) if not is_over(i)], args.trials))
    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-dovecot-bench-", dir=args.workdir))
    workdir.chmod(0o755)
    print(f"ldapquota Dovecot benchmark: {n} users, {os.cpu_count()} CPUs, Dovecot and slapd under {workdir}", flush=True)
    slapd = dovecot = None
    result = {"users": n}
    try:
        slapd = build_directory(workdir, n, set(trial_ids))
        dovecot = Dovecot(slapd, http=True, name="bench", parent=str(workdir)).start()
        populate(dovecot, n, set(trial_ids))
        print("asking Dovecot, per account (median of interleaved runs):", flush=True)
        result["asking"] = asking_costs(dovecot, n, min(args.sample, n), args.reps)
        secret = workdir / "bind.secret"
        secret.write_text(slapd.ldapquota_pw)
        local = dovecot.write_ldapquota_config(workdir / "local.yaml", secret)
        key = workdir / "doveadm.key"
        key.write_text(dovecot.api_key + "\n")
        api = dovecot.write_ldapquota_config(workdir / "api.yaml", secret, [
            ("  http_url: null\n", f"  http_url: {dovecot.http_url}\n"), ("  http_key_file: null\n", f"  http_key_file: {key}\n")])
        result["sync_local"] = full_syncs(local, args.sync_runs)
        print(f"  full sync of {n} accounts, local doveadm: {fmt(result['sync_local'])} s", flush=True)
        result["sync_http"] = full_syncs(api, args.sync_runs)
        print(f"  full sync of {n} accounts, HTTP API:      {fmt(result['sync_http'])} s", flush=True)
        print(f"latency over {args.trials} trials each way (s):", flush=True)
        result["latency"] = latency_trials(dovecot, Flags(slapd), trial_ids)
        for key_name in ("set", "clear", "lmtp_ordinary", "lmtp_crossing"):
            print(f"  {key_name:14s} {fmt(result['latency'][key_name])}", flush=True)
        d = result["sync_local"]["median"]
        result["cron_5min"] = {"p50": 150 + d, "p90": 270 + d, "max": 300 + d}
        print(f"  baseline, --sync from cron every 5 min (U(0,300)+D, D={d:.1f}s): {fmt(result['cron_5min'])}", flush=True)
    finally:
        if dovecot is not None:
            dovecot.stop()
        if slapd is not None:
            slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
