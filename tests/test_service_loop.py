"""The daemon's loop (ldapquota/service/loop.py) driven in-process, one turn at a time
(``Service.step``, without its wait), over a fake store and a fake mail store with a clock
the test moves. What a real slapd and real maildirs add is tests/test_daemon.py."""

import logging

import pytest
import yaml
from fakes import EPOCH, STATUS_DN, FakeClock, FakeDirectory, FakeSource

from ldapquota.config import parse_config
from ldapquota.errors import DirectoryUnavailable, SafetyRefusal, SearchIncomplete
from ldapquota.quota import QuotaState
from ldapquota.service.control import Stopping
from ldapquota.service.loop import Service

DAEMON = {"interval": "1h", "account_refresh": "60s", "debounce": "0.5s", "over_recheck": "30s", "poll_interval": "30s"}


class Harness:
    """A Service over fakes; ``clock`` is its monotonic clock, the wall (and the server's)
    clock is EPOCH plus it."""

    def __init__(self, tmp_path, *, policy=None, daemon=None):
        self.clock = FakeClock(1000.0)
        self.directory = FakeDirectory(self.wall)
        self.source = FakeSource()
        self.settings = {
            "ldap": {"uri": "ldap://127.0.0.1:9", "base_dn": "ou=people,dc=example,dc=org", "status_dn": STATUS_DN},
            "accounts": {"quota_attribute": "mailQuota"},
            "mailboxes": {"root": str(tmp_path), "workers": 0},
            "policy": {"max_changes": "100%", "free_margin": 0, **(policy or {})},
            "daemon": {**DAEMON, "pidfile": str(tmp_path / "ldapquota.pid"), **(daemon or {})},
        }
        self.config_path = tmp_path / "ldapquota.yaml"
        text = self.write_config()
        self.config = parse_config(text, str(self.config_path))
        self.service = Service(self.config, config_path=str(self.config_path), clock=self.clock, wall=self.wall,
                               source_factory=self._source, store_factory=lambda config: self.directory.store())

    def write_config(self, **changes):
        """The config file, with ``changes`` (section → keys) applied."""
        for section, values in changes.items():
            self.settings[section].update(values)
        text = yaml.safe_dump(self.settings)
        self.config_path.write_text(text)
        return text

    def _source(self, config):
        self.source.config = config
        return self.source

    def wall(self):
        return EPOCH + self.clock()

    @property
    def feed(self):
        return self.source.current_feed

    def account(self, address, *, quota="1000", used=0, over=None):
        if used is not None:
            self.source.set_usage(address, used)
        return self.directory.add_account(address, quota=quota, over=over)

    def start(self):
        """Started, and the first full sync done."""
        self.service.start()
        self.service.step()
        assert self.service.ready
        return self

    def step(self, advance=0.0):
        self.clock.advance(advance)
        self.service.step()

    def deliver(self, address, used):
        """Mail arrives (or is deleted): the mailbox's usage changes and the feed says so."""
        self.source.set_usage(address, used)
        self.feed.push(address)

    def settle(self):
        """The turn that notices the events, and the one after the debounce (a mailbox
        measured within it is measured again only at its end)."""
        self.step()
        self.step(0.5)


