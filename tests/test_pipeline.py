"""Pipelined writes (many modifies in flight on a second connection) end exactly as the
same writes one at a time would: against the real slapd, checked with ldapsearch."""

import threading
from dataclasses import dataclass
from typing import Iterator

import pytest
from helpers import config_dict, write_config
from test_daemon import wait_until

from ldapquota.config import load_config
from ldapquota.errors import DirectoryUnavailable, EntryWriteError, WriteSuperseded
from ldapquota.ldap import pipeline
from ldapquota.ldap.store import LdapStore
from ldapquota.quota import QuotaState

pytestmark = pytest.mark.integration

FINE = QuotaState(False, None)
FULL = QuotaState(True, 0)


@dataclass(frozen=True)
class Write:
    dn: str
    old: QuotaState
    new: QuotaState
    has_class: bool


def store_for(server, tmp_path, **ldap):
    config = load_config(str(write_config(tmp_path / "c.yaml", config_dict(server, tmp_path / "vmail", ldap=ldap))))
    return LdapStore(config.ldap).connect()


def flags(server):
    entries = server.ldapsearch(server.people_dn, "(mail=*)", ["mail", "isOverQuota", "objectClass"])
    out = {}
    for attrs in entries.values():
        lowered = {k.lower(): v for k, v in attrs.items()}
        out[lowered["mail"][0]] = ((lowered.get("isoverquota") or [None])[0], "ldapQuotaStatus" in lowered["objectclass"])
    return out


def test_many_writes_in_flight_end_as_each_would_alone(ldap, tmp_path):
    plain = ldap.add_accounts([f"p{n}@example.org" for n in range(12)], quota="1000")
    classed = ldap.add_accounts([f"c{n}@example.org" for n in range(5)], quota="1000", extra={"isOverQuota": "FALSE"})
    changed = ldap.add_accounts([f"s{n}@example.org" for n in range(3)], quota="1000", extra={"isOverQuota": "TRUE"})
    gone = [f"uid=gone{n},{ldap.people_dn}" for n in range(3)]
    writes = (
        [Write(dn, FINE, FULL, False) for dn in plain[:8]]  # the class added in the same modify
        + [Write(dn, FINE, FULL, True) for dn in plain[8:]]  # wrong guess: objectClassViolation, sent again with it
        + [Write(dn, FINE, FULL, False) for dn in classed]  # wrong guess: the class is there already
        + [Write(dn, FINE, FULL, False) for dn in gone]  # no such entry: that write alone fails
        + [Write(dn, FINE, FULL, True) for dn in changed]  # read as FALSE, TRUE now: superseded
        + [Write(dn, FULL, FULL, True) for dn in classed[:2]]  # nothing to change: nothing sent
    )
    assert len(writes) > pipeline.PIPELINE_MIN
    mark = ldap.log_mark()
    threads = threading.active_count()
    with store_for(ldap, tmp_path) as store:
        outcomes = list(store.write_states(iter(writes), if_unchanged=True))
    # The second connection's reader thread ends with it (ldap3's would spin for ever).
    wait_until(lambda: threading.active_count() == threads, 5, "the pipeline's reader thread to end")

    assert [write for write, _ in outcomes] == writes  # in the order given
    kinds = [type(problem).__name__ if problem else None for _, problem in outcomes]
    assert kinds == [None] * 17 + ["EntryWriteError"] * 3 + ["WriteSuperseded"] * 3 + [None] * 2
    assert all("gone" in str(problem) for _, problem in outcomes[17:20])
    assert flags(ldap) == {**{f"p{n}@example.org": ("TRUE", True) for n in range(12)},
                           **{f"c{n}@example.org": ("TRUE", True) for n in range(5)},
                           **{f"s{n}@example.org": ("TRUE", True) for n in range(3)}}
    written = ldap.writes_since(mark, under=ldap.people_dn)
    assert sorted(dn for _, dn in written) == sorted(plain + classed)  # each once, nothing else


@pytest.mark.parametrize("count", [25, 5])
def test_a_failure_reading_the_writes_comes_after_the_writes_before_it(ldap, tmp_path, count):
    """The daemon's SIGTERM arrives as an exception from the writes being read: what was
    sent is answered (and reported) first, pipelined or not."""
    dns = ldap.add_accounts([f"u{n}@example.org" for n in range(count)], quota="1000")

    def stopping() -> Iterator[Write]:
        for dn in dns:
            yield Write(dn, FINE, FULL, False)
        raise RuntimeError("stopping")

    seen = []
    with store_for(ldap, tmp_path) as store, pytest.raises(RuntimeError, match="stopping"):
        for write, problem in store.write_states(stopping()):
            seen.append((write.dn, problem))
    assert seen == [(dn, None) for dn in dns]
    assert set(flags(ldap).values()) == {("TRUE", True)}


# ldap3 checks the host name with ssl.match_hostname (deprecated since Python 3.7): a
# warning, which this suite turns into an error (the other TLS tests run the CLI instead).
@pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")
def test_pipelined_writes_over_start_tls(slapd_tls_server, tmp_path):
    server = slapd_tls_server
    server.ensure_running()
    server.reset()
    dns = server.add_accounts([f"t{n}@example.org" for n in range(20)], quota="1000")
    with store_for(server, tmp_path, start_tls=True, ca_file=str(server.ca_file)) as store:
        outcomes = list(store.write_states(Write(dn, FINE, FULL, False) for dn in dns))
    assert [problem for _, problem in outcomes] == [None] * 20
    assert set(flags(server).values()) == {("TRUE", True)}


def test_pipelined_writes_to_a_read_only_replica_stop_the_run_naming_the_provider(replica_pair, tmp_path):
    provider, consumer = replica_pair
    provider.ensure_running()
    consumer.ensure_running()
    provider.reset()
    dns = provider.add_accounts([f"r{n}@example.org" for n in range(20)], quota="1000")
    wait_until(lambda: len(consumer.ldapsearch(consumer.people_dn, "(mail=r*)", ["1.1"])) == 20, 10, "replication")
    with store_for(consumer, tmp_path) as store, pytest.raises(DirectoryUnavailable, match="read-only replica") as raised:
        list(store.write_states(Write(dn, FINE, FULL, False) for dn in dns))
    assert provider.uri in str(raised.value)
    assert set(flags(provider).values()) == {(None, False)}


def test_a_few_writes_go_one_at_a_time_on_the_store_connection(ldap, tmp_path, monkeypatch):
    dns = ldap.add_accounts([f"f{n}@example.org" for n in range(3)], quota="1000")

    def refuse(*args, **kwargs):
        raise AssertionError("no second connection for a few writes")

    monkeypatch.setattr(pipeline.ldap_connection, "connect_pipelined", refuse)
    with store_for(ldap, tmp_path) as store:
        outcomes = list(store.write_states([Write(dn, FINE, FULL, False) for dn in dns] + [Write(f"uid=x,{ldap.people_dn}", FINE, FULL, True)]))
    assert [type(problem) for _, problem in outcomes] == [type(None)] * 3 + [EntryWriteError]
    assert not isinstance(outcomes[-1][1], WriteSuperseded)
