#!/usr/bin/env python3
"""What do metrics cost an idle daemon? (docs/contract.md §12)

One world (built as benchmarks/daemon_latency.py builds it: a private slapd bulk-loaded
with ``slapadd``, N maildirs under /dev/shm, 1 % over quota), then the daemon
(``ldapquota --foreground``, default config otherwise) started again and again, the two
ways interleaved — A B A B ... — so that both see the same machine:

* **on**: ``metrics.listen`` (scraped every ``--scrape-every`` seconds with urllib, as
  Prometheus would) and ``metrics.textfile``;
* **off**: neither (the baseline).

Each run waits until the daemon is ready (its first full sync done), lets it settle
``--settle`` seconds (past the first account refresh and DN listing, as in
daemon_latency.py), then measures over ``--idle`` seconds: the daemon's CPU (utime +
stime of all its threads, from /proc) and, at the end, its RSS and peak RSS (VmRSS,
VmHWM). Scrape times are reported too (urllib, wall clock, from this process).

Usage:  .venv/bin/python benchmarks/daemon_metrics.py [--accounts 100000] [--reps 2]
        [--idle 60] [--settle 150] [--scrape-every 15] [--workdir /dev/shm]
Needs slapd and ldap-utils (scripts/setup installs them) and about 1 GB in /dev/shm at 100k.
The two daemons never run at once: each watches every maildir (one inotify watch each).
"""

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_latency as world  # (after the path: the same world and the same /proc readers)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def configure(base: Path, workdir: Path, name: str, with_metrics: bool):
    config = yaml.safe_load(base.read_text())
    config["daemon"]["pidfile"] = str(workdir / f"{name}.pid")
    config["logging"] = {"target": str(workdir / f"{name}.log"), "level": "info"}
    port = None
    if with_metrics:
        port = free_port()
        config["metrics"] = {"listen": f"127.0.0.1:{port}", "textfile": str(workdir / f"{name}.prom")}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, port


def scrape(port: int) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        body = answer.read()
    assert b"ldapquota_accounts " in body, body[:200]
    return time.monotonic() - started


def one_run(config: Path, port, log: Path, args) -> dict:
    started = time.monotonic()
    daemon = subprocess.Popen([sys.executable, "-m", "ldapquota", "-c", str(config), "--foreground"],
                              cwd=str(world.REPO), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        while "ready: " not in (log.read_text() if log.exists() else ""):
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited ({daemon.returncode}): {log.read_text() if log.exists() else ''}")
            if time.monotonic() - started > 1800:
                raise SystemExit("daemon not ready after 30 min")
            time.sleep(0.2)
        ready = time.monotonic() - started
        time.sleep(args.settle)
        scrapes = []
        cpu0 = world.cpu_seconds(daemon.pid)
        window_start = time.monotonic()
        next_scrape = window_start
        while True:
            now = time.monotonic()
            if now >= window_start + args.idle:
                break
            if port is not None and now >= next_scrape:
                scrapes.append(scrape(port))
                next_scrape += args.scrape_every
            time.sleep(min(0.5, max(0.0, window_start + args.idle - now)))
        elapsed = time.monotonic() - window_start
        cpu = world.cpu_seconds(daemon.pid) - cpu0
        return {"ready_s": ready, "cpu_pct": 100 * cpu / elapsed, "rss_mb": world.vm(daemon.pid, "VmRSS") / 1024,
                "peak_rss_mb": world.vm(daemon.pid, "VmHWM") / 1024, "scrapes": scrapes}
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=150.0)
    parser.add_argument("--scrape-every", type=float, default=15.0)
    parser.add_argument("--workdir", default="/dev/shm")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    # Stopped early (also from a background job, where SIGINT is ignored): clean up anyway.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    n = args.accounts
    print(f"metrics cost of an idle daemon: {n} accounts, {args.reps} x (on, off), idle window {args.idle:g}s "
          f"after {args.settle:g}s, scrape every {args.scrape_every:g}s; maildirs and slapd under {args.workdir}",
          flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"lqmetrics-{n}-", dir=args.workdir))
    slapd = None
    try:
        slapd = world.build_directory(workdir, n)
        root = workdir / "vmail"
        world.build_maildirs(root, n)
        base = world.write_config(workdir, slapd, root)
        results = {"on": [], "off": []}
        for rep in range(args.reps):
            for way in ("on", "off"):
                config, port = configure(base, workdir, f"{way}{rep}", way == "on")
                run = one_run(config, port, workdir / f"{way}{rep}.log", args)
                results[way].append(run)
                scrapes = run["scrapes"]
                scraped = (f", {len(scrapes)} scrapes, slowest {1000 * max(scrapes):.1f} ms" if scrapes else "")
                print(f"  rep {rep + 1} metrics {way:>3}: ready in {run['ready_s']:.1f}s; idle CPU {run['cpu_pct']:.3f}% "
                      f"of a core; RSS {run['rss_mb']:.0f} MB (peak {run['peak_rss_mb']:.0f} MB){scraped}", flush=True)
        print("\nsummary (median over reps; CPU in % of one core, RSS in MB)")
        for way in ("on", "off"):
            runs = results[way]
            cpu = [r["cpu_pct"] for r in runs]
            rss = [r["rss_mb"] for r in runs]
            peak = [r["peak_rss_mb"] for r in runs]
            print(f"  metrics {way:>3}: idle CPU {statistics.median(cpu):.3f}% (min {min(cpu):.3f}, max {max(cpu):.3f}); "
                  f"RSS {statistics.median(rss):.0f} (peak {statistics.median(peak):.0f})")
    finally:
        if slapd is not None:
            slapd.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
