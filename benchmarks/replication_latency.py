#!/usr/bin/env python3
"""From a delivery on a mail store to 452 at RCPT on an MX that asks a replica, and back.

The scale-out path end to end (docs/contract.md §11): a provider slapd (syncprov) takes
ldapquota's writes, a consumer (syncrepl refreshAndPersist) answers the MTA, as the
replica beside each MX does (tests/servers/replica.py). The daemon (``ldapquota
--foreground``, default settings) watches the store and writes to the provider; a private
Exim runs examples/exim/exim4.conf with the blocks ``--exim-config`` prints for
``mta.uri`` = the consumer (tests/servers/exim.py; root is needed for ``exim -bd``).

Each trial is on its own account (quota 100,000 bytes, 1,000 used):

* **set**: a message that puts the mailbox over quota is delivered as a Maildir++ MDA
  does (the file into ``new/``, a line onto ``maildirsize``); the clock runs from the
  append until ``RCPT TO`` on Exim (a fresh SMTP session each probe, so a fresh Exim
  process and LDAP lookup) answers 452;
* **clear**: the message is expunged (file removed, a negative line appended); the clock
  runs until RCPT answers 250 again;
* **replication lag alone** (interleaved with the above, on an account of its own):
  isOverQuota written on the provider with ldap3; the clock runs until a search on the
  consumer sees it (one persistent connection, a search every 2 ms).

Each figure is p50 / p90 / max over ``--trials`` (default 30) each way; an RCPT probe's
own duration (the resolution of the first two) is printed beside them.

    .venv/bin/python benchmarks/replication_latency.py [--trials 30]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("SLAPD_LOGLEVEL", "0")  # no per-operation log: the probes are many

from helpers import config_dict, maildirsize_text, make_maildir, run_cli, write_config  # noqa: E402
from servers.exim import Exim, give_to, rcpt, secret_for_exim  # noqa: E402
from servers.replica import ConsumerSlapd, ProviderSlapd, wait_for  # noqa: E402

from ldapquota.exim import replace_blocks, split_blocks  # noqa: E402

EXAMPLE = REPO / "examples" / "exim" / "exim4.conf"
LIMIT = 100_000
USED = 1_000
TIMEOUT = 30.0


def address(i: int) -> str:
    return f"r{i:03d}@example.org"


def deliver(maildir: Path, size: int, tag: str) -> Path:
    message = maildir / "new" / f"{time.time():.0f}.{tag},S={size}"
    message.write_bytes(b"x" * size)  # an over-quota maildirsize is checked against the files
    with open(maildir / "maildirsize", "a") as handle:
        handle.write(f"{size} 1\n")
    return message


def expunge(maildir: Path, message: Path) -> None:
    size = message.stat().st_size
    message.unlink()
    with open(maildir / "maildirsize", "a") as handle:
        handle.write(f"-{size} -1\n")


def until_rcpt(exim: Exim, recipient: str, code: int, since: float, probes: list) -> float:
    while True:
        started = time.monotonic()
        answer = rcpt(exim, recipient)[0]
        probes.append(time.monotonic() - started)
        if answer == code:
            return time.monotonic() - since
        if time.monotonic() - since > TIMEOUT:
            return float("inf")


def replication_lag(provider, consumer, dn: str, value: str) -> float:
    import ldap3

    write = ldap3.Connection(ldap3.Server(provider.uri, get_info=ldap3.NONE), provider.root_dn, provider.root_pw,
                             auto_bind=True)
    read = ldap3.Connection(ldap3.Server(consumer.uri, get_info=ldap3.NONE), consumer.root_dn, consumer.root_pw,
                            auto_bind=True)
    try:
        write.modify(dn, {"isOverQuota": [(ldap3.MODIFY_REPLACE, [value])]})
        since = time.monotonic()
        if write.result["result"] != 0:
            raise SystemExit(f"write on the provider failed: {write.result}")
        while True:
            read.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["isOverQuota"])
            if read.response and read.response[0]["attributes"].get("isOverQuota") == [value]:
                return time.monotonic() - since
            if time.monotonic() - since > TIMEOUT:
                return float("inf")
            time.sleep(0.002)
    finally:
        write.unbind()
        read.unbind()


def exim_for(provider, consumer, files: Path, workdir: Path) -> Exim:
    aliases = files / "aliases"
    aliases.write_text("")
    aliases.chmod(0o644)
    secret = secret_for_exim(consumer.exim_pw)
    config = config_dict(provider, files / "vmail", mta={"uri": consumer.uri, "bind_dn": consumer.exim_dn,
                                                          "bind_password_file": str(secret)})
    blocks = run_cli(["-c", str(write_config(workdir / "exim-blocks.yaml", config)), "--exim-config"])
    if blocks.returncode != 0:
        raise SystemExit(f"--exim-config failed: {blocks.stderr}")
    macros = {
        "MAIL_DOMAINS": "example.org",
        "LDAP_SERVER": consumer.uri,
        "LDAP_BASE": consumer.people_dn,
        "LDAP_BIND": 'user="%s" pass=${quote:${readfile{%s}{}}}' % (consumer.exim_dn, secret),
        "ALIAS_FILE": str(aliases),
        "VMAIL_ROOT": str(files / "vmail"),
        "VMAIL_USER": "mail",
    }
    return Exim(replace_blocks(EXAMPLE.read_text(), split_blocks(blocks.stdout)), macros, name="exim-bench").start()


def fmt(values: list) -> str:
    finite = sorted(values)
    p90 = finite[min(len(finite) - 1, int(0.9 * len(finite)))]
    return f"p50 {statistics.median(finite):.3f}  p90 {p90:.3f}  max {finite[-1]:.3f}  (n={len(finite)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lq-replication-bench-"))
    files = Path(tempfile.mkdtemp(prefix="lq-replication-files-"))  # Exim's user reads here
    files.chmod(0o755)
    provider = consumer = exim = daemon = None
    try:
        provider = ProviderSlapd(workdir / "provider")
        provider.start()
        consumer = ConsumerSlapd(workdir / "consumer", provider)
        consumer.start()
        vmail = files / "vmail"
        vmail.mkdir()
        give_to(vmail, "mail")
        dns = provider.add_accounts([address(i) for i in range(args.trials)] + ["lag@example.org"], quota=str(LIMIT))
        lag_dn = dns[-1]
        boxes = [make_maildir(vmail, address(i), messages=[("1.old,S=%d" % USED, USED)],
                              maildirsize=maildirsize_text(f"{LIMIT}S", (USED, 1))) for i in range(args.trials)]
        wait_for(lambda: len(consumer.ldapsearch(consumer.people_dn, "(mail=*)", ["1.1"])) == len(dns), 30,
                 "the consumer to replicate the accounts")
        exim = exim_for(provider, consumer, files, workdir)
        config = config_dict(provider, vmail, mta={"uri": consumer.uri},
                             daemon={"pidfile": str(workdir / "ldapquota.pid")},
                             logging={"target": str(workdir / "daemon.log")})
        daemon_log = workdir / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(write_config(workdir / "c.yaml", config)),
                                   "--foreground"], cwd=str(REPO), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: "ready: " in (daemon_log.read_text() if daemon_log.exists() else ""), 60, "the daemon")
        for i in range(args.trials):
            wait_for(lambda i=i: rcpt(exim, address(i))[0] == 250, 10, f"250 for {address(i)} before the trials")
        print(f"provider {provider.uri}, consumer {consumer.uri}, Exim 127.0.0.1:{exim.port} asking the consumer; "
              f"{args.trials} trials each way; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        up, down, lag_up, lag_down, probes = [], [], [], [], []
        for i in range(args.trials):
            message = deliver(boxes[i], LIMIT, f"t{i}")
            up.append(until_rcpt(exim, address(i), 452, time.monotonic(), probes))
            time.sleep(random.uniform(0.6, 1.0))  # quiet again: the next change is measured at once
            lag_up.append(replication_lag(provider, consumer, lag_dn, "TRUE"))
            expunge(boxes[i], message)
            down.append(until_rcpt(exim, address(i), 250, time.monotonic(), probes))
            time.sleep(random.uniform(0.1, 0.3))
            lag_down.append(replication_lag(provider, consumer, lag_dn, "FALSE"))
            print(f"  trial {i + 1:3d}: set {up[-1]:.3f} s, clear {down[-1]:.3f} s, replication {lag_up[-1]:.4f} / "
                  f"{lag_down[-1]:.4f} s", flush=True)
        print(f"\nsummary ({args.trials} trials each way, seconds; load {os.getloadavg()[0]:.1f}):")
        print(f"  delivery -> 452 at RCPT (MX asks the replica)   {fmt(up)}")
        print(f"  expunge  -> 250 at RCPT                          {fmt(down)}")
        print(f"  replication lag alone (provider -> consumer)    set {fmt(lag_up)}")
        print(f"                                                   clear {fmt(lag_down)}")
        print(f"  one RCPT probe (SMTP session + LDAP lookup)      {fmt(probes)}")
        print("  target: p50 <= 0.2 s from the delivery to 452")
        return 0
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        if exim is not None:
            exim.cleanup()
        for server in (consumer, provider):
            if server is not None:
                server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
