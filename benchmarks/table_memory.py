#!/usr/bin/env python3
"""What the daemon keeps per account: its account table plus the change feed's per-path
structures (inotify watches, ``stat`` polling), built in-process from N synthetic
accounts exactly as the start-up full sync builds them (``Service.seen_in_sync`` on each
entry as the LDAP search hands it over, the mailbox followed by the feed).

No LDAP server, no real inotify and no maildirs: the entries are made here as ldap3 hands
them over (fresh strings, ldap3's case-insensitive dict); inotify is a stand-in that
hands out watch descriptors up to a limit (``--watches``, default this machine's
``fs.inotify.max_user_watches``) and then answers ENOSPC, as the kernel does, so the rest
of the mailboxes are polled; ``stat`` of a maildir and its ``maildirsize`` answers with
made-up but realistic numbers (inode, size, mtime). 5 % of the accounts are over quota
(the table keeps a set of them).

Each figure comes from a child process of its own (so one measurement does not carry the
other's memory):

* ``tracemalloc``: the Python allocations the table and feed hold after the build, per
  account, and split between the table and the feed;
* ``RSS``: the process's resident size after the build minus before it (same imports,
  same interpreter), per account; and the build time (the part of the start-up that is
  not LDAP nor measuring).

    .venv/bin/python benchmarks/table_memory.py [--accounts 1000000] [--watches 192540]
        [--baseline DIR]   (DIR: a checkout of an older commit, e.g. git worktree add)
"""

import argparse
import errno
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

DOMAINS = 100
# Mixed case, as many directories have it: the table keeps the DN as the server gave it.
PEOPLE = "ou=People,dc=example,dc=com"
FOREVER = 1.0e12


def address(i: int) -> str:
    return f"user{i:07d}@d{i % DOMAINS:03d}.example.com"


