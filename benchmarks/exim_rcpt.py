#!/usr/bin/env python3
"""What the ldapquota blocks cost Exim per RCPT.

One SMTP session with N RCPTs (default 2,000) to distinct accounts, declared SIZE given so
the SIZE statement runs too, through a private Exim running examples/exim/exim4.conf:

  without   the file with the three ldapquota regions removed (the baseline)
  shared    with the three blocks ``render_exim_config`` prints (defer mode, fail closed);
            the example's account router reuses LDAPQUOTA_QUERY, so the account and the
            quota checks cost one LDAP search per RCPT together (as shipped)
  separate  the same, with -DSEPARATE_ACCOUNT_LOOKUP: the account router keeps its own
            lookup and the blocks add a second LDAP search per RCPT (ldapquota pasted
            into a configuration that looks accounts up on its own)

Rounds interleave the configurations (A B C A B C ...) so all see the same machine state. Each
round is a fresh SMTP connection, hence a fresh Exim process with empty lookup and LDAP
connection caches: every RCPT costs the first lookup of its address. Commands are
pipelined (the client writes ahead in batches), so the figure is Exim's own work per
RCPT, not the client's round-trip latency.

Prints µs per RCPT, median and min–max over the rounds, for each configuration, and the
difference of the medians from the baseline (and the median of per-round differences). Target (issue 3):
the blocks add no more than 150 µs per RCPT.

Set-up: its own slapd (slapd.conf, mdb, ``index mail eq``) filled offline with slapadd,
on 127.0.0.1; its own Exim daemon (root is needed for ``exim -bd``). Nothing is left
behind. Usage (as root, from the repository):

    .venv/bin/python benchmarks/exim_rcpt.py [--recipients 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from servers.exim import Exim, exim_available, give_to  # noqa: E402

from ldapquota.config import parse_config  # noqa: E402
from ldapquota.exim import BLOCK_NAMES, render_exim_config, replace_blocks, split_blocks  # noqa: E402

DOMAIN = "example.org"
SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
TARGET_US = 150.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BenchSlapd:
    """slapd with ``count`` accounts loaded by slapadd; half of them carry the ldapquota
    class with isOverQuota FALSE and a large quotaFreeBytes (nobody is refused)."""

    def __init__(self, workdir: Path, count: int) -> None:
        self.dir = workdir / "slapd"
        (self.dir / "db").mkdir(parents=True)
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        conf = self.dir / "slapd.conf"
        conf.write_text(
            "include /etc/ldap/schema/core.schema\n"
            "include /etc/ldap/schema/cosine.schema\n"
            "include /etc/ldap/schema/inetorgperson.schema\n"
            f"include {REPO / 'schema' / 'ldapquota.schema'}\n"
            f"pidfile {self.dir / 'slapd.pid'}\n"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            "sizelimit unlimited\n"
            f'database mdb\nsuffix "{SUFFIX}"\nrootdn "cn=admin,{SUFFIX}"\n'
            f"directory {self.dir / 'db'}\nmaxsize 1073741824\n"
            "index objectClass eq\nindex mail eq\nindex isOverQuota eq\n"
            "access to * by * read\n"
        )
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        ]
        for i in range(count):
            name = f"user{i:05d}"
            entry = f"dn: uid={name},{PEOPLE}\nobjectClass: inetOrgPerson\n"
            if i % 2:
                entry += "objectClass: ldapQuotaStatus\nisOverQuota: FALSE\nquotaFreeBytes: 1000000000\n"
            entry += f"uid: {name}\ncn: {name}\nsn: {name}\nmail: {name}@{DOMAIN}\n"
            entries.append(entry)
        ldif = self.dir / "data.ldif"
        ldif.write_text("\n".join(entries))
        added = subprocess.run(["slapadd", "-q", "-f", str(conf), "-l", str(ldif)], capture_output=True, text=True)
        if added.returncode != 0:
            raise RuntimeError(f"slapadd failed: {added.stderr}")
        self.conf = conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["slapd", "-d", "0", "-f", str(self.conf), "-h", f"{self.uri}/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ldapsearch", "-x", "-H", self.uri, "-b", SUFFIX, "-s", "base", "-o", "nettimeout=1", "1.1"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("benchmark slapd did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)


def exim_configs(slapd: BenchSlapd, workdir: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """name → (config text, extra -D macros)."""
    config = parse_config(
        f"ldap:\n  uri: {slapd.uri}\n  base_dn: {PEOPLE}\nmailboxes:\n  root: {workdir}\n",
        str(workdir / "ldapquota.yaml"),
    )
    example = (REPO / "examples" / "exim" / "exim4.conf").read_text()
    with_blocks = replace_blocks(example, split_blocks(render_exim_config(config, "defer")))
    return {
        "without": (replace_blocks(example, dict.fromkeys(BLOCK_NAMES, "")), {}),
        "shared": (with_blocks, {}),
        "separate": (with_blocks, {"SEPARATE_ACCOUNT_LOOKUP": "1"}),
    }


def session(port: int, recipients: list[str], size: int, batch: int = 100) -> float:
    """Seconds from the first RCPT sent to the last RCPT answer read; checks every answer
    is 250."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    reader = sock.makefile("rb")

    def answer() -> bytes:
        line = reader.readline()
        while line[3:4] == b"-":
            line = reader.readline()
        return line

    answer()  # banner
    sock.sendall(b"EHLO bench.test\r\n")
    answer()
    sock.sendall(f"MAIL FROM:<bench@client.test> SIZE={size}\r\n".encode())
    if not answer().startswith(b"250"):
        raise RuntimeError("MAIL FROM refused")
    start = time.perf_counter()
    for first in range(0, len(recipients), batch):
        chunk = recipients[first:first + batch]
        sock.sendall(b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in chunk))
        for r in chunk:
            line = answer()
            if not line.startswith(b"250"):
                raise RuntimeError(f"RCPT {r}: {line!r}")
    elapsed = time.perf_counter() - start
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7, help="rounds per configuration")
    parser.add_argument("--size", type=int, default=10_000, help="SIZE= declared in MAIL FROM")
    args = parser.parse_args()
    usable, why = exim_available()
    if not usable:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="ldapquota-bench-"))
    workdir.chmod(0o755)
    slapd = BenchSlapd(workdir, args.recipients)
    daemons: dict[str, Exim] = {}
    try:
        slapd.start()
        aliases = workdir / "aliases"
        aliases.write_text("")
        aliases.chmod(0o644)
        (workdir / "vmail").mkdir()
        vmail = give_to(workdir / "vmail", "mail")
        macros = {
            "MAIL_DOMAINS": DOMAIN,
            "LDAP_SERVER": slapd.uri,
            "LDAP_BASE": PEOPLE,
            "LDAP_BIND": "",
            "ALIAS_FILE": str(aliases),
            "VMAIL_ROOT": str(vmail),
            "VMAIL_USER": "mail",
        }
        for name, (text, extra) in exim_configs(slapd, workdir).items():
            daemons[name] = Exim(text, {**macros, **extra}, name=f"bench-{name}").start()
        recipients = [f"user{i:05d}@{DOMAIN}" for i in range(args.recipients)]
        for name in daemons:  # warm-up: page cache, slapd's entry cache
            session(daemons[name].port, recipients, args.size)
        times: dict[str, list[float]] = {name: [] for name in daemons}
        for _ in range(args.rounds):
            for name in daemons:
                seconds = session(daemons[name].port, recipients, args.size)
                times[name].append(seconds / len(recipients) * 1e6)
    finally:
        for daemon in daemons.values():
            daemon.cleanup()
        slapd.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def show(values: list[float]) -> str:
        return f"median {statistics.median(values):7.1f}  (min {min(values):.1f} – max {max(values):.1f})"

    print(f"Exim RCPT cost, {args.recipients} distinct recipients per session, SIZE={args.size}, "
          f"{args.rounds} interleaved rounds (µs per RCPT)")
    labels = {
        "without": "without the ldapquota blocks (baseline)",
        "shared": "with the blocks, example as shipped",
        "separate": "with the blocks, SEPARATE_ACCOUNT_LOOKUP",
    }
    for name in daemons:
        print(f"  {labels[name]:<42} {show(times[name])}")
    status = 0
    for name in ("shared", "separate"):
        pairs = [a - b for a, b in zip(times[name], times["without"])]
        added = statistics.median(times[name]) - statistics.median(times["without"])
        verdict = "within" if added <= TARGET_US else "OVER"
        print(f"  added, {name:<8}: {added:7.1f} µs (per-round differences: median "
              f"{statistics.median(pairs):.1f}, min {min(pairs):.1f} – max {max(pairs):.1f}); "
              f"target ≤ {TARGET_US:.0f}: {verdict}")
    print("  shared: the example's account router reuses LDAPQUOTA_QUERY (one LDAP search per RCPT);")
    print("  separate: it keeps its own lookup, so the blocks add a second LDAP search per RCPT.")
    return status


if __name__ == "__main__":
    sys.exit(main())
