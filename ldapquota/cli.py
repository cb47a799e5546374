"""The command line (docs/contract.md §6): parse flags, pick the mode, map errors to exit codes.

Modes: ``--sync`` (one pass), ``--report``, ``--check-config``, ``--show ADDRESS``,
``--exim-config``, and, with none of them, the daemon. Every failure the operator must act on is an
:class:`~ldapquota.errors.LdapQuotaError` with its exit code; anything else is a bug and
ends with a traceback and EX_SOFTWARE.
"""

import argparse
import logging
import sys
import time
from contextlib import nullcontext
from typing import ContextManager, NoReturn, Optional, Sequence, TextIO

from ldapquota import __version__, metrics
from ldapquota import log as logsetup
from ldapquota.config import default_config_path, load_config
from ldapquota.errors import EX_OK, EX_PARTIAL, EX_SOFTWARE, EX_USAGE, ConfigError, LdapQuotaError, SafetyRefusal, SyncBusy
from ldapquota.flagstore import open_store
from ldapquota.settings import Config
from ldapquota.sync import Change, SyncReport, run_sync, run_sync_addresses
from ldapquota.synclock import FullSyncLock

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; sysexits (docs/contract.md §6) says 64."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ldapquota",
        description="Measure maildirs and keep isOverQuota in LDAP, so MTAs can refuse mail "
        "for full mailboxes at RCPT time. Without a mode option it runs as a daemon.",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help=f"config file (default: $LDAPQUOTA_CONFIG or {default_config_path({})})")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--sync", action="store_true", help="one full pass, then exit; with addresses, only those accounts")
    modes.add_argument("--report", action="store_true", help="measure, write nothing; list who is over or near the limit, fullest first")
    modes.add_argument("--check-config", action="store_true", help="validate the config, reach LDAP, check schema and rights")
    modes.add_argument("--show", metavar="ADDRESS", help="one account: limit, usage, flag, decision and why")
    modes.add_argument("--exim-config", action="store_true", help="print Exim configuration blocks for this config")
    parser.add_argument("--dry-run", action="store_true", help="with --sync: print each change, write nothing")
    parser.add_argument("--force", action="store_true", help="with --sync: override the safety rules (empty mail root, too many flips)")
    parser.add_argument("--json", action="store_true", help="with --report: one JSON array on stdout (summary on stderr)")
    parser.add_argument("--all", action="store_true", help="with --report: every account, not only the full and nearly full")
    parser.add_argument("--mode", choices=("defer", "fail"), default="defer", help="with --exim-config: 452 (defer, default) or 552 (fail)")
    parser.add_argument("--foreground", action="store_true", help="daemon: stay attached (for systemd Type=simple)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("addresses", nargs="*", metavar="ADDRESS",
                        help="with --sync: only these accounts (what mail-server hooks call); put -- before "
                             "addresses that start with -")
    return parser


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.dry_run or args.force) and not args.sync:
        parser.error("--dry-run and --force go with --sync")
    if (args.json or args.all) and not args.report:
        parser.error("--json and --all go with --report")
    if args.addresses and not args.sync:
        parser.error("addresses go with --sync (--sync ADDRESS ...); --show takes one ADDRESS of its own")
    if args.mode != "defer" and not args.exim_config:
        parser.error("--mode goes with --exim-config")
    if args.foreground and (args.sync or args.report or args.check_config or args.show or args.exim_config):
        parser.error("--foreground is for the daemon; it does not go with a one-shot mode")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    verbosity = -1 if args.quiet else args.verbose
    # Until the config says otherwise, problems go to stderr.
    logsetup.configure("stderr", "info", verbosity)
    try:
        config = load_config(args.config or default_config_path())
        if not (args.exim_config or _is_daemon(args)):
            # The daemon opens its log itself (before detaching); --exim-config prints only.
            _configure_logging(config, verbosity)
        if args.exim_config:
            return _exim_config(config, args.mode)
        if args.check_config:
            return _check_config(config)
        if args.show:
            return _show(config, args.show)
        if args.sync:
            return _sync(config, args, verbosity)
        if args.report:
            return _report(config, args)
        return _daemon(config, args, verbosity)
    except LdapQuotaError as exc:
        print(f"ldapquota: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ldapquota: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: show it whole
        logging.getLogger("ldapquota").exception("internal error")
        return EX_SOFTWARE


def _is_daemon(args: argparse.Namespace) -> bool:
    return not (args.sync or args.report or args.check_config or args.show or args.exim_config)


def _configure_logging(config: Config, verbosity: int) -> None:
    """logging.target and logging.level for the one-shot modes (-v / -q override the level)."""
    try:
        logsetup.configure(config.logging.target, config.logging.level, verbosity)
    except OSError as exc:
        raise ConfigError(f"{config.path}: logging.target: cannot open {config.logging.target}: {exc.strerror}") from None


# --------------------------------------------------------------------------- --sync


def _sync(config: Config, args: argparse.Namespace, verbosity: int) -> int:
    progress = TerminalProgress(sys.stderr) if not args.quiet and sys.stderr.isatty() else None
    prefix = "dry run: " if args.dry_run else ""
    # docs/contract.md §12: the text file after each full sync (not a dry run, not --sync ADDRESS).
    textfile = metrics.SyncTextfile(None if args.dry_run or args.addresses else config.metrics.textfile)
    directory = open_store(config)
    on_change = _print_would_change if args.dry_run else None
    # docs/contract.md §5: a second full sync of the store gives up here (exit 75), before
    # it reads anything. A dry run writes nothing and needs no lock; --sync ADDRESS never
    # takes it (a full sync must never hold up a hook, §5, §6).
    lock: ContextManager[object] = nullcontext() if args.dry_run or args.addresses else FullSyncLock(config)
    try:
        with lock, directory.connect():
            if args.addresses:  # docs/contract.md §6: only these accounts
                report = run_sync_addresses(config, directory, args.addresses, dry_run=args.dry_run,
                                            force=args.force, on_change=on_change)
            else:
                report = run_sync(
                    config,
                    directory,
                    dry_run=args.dry_run,
                    force=args.force,
                    progress=progress.update if progress else None,
                    on_change=on_change,
                )
    except SyncBusy as busy:  # measured nothing: no summary line, as for an empty mail root
        print(f"ldapquota: refused: {busy}", file=sys.stderr)
        return busy.exit_code
    except LdapQuotaError as failure:
        textfile.ended(failure)
        measured: Optional[SyncReport] = getattr(failure, "report", None)
        if measured is not None:  # ended after measuring: say what was found (and done)
            outcome = "refused" if isinstance(failure, SafetyRefusal) else "failed"
            print(f"ldapquota: {outcome}: {prefix}{measured.summary()}")
        raise
    finally:
        if progress:
            progress.finish()
    textfile.passed(report)
    print(f"ldapquota: {prefix}{report.summary()}")
    return EX_PARTIAL if report.errors else EX_OK


def _print_would_change(change: Change) -> None:
    print(f"would change {change.describe()}  [{change.dn}]")


class TerminalProgress:
    """A one-line progress display for long syncs started on a terminal."""

    def __init__(self, stream: TextIO, every: float = 0.5):
        self.stream = stream
        self.every = every
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.shown = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.shown_at < self.every:
            return
        self.shown_at = now
        rate = done / max(now - self.started, 1e-6)
        self.stream.write(f"\rldapquota: {done} accounts measured ({rate:.0f}/s)\x1b[K")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --------------------------------------------------------------------------- --report


def _report(config: Config, args: argparse.Namespace) -> int:
    """docs/contract.md §6: with --json, stdout carries the JSON array and nothing else."""
    from ldapquota.report import format_json, format_table, run_report

    progress = TerminalProgress(sys.stderr) if not args.quiet and sys.stderr.isatty() else None
    try:
        with open_store(config) as directory:
            report = run_report(config, directory, everyone=args.all, progress=progress.update if progress else None)
    finally:
        if progress:
            progress.finish()
    if args.json:
        sys.stdout.write(format_json(report.rows))
        sys.stdout.flush()
        print(f"ldapquota: {report.summary()}", file=sys.stderr)
    else:
        print("\n".join(format_table(report.rows)))
        print(f"ldapquota: {report.summary()}")
    return EX_PARTIAL if report.errors else EX_OK


# --------------------------------------------------------------------------- --check-config


def _check_config(config: Config) -> int:
    from ldapquota.checks import run_checks, worst_exit_code

    findings = []
    for finding in run_checks(config, lambda: open_store(config).connect()):
        print(finding)
        findings.append(finding)
    code = worst_exit_code(findings)
    print("ldapquota: configuration OK" if code == EX_OK else "ldapquota: configuration has problems (see FAILED above)")
    return code


# --------------------------------------------------------------------------- --show


def _show(config: Config, address: str) -> int:
    from ldapquota.show import describe_accounts

    with open_store(config) as directory:
        lines, code = describe_accounts(config, directory, address)
    print("\n".join(lines))
    return code


# --------------------------------------------------------------------------- --exim-config


def _exim_config(config: Config, mode: str) -> int:
    from ldapquota.exim import render_exim_config

    sys.stdout.write(render_exim_config(config, mode))
    return EX_OK


# --------------------------------------------------------------------------- the daemon


def _daemon(config: Config, args: argparse.Namespace, verbosity: int) -> int:
    from ldapquota import daemon

    return daemon.run(config, foreground=args.foreground, verbosity=verbosity, config_path=args.config)