class FakeInotify:
    """inotify_simple.INotify as far as the watcher uses it: watch descriptors up to the
    kernel's limit, then ENOSPC."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.next_wd = 1
        self.live = 0

    def __call__(self, nonblocking: bool = True) -> "FakeInotify":
        return self

    def add_watch(self, path: str, mask: int) -> int:
        if self.live >= self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.live += 1
        self.next_wd += 1
        return self.next_wd

    def rm_watch(self, wd: int) -> None:
        self.live -= 1

    def fileno(self) -> int:
        return -1

    def read(self, timeout: int = 0) -> List[Any]:
        return []

    def close(self) -> None:
        pass


class FakeOs:
    """``os`` for the watcher, the poller and the maildir source: every maildir exists and
    holds a ``maildirsize`` (realistic inode, size and mtime); anything else is real."""

    def __init__(self) -> None:
        self._real = os
        self.path = FakePath()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def stat(self, path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        text = os.fsdecode(path)
        number = 1_000_003 + (hash(text) % 50_000_000)
        mtime = 1_760_000_000 + number % 10_000_000
        ns = mtime * 10**9 + 123_456_789
        if text.endswith("/maildirsize"):
            return os.stat_result((0o100600, number, 66306, 1, 1000, 1000, 40 + number % 60, mtime, mtime, mtime,
                                   float(mtime), float(mtime), float(mtime), ns, ns, ns))
        return os.stat_result((0o40700, number, 66306, 5, 1000, 1000, 4096, mtime, mtime, mtime,
                               float(mtime), float(mtime), float(mtime), ns, ns, ns))

    def scandir(self, path: Any) -> Any:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


class FakePath:
    def __getattr__(self, name: str) -> Any:
        return getattr(os.path, name)

    def exists(self, path: Any) -> bool:
        return True

    def isdir(self, path: Any) -> bool:
        return True


def write_config(workdir: Path) -> Path:
    import yaml

    root = workdir / "vmail"
    root.mkdir()
    (workdir / "pw").write_text("secret\n")
    config = {
        "ldap": {"uri": "ldap://127.0.0.1:9", "bind_dn": "cn=ldapquota,dc=example,dc=com",
                 "bind_password_file": str(workdir / "pw"), "base_dn": PEOPLE,
                 "filter": "(objectClass=inetOrgPerson)"},
        "accounts": {"quota_attribute": "mailQuota"},
        "mailboxes": {"root": str(root)},
        "daemon": {"pidfile": str(workdir / "pid")},
    }
    path = workdir / "ldapquota.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def entry(i: int, over: bool) -> Any:
    """One account as ldap3 hands it over (fresh strings, its case-insensitive dict)."""
    from ldap3.utils.ciDict import CaseInsensitiveDict

    from ldapquota.entry import AccountEntry

    attributes = CaseInsensitiveDict()
    attributes["mail"] = [address(i)]
    attributes["mailQuota"] = [str(1_073_741_824 + 0)]
    if over:
        attributes["isOverQuota"] = ["TRUE"]
        attributes["quotaFreeBytes"] = ["0"]
    return AccountEntry(f"uid=user{i:07d},{PEOPLE}", attributes)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(config_path: str, accounts: int, watches: Optional[int], mode: str) -> Dict[str, Any]:
    import tracemalloc

    import ldapquota.maildir_poll
    import ldapquota.sources.maildir
    import ldapquota.watcher
    from ldapquota.config import load_config
    from ldapquota.service.loop import Service
    from ldapquota.sources.maildir import MaildirFeed
    from ldapquota.watcher import Watcher

    fake = FakeOs()
    for module in (ldapquota.maildir_poll, ldapquota.watcher, ldapquota.sources.maildir):
        module.os = fake  # type: ignore[attr-defined]
    service = Service(load_config(config_path), config_path=config_path)
    daemon = service.config.daemon
    service.feed = MaildirFeed(Watcher(True, daemon.poll_interval, inotify_factory=FakeInotify(watches or 0)))
    service.table.feed = service.feed
    entry(0, False)  # imports done
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
    before = rss_kib()
    started = time.monotonic()
    service.table.generation += 1
    for i in range(accounts):
        service.seen_in_sync(entry(i, i % 20 == 7))
    took = time.monotonic() - started
    gc.collect()
    result: Dict[str, Any] = {"code": os.path.dirname(os.path.dirname(ldapquota.watcher.__file__)), "seconds": took, "watched": service.feed.watched_count, "polled": service.feed.polled_count,
                              "over": len(service.table.over)}
    if mode == "tracemalloc":
        snapshot = tracemalloc.take_snapshot()
        total = sum(stat.size for stat in snapshot.statistics("filename"))
        feed = sum(stat.size for stat in snapshot.statistics("filename")
                   if stat.traceback[0].filename.endswith(("watcher.py", "maildir_poll.py", "sources/maildir.py")))
        result.update(traced=total, feed=feed)
        tracemalloc.stop()
    else:
        result["rss_kib"] = rss_kib() - before
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--watches", type=int, default=None,
                        help="inotify watches to hand out (default: fs.inotify.max_user_watches here)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure the ldapquota package of this source tree (an older commit), in the same run")
    parser.add_argument("--child", nargs=3, metavar=("CODE", "CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child[0])
        print(json.dumps(child(args.child[1], args.accounts, args.watches, args.child[2])))
        return 0
    watches = args.watches
    if watches is None:
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    n = args.accounts
    trees = [("this tree", str(REPO))] + ([("baseline", args.baseline)] if args.baseline else [])
    with tempfile.TemporaryDirectory(prefix="lq-table-") as tmp:
        config = write_config(Path(tmp))
        for name, code in trees:
            runs: Dict[str, Dict[str, Any]] = {}
            for mode in ("rss", "tracemalloc"):
                out = subprocess.run([sys.executable, __file__, "--accounts", str(n), "--watches", str(watches),
                                      "--child", code, str(config), mode], check=True, capture_output=True, text=True).stdout
                runs[mode] = json.loads(out.strip().splitlines()[-1])
            report(name, code, n, watches, runs["rss"], runs["tracemalloc"])
    print("target: at most 1024 bytes/account")
    return 0


def report(name: str, code: str, n: int, watches: int, rss: Dict[str, Any], traced: Dict[str, Any]) -> None:
    print(f"{name} ({rss['code']}): {n} accounts, {rss['watched']} mailboxes watched (inotify limit {watches}), "
          f"{rss['polled']} polled, {rss['over']} over quota")
    print(f"  RSS growth        {rss['rss_kib'] * 1024 / n:7.0f} bytes/account  ({rss['rss_kib'] / 1024:7.1f} MiB)")
    table = traced["traced"] - traced["feed"]
    print(f"  tracemalloc       {traced['traced'] / n:7.0f} bytes/account  ({traced['traced'] / 2**20:7.1f} MiB): "
          f"table {table / n:.0f}, feed {traced['feed'] / n:.0f}")
    print(f"  build             {rss['seconds']:7.2f} s ({n / rss['seconds']:.0f} accounts/s, no LDAP, no measuring)",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