@pytest.fixture
def make(tmp_path):
    made = []

    def make(**kwargs):
        harness = Harness(tmp_path, **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.service.close()


def test_the_first_full_sync_builds_the_table_and_marks_ready(make, caplog):
    caplog.set_level(logging.INFO)
    h = make()
    under = h.account("under@example.org", used=10)
    full = h.account("full@example.org", used=2000)
    gone = h.account("nomail@example.org", used=None)  # no mailbox yet
    h.service.start()
    assert not h.service.ready
    h.service.step()
    assert h.service.ready and "ready: 3 accounts" in caplog.text
    assert sorted(h.service.table.records) == sorted(dn.lower() for dn in (under, full, gone))
    assert h.feed.followed == {"under@example.org", "full@example.org", "nomail@example.org"}
    assert h.directory.flag(full) == "TRUE" and h.directory.flag(under) is None
    assert h.service.table.over == {full.lower()}
    assert len(h.directory.sync_times) == 1
    # Next: the account refresh in a minute, the next full sync in an hour.
    assert h.service.refresh.due_at == h.clock() + 60 and h.service.full_sync.due_at == h.clock() + 3600


def test_an_event_is_measured_and_written_at_once_and_the_rest_of_a_burst_at_its_end(make):
    h = make()
    h.account("first@example.org", used=10)
    h.start()
    dn = h.account("a@example.org", used=10)
    h.step(60)  # the account refresh finds the new account
    h.step()
    assert dn.lower() in h.service.table.records and h.directory.flag(dn) is None
    h.step(1)  # a quiet mailbox
    h.deliver("a@example.org", 5000)
    measured = len(h.source.measured)
    h.step()
    assert len(h.source.measured) == measured + 1
    assert h.directory.flag(dn) == "TRUE" and not h.service.pending
    assert h.service.table.get(dn.lower()).state == QuotaState(True, 0)
    h.deliver("a@example.org", 10)  # within daemon.debounce: folded into one more look
    h.step(0.1)
    assert len(h.source.measured) == measured + 1 and h.directory.flag(dn) == "TRUE"
    h.step(0.4)
    assert len(h.source.measured) == measured + 2 and h.directory.flag(dn) == "FALSE"


def test_changes_wait_while_the_store_is_down_and_are_written_when_it_is_back(make, caplog):
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.directory.down = "server stopped"
    h.deliver("a@example.org", 5000)
    h.settle()
    assert len(h.service.pending) == 1 and not h.service.link.up
    assert "LDAP unavailable" in caplog.text and "1 change(s) pending" in caplog.text
    connects = h.directory.connects
    h.step(0.1)  # within the backoff: no new try
    assert h.directory.connects == connects and len(h.service.pending) == 1
    h.directory.down = None
    h.step(h.service.link.retry_at - h.clock())
    assert h.directory.flag(dn) == "TRUE" and not h.service.pending and h.service.link.up


def test_a_flag_someone_else_changed_is_decided_again_by_the_account_refresh(make):
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.clock.advance(5)
    h.directory.modify(dn, isOverQuota="TRUE")  # a hand edit: mail is refused for nothing
    h.step(60)  # the account refresh reads it
    h.step()  # and measures it again
    assert h.directory.flag(dn) == "FALSE"
    assert h.directory.writes[-1].new == QuotaState(False, None)


def test_a_full_sync_refused_for_max_changes_holds_event_flips_until_a_sync_passes(make, caplog):
    h = make(policy={"max_changes": 1})
    dns = [h.account(f"u{n}@example.org", used=10) for n in range(4)]
    h.start()
    for n in range(4):  # a bulk change: every mailbox over quota at once
        h.deliver(f"u{n}@example.org", 5000)
    writes = len(h.directory.writes)
    h.settle()
    # One flip is within the budget; the rest asked for a full sync, which refused.
    assert len(h.directory.writes) == writes + 1
    assert h.service.refused and "full sync refused" in caplog.text
    assert len(h.service.pending) == 3
    h.step(120)
    assert len(h.directory.writes) == writes + 1 and len(h.service.pending) == 3
    # The mail store is put right: two of the held mailboxes are under quota again, so the
    # next try of the full sync has one flip left to make, and passes.
    held = [n for n, dn in enumerate(dns) if h.directory.flag(dn) != "TRUE"]
    for n in held[:2]:
        h.deliver(f"u{n}@example.org", 10)
    h.step(h.service.full_sync.due_at - h.clock())
    assert not h.service.refused
    h.step()  # what was held is decided again against the store
    assert not h.service.pending
    for n, dn in enumerate(dns):
        assert (h.directory.flag(dn) == "TRUE") == (h.source.usage[f"u{n}@example.org"].bytes > 1000)
    assert sum(h.directory.flag(dn) == "TRUE" for dn in dns) == 2


def test_while_the_mail_store_is_unready_nothing_is_measured_or_written(make):
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.source.ready_error = SafetyRefusal("mailboxes.root is empty (not mounted?)")
    h.deliver("a@example.org", 5000)
    measured = len(h.source.measured)
    h.settle()
    h.step(1)
    assert len(h.source.measured) == measured and h.directory.flag(dn) is None
    h.source.ready_error = None
    h.step(5)
    assert h.directory.flag(dn) == "TRUE" and h.source.reopened >= 1


def test_over_quota_mailboxes_are_measured_again_without_events(make):
    h = make()
    dn = h.account("a@example.org", used=5000)
    h.start()
    assert h.directory.flag(dn) == "TRUE"
    h.source.set_usage("a@example.org", 10)  # freed where no notification reaches (NFS)
    h.step(30)
    h.step()
    assert h.directory.flag(dn) == "FALSE"


def test_over_quota_mailboxes_whose_every_change_the_feed_reports_are_not_measured_again(make):
    h = make()
    seen = h.account("seen@example.org", used=5000)
    unseen = h.account("unseen@example.org", used=5000)
    h.start()
    h.feed.complete.add("seen@example.org")  # e.g. a complete deep inotify watch on a local disk
    measured = len(h.source.measured)
    h.source.set_usage("seen@example.org", 10)  # (a real feed would have reported this)
    h.source.set_usage("unseen@example.org", 10)
    h.step(30)
    h.step()
    assert h.source.measured[measured:] == ["unseen@example.org"]
    assert h.directory.flag(unseen) == "FALSE" and h.directory.flag(seen) == "TRUE"


def test_disabled_and_deleted_accounts_are_forgotten(make):
    h = make()
    disabled = h.account("disabled@example.org")
    deleted = h.account("deleted@example.org")
    h.account("stays@example.org")
    h.start()
    h.clock.advance(5)
    h.directory.set_account(disabled, False)
    h.directory.delete(deleted)
    h.step(60)  # the refresh: departed; the first DN listing: deleted
    assert disabled.lower() not in h.service.table.records
    assert deleted.lower() not in h.service.table.records
    assert h.feed.followed == {"stays@example.org"}


def test_a_lost_notification_runs_a_full_sync(make):
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.source.set_usage("a@example.org", 5000)  # its event was lost
    h.feed.push(overflow=True)
    h.step()
    assert h.directory.flag(dn) == "TRUE"


def test_a_full_sync_asked_for_while_one_runs_runs_after_it(make):
    h = make()
    early = h.account("a@example.org", used=10)
    h.account("b@example.org", used=10)
    h.start()

    def meanwhile(mailbox):
        # While the sync measures b (a is measured already), a fills up and its
        # notification is lost in an overflow: only another full sync can notice.
        if mailbox == "b@example.org":
            h.clock.advance(1)
            h.source.set_usage("a@example.org", 5000)
            h.feed.push(overflow=True)

    h.source.on_measure = meanwhile
    h.service.request_full_sync()
    h.step()
    h.source.on_measure = None
    assert h.directory.flag(early) is None  # the sync measured a before it filled up
    h.step()
    assert h.directory.flag(early) == "TRUE"


def test_flips_held_during_a_full_sync_do_not_ask_for_another_one(make):
    h = make(policy={"max_changes": 0})
    dn = h.account("a@example.org", used=10)
    h.start()
    due = h.service.full_sync.due_at
    h.source.set_usage("a@example.org", 5000)
    h.service.in_sync = True  # as from the progress callback of a running sync
    h.feed.push("a@example.org")
    for seconds in (0.1, 0.5):  # ticks: the event noticed, then measured after the debounce
        h.clock.advance(seconds)
        h.service.background_tick()
    assert h.service.pending.budget_spent and len(h.service.pending) == 1
    assert h.service.full_sync.due_at == due  # the running sync decides, then the held flip
    assert h.directory.flag(dn) is None


def test_the_server_clock_is_learnt_only_from_a_sync_time_just_written(make, caplog):
    caplog.set_level(logging.INFO)
    h = make()
    h.account("a@example.org", used=10)
    h.clock.advance(86400)  # the status entry was last written a day ago
    h.directory.failing[STATUS_DN.lower()] = "insufficient access to quotaSyncTime"
    h.start()
    assert "insufficient access to quotaSyncTime" in caplog.text and h.directory.sync_times == []
    # Its modification time is a day old, not the server's "now": nothing to learn from it.
    assert h.service.window.server_offset == 0.0 and "clock is" not in caplog.text
    del h.directory.failing[STATUS_DN.lower()]
    h.clock.advance(0.5)
    h.service.request_full_sync()
    h.step()
    assert len(h.directory.sync_times) == 1 and -1.0 <= h.service.window.server_offset <= 0.0


def test_a_flag_an_event_writes_while_a_full_sync_reads_is_not_taken_back(make, monkeypatch):
    # The sync reads a page of accounts, then measures them a batch at a time; the events
    # handled between two batches may write an account whose entry, read before that
    # write, is still to come from the page.
    monkeypatch.setattr("ldapquota.parallel.BATCH_SIZE", 2)
    h = make()
    dns = [h.account(f"u{n}@example.org", used=10) for n in range(4)]
    h.start()
    h.deliver("u3@example.org", 5000)
    h.step()  # noticed; measured after the debounce, which ends during the sync below
    h.source.on_measure = lambda mailbox: h.clock.advance(0.3)
    h.service.request_full_sync()
    h.step()
    h.source.on_measure = None
    assert h.directory.flag(dns[3]) == "TRUE"
    assert h.service.table.get(dns[3].lower()).state == h.directory.state(dns[3])
    h.deliver("u3@example.org", 10)  # mail deleted
    h.settle()
    assert h.directory.flag(dns[3]) == "FALSE"


def test_a_flag_an_event_writes_while_an_account_refresh_reads_is_not_taken_back(make):
    h = make()
    dns = [h.account(f"u{n}@example.org", used=10) for n in range(4)]
    h.start()  # the first refresh reads these four again (modified just before the sync)
    h.step(59.8)
    h.deliver("u3@example.org", 5000)
    h.step()  # noticed; due at the end of the debounce, while the refresh below reads
    h.clock.drift = 0.05  # time passes as the refresh goes: events are handled meanwhile
    h.step(0.3)
    h.clock.drift = 0.0
    assert len(h.source.feeds) == 1 and h.service.refresh.due_at > h.clock()  # the refresh ran
    assert h.directory.written(dns[3]) == [QuotaState(True, 0)]
    assert h.service.table.get(dns[3].lower()).state == h.directory.state(dns[3])
    h.deliver("u3@example.org", 10)  # mail deleted
    h.settle()
    assert h.directory.flag(dns[3]) == "FALSE"


def test_a_directory_that_shows_no_account_at_all_is_not_believed(make, caplog):
    h = make()
    dns = [h.account(f"u{n}@example.org", used=10) for n in range(2)]
    h.start()
    hidden = {dn.lower(): h.directory.entries.pop(dn.lower()) for dn in dns}  # an ACL now hides them all
    h.step(60)  # the account refresh and its first DN listing
    assert "listing found no account at all; forgetting none" in caplog.text
    h.service.request_full_sync()
    h.step()
    assert h.service.refused and "matched no account" in caplog.text
    # Refused: not read as "every account is gone". They stay followed.
    assert sorted(h.service.table.records) == sorted(hidden)
    assert h.feed.followed == {"u0@example.org", "u1@example.org"}
    h.directory.entries.update(hidden)
    h.deliver("u0@example.org", 5000)
    h.step(h.service.full_sync.due_at - h.clock())
    assert not h.service.refused
    h.settle()
    assert h.directory.flag(dns[0]) == "TRUE"


def test_an_entry_stamped_in_the_future_does_not_blind_the_account_refresh(make):
    h = make()
    h.account("a@example.org", used=10)
    h.start()
    # Imported, or replicated from a server whose clock runs an hour ahead.
    ahead = h.account("ahead@example.org", used=10)
    h.directory.entries[ahead.lower()].modified += 3600
    h.step(60)
    assert ahead.lower() in h.service.table.records
    full = h.account("new@example.org", used=5000)
    h.step(60)
    h.step()
    assert full.lower() in h.service.table.records and h.directory.flag(full) == "TRUE"


def test_a_reload_takes_the_new_file_and_keeps_the_running_one_when_it_is_refused(make, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    logging_set_up = []  # (the process's logging is left alone: pytest captures it)
    monkeypatch.setattr("ldapquota.log.configure", lambda *args, **kwargs: logging_set_up.append(args))
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.write_config(policy={"max_changes": 7}, daemon={"debounce": "2s"})
    h.service.request_reload()
    h.step()  # the reload, and the full sync it asks for (the policy changed)
    assert "configuration reloaded" in caplog.text and logging_set_up == [("stderr", "info", 0)]
    assert h.service.config.policy.max_changes.count == 7 and h.service.pending.max_changes.count == 7
    assert h.service.debouncer.delay == 2.0 and len(h.directory.sync_times) == 2
    assert h.service.evaluator.source is h.source
    h.config_path.write_text("policy: [not, a, mapping\n")
    h.service.request_reload()
    h.step()
    assert "keeping the running configuration" in caplog.text and h.service.config.policy.max_changes.count == 7
    h.deliver("a@example.org", 5000)
    h.step()
    assert h.directory.flag(dn) == "TRUE"


def test_a_stop_during_a_full_sync_leaves_it_at_once(make):
    h = make()
    dns = [h.account(f"u{n}@example.org", used=5000) for n in range(3)]
    h.source.on_measure = lambda mailbox: h.service.request_stop()  # SIGTERM while it measures
    h.service.start()
    with pytest.raises(Stopping):
        h.service.step()
    assert not h.service.in_sync and all(h.directory.flag(dn) is None for dn in dns)
    assert h.directory.connects == 2 and h.directory.sync_times == []  # the loop's, the sync's
    assert h.service.run() == 0  # asked to stop: it leaves without another turn
    assert h.feed.closed


def test_a_full_sync_the_server_cuts_short_is_retried_calmly_and_events_go_on(make, caplog):
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.directory.cut_short["search_accounts"] = SearchIncomplete("search stopped early because of the size limit")
    h.service.request_full_sync()
    h.step()
    assert "full sync failed" in caplog.text and "LDAP unavailable" not in caplog.text
    # The server answers: the loop's connection stays, and events are written at once.
    assert h.service.link.up
    h.deliver("a@example.org", 5000)
    h.settle()
    assert h.directory.flag(dn) == "TRUE"
    # Each try reads the whole directory: not again at every turn, but backing off.
    tries = h.directory.searches["search_accounts"]
    for _ in range(120):
        h.step(0.5)
    assert h.directory.searches["search_accounts"] - tries <= 6
    del h.directory.cut_short["search_accounts"]
    h.step(h.service.full_sync.due_at - h.clock())
    assert len(h.directory.sync_times) == 2  # passed
    assert h.service.full_sync.due_at == h.clock() + 3600


def test_an_account_refresh_the_server_cuts_short_is_retried_calmly(make, caplog):
    h = make()
    h.account("a@example.org", used=10)
    h.start()
    h.directory.cut_short["changed_accounts"] = SearchIncomplete("search returned a referral")
    h.step(60)
    assert "account refresh failed" in caplog.text and h.service.link.up
    tries = h.directory.searches["changed_accounts"]
    for _ in range(120):
        h.step(0.5)
    assert h.directory.searches["changed_accounts"] - tries <= 6
    del h.directory.cut_short["changed_accounts"]
    new = h.account("new@example.org", used=10)
    h.step(60)
    assert new.lower() in h.service.table.records


def test_a_full_sync_whose_connection_breaks_waits_for_the_store(make, caplog):
    h = make()
    dn = h.account("a@example.org", used=10)
    h.start()
    h.directory.cut_short["search_accounts"] = DirectoryUnavailable("receive timeout")
    h.service.request_full_sync()
    h.step()
    assert "LDAP unavailable: receive timeout" in caplog.text and not h.service.link.up
    tries = h.directory.searches["search_accounts"]
    for _ in range(120):  # the store reconnects each time; the full sync backs off anyway
        h.step(0.5)
    assert h.directory.searches["search_accounts"] - tries <= 6
    del h.directory.cut_short["search_accounts"]
    h.step(h.service.full_sync.due_at - h.clock())
    assert len(h.directory.sync_times) == 2 and h.directory.flag(dn) is None


def test_an_account_added_in_the_second_a_refresh_read_is_found_by_the_next_one(make):
    h = make()
    h.account("a@example.org", used=10)
    h.start()
    h.clock.advance(60.1)
    h.account("early@example.org", used=10)  # the refresh below reads this second's first change
    h.step(0.1)
    assert "uid=early,ou=people,dc=example,dc=org" in h.service.table.records
    h.clock.advance(0.5)
    late = h.account("late@example.org", used=5000)  # same second, after that read
    h.step(60)
    h.step()
    assert late.lower() in h.service.table.records and h.directory.flag(late) == "TRUE"
