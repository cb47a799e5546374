"""Measuring in worker processes gives exactly what measuring in-process gives."""

import pytest
from helpers import maildirsize_text, make_maildir

from ldapquota.config import parse_config
from ldapquota.entry import AccountEntry
from ldapquota.parallel import BATCH_SIZE, evaluate_all


def _config(root, workers):
    return parse_config(
        f"ldap:\n  uri: ldap://127.0.0.1:1\n  base_dn: dc=x\nmailboxes:\n  root: {root}\n  workers: {workers}\n"
        "policy:\n  free_margin: 100\n"
    )


def _entries(root, count):
    entries = []
    for n in range(count):
        address = f"u{n}@example.org"
        kind = n % 5
        if kind == 0:  # over quota
            make_maildir(root, address, maildirsize=maildirsize_text("1000S", (1500, 2)))
        elif kind == 1:  # under quota, far
            make_maildir(root, address, maildirsize=maildirsize_text("1000S", (10, 1)))
        elif kind == 2:  # no maildirsize: walked
            make_maildir(root, address, messages=[(f"{n}.x,S=700:2,S", 700), (f"{n}.y,S=400:2,S", 400)])
        elif kind == 3:  # never got mail
            pass
        attributes = {"mail": [address], "mailQuota": ["1000"]}
        if kind == 4:  # unusable quota value: an error, flag kept
            attributes["mailQuota"] = ["lots"]
            make_maildir(root, address)
        entries.append(AccountEntry(f"uid=u{n},dc=x", attributes))
    return entries


def _summarise(batches):
    accounts = over = 0
    notable = {}
    for batch in batches:
        accounts += batch.accounts
        over += batch.over
        for evaluation in batch.notable:
            notable[evaluation.entry.dn] = (evaluation.new, evaluation.error, evaluation.measurement and evaluation.measurement.usage)
    return accounts, over, notable


def test_workers_and_in_process_agree_on_every_account(tmp_path):
    root = tmp_path / "vmail"
    entries = _entries(root, 2 * BATCH_SIZE + 37)  # several batches and a partial one

    in_process = _summarise(evaluate_all(_config(root, 0), entries, workers=0, now=lambda: 0.0))
    in_workers = _summarise(evaluate_all(_config(root, 2), entries, workers=2, now=lambda: 0.0))

    assert in_workers == in_process
    accounts, over, notable = in_process
    assert accounts == len(entries)
    assert over == sum(1 for n in range(len(entries)) if n % 5 in (0, 2))
    errors = [dn for dn, (_, error, _) in notable.items() if error]
    assert sorted(errors) == sorted(f"uid=u{n},dc=x" for n in range(len(entries)) if n % 5 == 4)


def test_an_error_while_reading_entries_reaches_the_caller_from_the_worker_path(tmp_path):
    root = tmp_path / "vmail"
    good = _entries(root, BATCH_SIZE + 1)

    def truncated():
        yield from good
        raise RuntimeError("search stopped early")

    with pytest.raises(RuntimeError, match="search stopped early"):
        for _ in evaluate_all(_config(root, 1), truncated(), workers=1, now=lambda: 0.0):
            pass


def test_a_directory_smaller_than_one_batch_gives_the_same_results(tmp_path):
    root = tmp_path / "vmail"
    entries = _entries(root, 13)  # measured in this process: no pool is worth starting

    in_process = _summarise(evaluate_all(_config(root, 0), entries, workers=0, now=lambda: 0.0))
    asked_for_workers = _summarise(evaluate_all(_config(root, 2), entries, workers=2, now=lambda: 0.0))

    assert asked_for_workers == in_process
    assert in_process[0] == 13


def test_a_keep_predicate_picks_the_same_accounts_in_workers_and_in_process(tmp_path):
    from ldapquota.report import NearFull

    root = tmp_path / "vmail"
    entries = _entries(root, BATCH_SIZE + 37)
    config = _config(root, 2)
    for keep in (NearFull(config.policy.thresholds), NearFull(config.policy.thresholds, everyone=True)):
        in_process = _summarise(evaluate_all(config, entries, workers=0, now=lambda: 0.0, keep=keep))
        in_workers = _summarise(evaluate_all(config, entries, workers=2, now=lambda: 0.0, keep=keep))
        assert in_workers == in_process
    assert len(in_process[2]) == len(entries)  # everyone
    near = _summarise(evaluate_all(config, entries, workers=2, now=lambda: 0.0, keep=NearFull(config.policy.thresholds)))[2]
    # Over (kinds 0, 2), within 100 bytes of 1000 (none else), failed (4); not the far or the mailless.
    assert sorted(near) == sorted(f"uid=u{n},dc=x" for n in range(len(entries)) if n % 5 in (0, 2, 4))
