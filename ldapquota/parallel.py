"""Measuring accounts in batches, in worker processes, while the main process reads LDAP.

A full sync spends its time in two places: decoding LDAP entries (ldap3, pure Python) and
measuring mailboxes (system calls, parsing, deciding). Both hold the GIL, so threads do not
overlap them; processes do. The main process reads one page of entries and hands it to a
worker as a batch, then reads the next page while the worker measures. On a mail store
on NFS or a cold disk, measuring is I/O-bound and several workers help further.

A worker sends back only what the main process acts on: the counts, and the accounts that
changed, failed or have no maildir (or, for ``--report``, those its ``keep`` picks). So the
traffic between processes stays small however many accounts there are. Workers start from a fresh interpreter ("forkserver"), because
forking a process that already runs threads (the daemon) is not safe.
"""

import dataclasses
import itertools
import multiprocessing
import multiprocessing.pool
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Sequence

from ldapquota.entry import AccountEntry
from ldapquota.evaluation import Evaluation, Evaluator
from ldapquota.settings import Config
from ldapquota.sources.base import UsageSource

BATCH_SIZE = 500
MAX_WORKERS = 8


@dataclass
class BatchResult:
    accounts: int = 0
    over: int = 0
    notable: List[Evaluation] = field(default_factory=list)  # changed, failed or without maildir; or as `keep` says


#: Which evaluations a batch sends back instead of the default (changed, failed, no maildir).
#: Crosses to the worker processes: a module-level function or an instance of a
#: module-level class, so that it pickles.
Keep = Callable[[Evaluation], bool]


def default_workers() -> int:
    """One core reads LDAP, the others measure (at most eight); 0 on a single core."""
    return max(0, min(MAX_WORKERS, (os.cpu_count() or 1) - 1))


def workers_for(config: Config) -> int:
    """``mailboxes.workers``, or as many as :func:`default_workers` says."""
    return default_workers() if config.mailboxes.workers is None else config.mailboxes.workers


def evaluate_batch(evaluator: Evaluator, entries: Sequence[AccountEntry], keep: Optional[Keep] = None) -> BatchResult:
    result = BatchResult()
    for evaluation in evaluator.evaluate_many(entries):
        result.accounts += 1
        if evaluation.new.over:
            result.over += 1
        if keep is not None:
            if keep(evaluation):
                result.notable.append(evaluation)
        elif evaluation.error is not None or evaluation.changed or (evaluation.measurement and evaluation.measurement.missing):
            result.notable.append(evaluation)
    return result


def evaluate_all(
    config: Config,
    entries: Iterable[AccountEntry],
    *,
    workers: int,
    now: Callable[[], float],
    source: Optional[UsageSource] = None,
    keep: Optional[Keep] = None,
) -> Iterator[BatchResult]:
    """Batches of results, in the order of ``entries``. An exception raised while reading
    ``entries`` (a truncated search) propagates to the caller unchanged. ``keep``: which
    evaluations each batch carries back (None: those a sync acts on)."""
    batches = _batches(entries)
    first = next(batches, None)
    if first is None:
        return
    if workers <= 0 or len(first) < BATCH_SIZE or (source is not None and not source.parallel):
        # No workers asked for, or the whole directory fits in one batch, or the source
        # answers for every mailbox at once: starting processes would cost more than it saves.
        evaluator = Evaluator(config, source, now=now)
        try:
            for batch in itertools.chain([first], batches):
                yield evaluate_batch(evaluator, batch, keep)
        finally:
            if source is None:
                evaluator.close()
        return
    context = multiprocessing.get_context("forkserver")
    # The LDAP password does not cross to the workers: measuring does not need it.
    settings = dataclasses.replace(config, ldap=dataclasses.replace(config.ldap, bind_password=None))
    with context.Pool(workers, initializer=_start_worker, initargs=(settings, keep)) as pool:
        pending: Deque[multiprocessing.pool.AsyncResult[BatchResult]] = deque()
        for batch in itertools.chain([first], batches):
            # Plain dicts pickle; ldap3's case-insensitive dict is a class of its own.
            plain = [AccountEntry(entry.dn, dict(entry.attributes)) for entry in batch]
            pending.append(pool.apply_async(_worker_batch, (plain, now())))
            # Bounded read-ahead: memory stays flat however large the directory is.
            while len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batches(entries: Iterable[AccountEntry]) -> Iterator[List[AccountEntry]]:
    batch: List[AccountEntry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- in the worker

_worker_evaluator: Optional[Evaluator] = None
_worker_keep: Optional[Keep] = None


def _start_worker(config: Config, keep: Optional[Keep] = None) -> None:
    global _worker_evaluator, _worker_keep
    _worker_evaluator = Evaluator(config)
    _worker_keep = keep


def _worker_batch(entries: List[AccountEntry], now: float) -> BatchResult:
    assert _worker_evaluator is not None
    _worker_evaluator.now = lambda: now
    return evaluate_batch(_worker_evaluator, entries, _worker_keep)
