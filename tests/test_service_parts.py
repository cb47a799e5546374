"""The daemon's parts (ldapquota/service/), each on its own, in-process: fakes for the
store and the mail store (tests/fakes.py), a clock the test moves, no servers, no sleeps.
The daemon as a whole, against a real slapd, is tests/test_daemon.py."""

import contextlib
import logging
from fractions import Fraction

import pytest
from fakes import EPOCH, STATUS_DN, FakeClock, FakeDirectory, FakeFeed, account_dn

from ldapquota.entry import ATTR_FREE, ATTR_OVER, AccountEntry
from ldapquota.errors import DirectoryUnavailable, EntryWriteError, PermissionDenied, SchemaMissing, SearchIncomplete
from ldapquota.quota import QuotaState
from ldapquota.schedule import Backoff
from ldapquota.service.control import Stopping, StopSwitch
from ldapquota.service.fullsync import SyncHooks, SyncTee
from ldapquota.service.link import ReconnectingStore, breaks_connection
from ldapquota.service.pending import PendingWrites
from ldapquota.service.refresher import MODIFY_MARGIN, SECOND_CLOSED, ListingPace, RefreshWindow, list_accounts, refresh
from ldapquota.service.table import AccountTable, dn_key
from ldapquota.sync import Change, WriteSuperseded
from ldapquota.units import ChangeLimit

UNDER = QuotaState(False, None)
OVER = QuotaState(True, 0)
LAYOUT = ["mail", ATTR_OVER, ATTR_FREE, "mailQuota", "mailbox"]


def entry(address, *, quota="1000", mailbox=None, over=None):
    attributes = {"mail": [address], "mailQuota": [quota]}
    if mailbox is not None:
        attributes["mailbox"] = [mailbox]
    if over is not None:
        attributes[ATTR_OVER] = ["TRUE" if over else "FALSE"]
    return AccountEntry(account_dn(address), attributes)


def table_with_feed(clock=None):
    table = AccountTable(LAYOUT, clock or FakeClock())
    table.feed = FakeFeed()
    return table, table.feed


def no_stop():
    return False


# --------------------------------------------------------------------------- table


def test_upsert_records_a_new_account_and_follows_its_mailbox():
    table, feed = table_with_feed()
    key, record, changed = table.upsert(entry("Ann@example.org", over=True), "Ann@example.org", "box-ann")
    assert (key, changed) == (account_dn("Ann@example.org").lower(), True)
    assert record.dn == account_dn("Ann@example.org") and record.mailbox == "box-ann"
    assert record.state == QuotaState(True, None) and record.has_class
    assert table.get(key) is record and len(table) == 1
    assert table.keys_for("box-ann") == [key]
    assert feed.follows == ["box-ann"]
    # Our own attributes are the state, not the layout: the record keeps them once.
    assert ATTR_OVER.lower() not in table.layout and "mailquota" in table.layout


def test_upsert_says_what_changed_beyond_the_state():
    table, feed = table_with_feed()
    table.upsert(entry("a@example.org"), "a@example.org", "box-a")
    assert table.upsert(entry("a@example.org", over=True), "a@example.org", "box-a")[2] is False
    assert table.upsert(entry("a@example.org", quota="2000"), "a@example.org", "box-a")[2] is True
    assert feed.follows == ["box-a"]  # the same mailbox is not followed again
    _, record, changed = table.upsert(entry("a@example.org", quota="2000", mailbox="box-new"), "a@example.org", "box-new")
    assert changed and record.mailbox == "box-new"
    assert feed.unfollows == ["box-a"] and feed.followed == {"box-new"}
    assert table.keys_for("box-a") == ()


def test_a_mailbox_the_feed_follows_poorly_is_followed_again_on_the_next_upsert():
    table, feed = table_with_feed()
    table.upsert(entry("a@example.org"), "a@example.org", "box-a")
    feed.poorly.add("box-a")
    table.upsert(entry("a@example.org"), "a@example.org", "box-a")
    assert feed.follows == ["box-a", "box-a"]


def test_a_mailbox_shared_by_two_accounts_is_followed_until_neither_uses_it():
    table, feed = table_with_feed()
    one, _, _ = table.upsert(entry("one@example.org"), "one@example.org", "shared")
    two, _, _ = table.upsert(entry("two@example.org"), "two@example.org", "shared")
    assert list(table.keys_for("shared")) == [one, two]
    assert table.forget(one).address == "one@example.org"
    assert feed.unfollows == [] and table.keys_for("shared") == [two]
    # The second account moves elsewhere: nobody uses "shared" any more.
    table.upsert(entry("two@example.org", mailbox="own"), "two@example.org", "own")
    assert feed.unfollows == ["shared"] and feed.followed == {"own"}
    assert table.forget(one) is None  # forgetting twice is harmless


def test_forget_drops_the_account_from_the_over_quota_set():
    table, feed = table_with_feed()
    key, _, _ = table.upsert(entry("a@example.org", over=True), "a@example.org", "box-a")
    table.set_state(key, OVER)
    assert table.over == {key}
    table.forget(key)
    assert table.over == set() and table.get(key) is None and feed.unfollows == ["box-a"]


def test_an_account_without_a_mailbox_is_kept_but_nothing_is_followed():
    table, feed = table_with_feed()
    key, record, _ = table.upsert(entry("a@example.org"), "a@example.org", None)
    assert record.mailbox is None and feed.follows == []
    table.forget(key)
    assert feed.unfollows == []


def test_unseen_lists_the_accounts_the_current_generation_did_not_see():
    table, _ = table_with_feed()
    old, _, _ = table.upsert(entry("old@example.org"), "old@example.org", "old")
    table.generation += 1
    seen, record, _ = table.upsert(entry("seen@example.org"), "seen@example.org", "seen")
    assert record.generation == table.generation
    assert table.unseen() == [old]
    table.get(old).generation = table.generation
    assert table.unseen() == []


def test_set_state_marks_written_entries_as_holding_the_class():
    table, _ = table_with_feed()
    key, record, _ = table.upsert(entry("a@example.org"), "a@example.org", "box-a")
    assert not record.has_class
    table.set_state(key, OVER)
    assert not record.has_class and table.over == {key}
    table.set_state(key, UNDER, written=True)
    assert record.has_class and record.state == UNDER and table.over == set()
    table.set_state("uid=nobody", OVER)  # an account forgotten meanwhile: nothing happens


def test_entry_for_gives_the_evaluator_the_account_with_the_state_asked_for():
    table, _ = table_with_feed()
    key, record, _ = table.upsert(entry("a@example.org", over=True), "a@example.org", "box-a")
    rebuilt = table.entry_for(record, QuotaState(False, 42))
    assert rebuilt.dn == record.dn
    assert rebuilt.first("MAIL") == "a@example.org" and rebuilt.first("mailQuota") == "1000"
    assert rebuilt.quota_state == QuotaState(False, 42)
    assert table.entry_for(record, OVER).quota_state == OVER


def test_dn_keys_are_lower_case():
    assert dn_key("uid=A,ou=People") == "uid=a,ou=people"
    assert dn_key("uid=a") == "uid=a"


# --------------------------------------------------------------------------- pending writes


@pytest.fixture
def world():
    clock = FakeClock(EPOCH)
    directory = FakeDirectory(clock)
    table, _ = table_with_feed(clock)
    return clock, directory, table


def account(directory, table, address, *, stored=UNDER):
    dn = directory.add_account(address, quota="1000", over=stored.over, free=stored.free_bytes)
    key, _, _ = table.upsert(entry(address, over=stored.over), address, address)
    table.set_state(key, stored)
    return key, dn


def change(table, key, new):
    record = table.get(key)
    return Change(record.dn, record.address, record.state, new, record.has_class, "test")


def flush(pending, directory, table):
    return pending.flush(directory.store().connect(), table, stopping=no_stop, shielded=contextlib.nullcontext)


def test_flush_writes_what_waits_and_only_that(world):
    _, directory, table = world
    a, dn_a = account(directory, table, "a@example.org")
    b, dn_b = account(directory, table, "b@example.org", stored=QuotaState(False, 900))
    account(directory, table, "c@example.org")  # nothing waits for it
    pending = PendingWrites(ChangeLimit(count=10))
    pending.put(a, change(table, a, OVER))
    pending.put(b, change(table, b, QuotaState(False, 800)))
    assert flush(pending, directory, table) is None
    assert [write.dn for write in directory.writes] == [dn_a, dn_b]
    assert directory.state(dn_a) == OVER and directory.state(dn_b) == QuotaState(False, 800)
    assert table.get(a).state == OVER and table.get(b).state == QuotaState(False, 800)
    assert not pending and pending.flips_since_sync == 1  # b's free bytes are no flip
    assert pending.written == {a, b}
    assert flush(pending, directory, table) is None and len(directory.writes) == 2


def test_a_write_to_an_entry_that_vanished_forgets_the_account(world, caplog):
    _, directory, table = world
    a, dn_a = account(directory, table, "a@example.org")
    b, _ = account(directory, table, "b@example.org")
    directory.delete(dn_a)
    pending = PendingWrites(ChangeLimit(count=10))
    pending.put(a, change(table, a, OVER))
    pending.put(b, change(table, b, OVER))
    with caplog.at_level(logging.INFO):
        assert flush(pending, directory, table) is None
    assert table.get(a) is None and "gone from LDAP" in caplog.text
    assert table.get(b).state == OVER and not pending


def test_a_write_refused_for_one_entry_keeps_the_account_and_drops_the_write(world, caplog):
    _, directory, table = world
    a, dn_a = account(directory, table, "a@example.org")
    directory.failing[dn_a.lower()] = "insufficient access to isOverQuota"
    pending = PendingWrites(ChangeLimit(count=10))
    pending.put(a, change(table, a, OVER))
    assert flush(pending, directory, table) is None
    assert table.get(a).state == UNDER and not pending  # measured again on its next event
    assert "insufficient access" in caplog.text


def test_an_outage_returns_the_error_and_keeps_what_was_not_written(world):
    _, directory, table = world
    keys = [account(directory, table, f"u{n}@example.org")[0] for n in range(3)]
    pending = PendingWrites(ChangeLimit(count=10))
    for key in keys:
        pending.put(key, change(table, key, OVER))
    directory.writes_until_down = 1
    failure = flush(pending, directory, table)
    assert isinstance(failure, DirectoryUnavailable)
    assert len(directory.writes) == 1 and list(pending) == keys[1:]
    assert table.get(keys[0]).state == OVER and table.get(keys[1]).state == UNDER


def test_a_change_for_a_forgotten_account_is_dropped(world):
    _, directory, table = world
    a, _ = account(directory, table, "a@example.org")
    pending = PendingWrites(ChangeLimit(count=10))
    pending.put(a, change(table, a, OVER))
    table.forget(a)
    assert flush(pending, directory, table) is None
    assert not pending and directory.writes == []


def test_flush_stops_between_writes_when_asked(world):
    _, directory, table = world
    a, _ = account(directory, table, "a@example.org")
    pending = PendingWrites(ChangeLimit(count=10))
    pending.put(a, change(table, a, OVER))
    assert pending.flush(directory.store().connect(), table, stopping=lambda: True, shielded=contextlib.nullcontext) is None
    assert directory.writes == [] and list(pending) == [a]


def test_flips_beyond_max_changes_wait_for_a_full_sync(world, caplog):
    _, directory, table = world
    keys = [account(directory, table, f"u{n}@example.org")[0] for n in range(4)]
    free, _ = account(directory, table, "free@example.org", stored=QuotaState(False, 500))
    pending = PendingWrites(ChangeLimit(count=2))
    for key in keys:
        pending.put(key, change(table, key, OVER))
    pending.put(free, change(table, free, QuotaState(False, 400)))  # no flip: never held
    assert flush(pending, directory, table) is None
    assert len(directory.writes) == 3 and pending.flips_since_sync == 2
    assert list(pending) == keys[2:] and pending.budget_spent
    assert caplog.text.count("reach policy.max_changes") == 1
    assert flush(pending, directory, table) is None  # still held; said once
    assert len(directory.writes) == 3 and caplog.text.count("reach policy.max_changes") == 1
    pending.sync_passed()
    assert pending.flips_since_sync == 0 and not pending.budget_spent
    assert flush(pending, directory, table) is None
    assert len(directory.writes) == 5 and not pending


def test_a_percentage_budget_counts_the_accounts_of_the_table(world):
    _, directory, table = world
    keys = [account(directory, table, f"u{n}@example.org")[0] for n in range(20)]
    pending = PendingWrites(ChangeLimit(percent=Fraction(10)))  # 10 % of 20 accounts
    for key in keys[:5]:
        pending.put(key, change(table, key, OVER))
    flush(pending, directory, table)
    assert len(directory.writes) == 2 and len(pending) == 3


# --------------------------------------------------------------------------- the store link


class Factory:
    def __init__(self, directory):
        self.directory = directory
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.directory.store()


def link_for(directory, clock):
    return ReconnectingStore(Factory(directory), clock, Backoff(initial=1.0, maximum=8.0, jitter=0.0))


def test_the_link_connects_once_and_counts_connections():
    clock = FakeClock()
    directory = FakeDirectory(clock)
    link = link_for(directory, clock)
    guards = []

    @contextlib.contextmanager
    def guard():
        guards.append("in")
        yield

    store = link.get(guard, pending=0)
    assert store is not None and link.up and link.connections == 1 and guards == ["in"]
    assert link.get(guard, pending=0) is store and link.factory.calls == 1 and guards == ["in"]


def test_the_link_backs_off_while_the_store_is_down_and_resets_when_it_is_back(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    directory = FakeDirectory(clock)
    link = link_for(directory, clock)
    directory.down = "connection refused"
    assert link.get(contextlib.nullcontext, pending=3) is None
    assert not link.up and link.down_since == clock() and link.retry_at == clock() + 1.0
    assert "LDAP unavailable: fake LDAP: connection refused; 3 change(s) pending" in caplog.text
    clock.advance(0.9)
    assert not link.may_try(clock())
    assert link.get(contextlib.nullcontext, pending=3) is None and link.factory.calls == 1  # no try before retry_at
    clock.advance(0.1)
    assert link.get(contextlib.nullcontext, pending=3) is None and link.factory.calls == 2
    assert link.retry_at == clock() + 2.0  # doubled
    clock.advance(2.0)
    directory.down = None
    assert link.get(contextlib.nullcontext, pending=3) is not None
    assert link.connections == 1 and link.down_since is None and link.backoff.failures == 0
    assert "reachable again" in caplog.text
    # A failure seen while using the store closes it; the backoff starts over.
    link.failed(DirectoryUnavailable("timed out"), pending=0)
    assert not link.up and link.retry_at == clock() + 1.0
    clock.advance(1.0)
    assert link.get(contextlib.nullcontext, pending=0) is not None and link.connections == 2


def test_a_new_configuration_connects_afresh_at_once():
    clock = FakeClock()
    directory = FakeDirectory(clock)
    link = link_for(directory, clock)
    store = link.get(contextlib.nullcontext, pending=0)
    other = FakeDirectory(clock)
    link.reset(Factory(other))
    assert store.closed and not link.up and link.may_try(clock())
    assert link.get(contextlib.nullcontext, pending=0).directory is other and link.connections == 2


def test_a_stop_while_connecting_is_not_taken_for_an_outage():
    clock = FakeClock()
    directory = FakeDirectory(clock)
    link = link_for(directory, clock)
    switch = StopSwitch()
    switch.request()
    with pytest.raises(Stopping):
        link.get(switch.abandonable, pending=0)
    assert link.factory.calls == 0 and link.down_since is None


def test_only_an_unreachable_store_is_taken_for_a_lost_connection():
    assert breaks_connection(DirectoryUnavailable("connection refused"))
    for answered in (SearchIncomplete("size limit"), PermissionDenied("insufficient access"), SchemaMissing("x")):
        assert not breaks_connection(answered)


# --------------------------------------------------------------------------- the refresh window


def test_the_first_refresh_asks_from_the_last_full_sync_less_a_margin():
    window = RefreshWindow()
    assert window.since(EPOCH) == EPOCH - MODIFY_MARGIN  # no full sync yet: from now
    window.full_sync_began(EPOCH - 100)
    assert window.since(EPOCH) == EPOCH - 100 - MODIFY_MARGIN
    window.server_offset = -40.0  # the server's clock is behind ours
    assert window.since(EPOCH) == EPOCH - 100 - 40 - MODIFY_MARGIN


def test_the_newest_second_is_asked_again_until_a_look_began_a_minute_after_it():
    window = RefreshWindow()
    window.server_offset = 500.0  # the server is ahead: its seconds close by its clock
    newest = EPOCH + 500 - 10
    window.observe(newest)
    window.observe(newest - 5)  # an older one does not move it back
    assert window.newest == newest
    window.last_look = EPOCH  # the look that read it began 10 s after that second
    assert window.since(EPOCH) == newest  # inclusive: more changes may land in that second
    # Later refreshes still ask from that second: changes may have landed in it after
    # the look began (asked past it, they would be missed until the next full sync).
    assert window.since(EPOCH + 3600) == newest
    window.last_look = EPOCH + 50  # a look that began exactly a minute after it
    assert window.since(EPOCH + 3600) == newest
    window.last_look = EPOCH + 50.5  # more than a minute after: the second was closed
    assert window.since(EPOCH + 3600) == newest + 1
    window.full_sync_began(EPOCH)
    assert window.newest is None and window.last_look == EPOCH


def test_learn_offset_takes_the_server_time_at_the_moment_asked(caplog):
    window = RefreshWindow()
    window.learn_offset(None, EPOCH)
    assert window.server_offset == 0.0
    with caplog.at_level(logging.INFO):
        window.learn_offset(EPOCH + 400, EPOCH)
    assert window.server_offset == 400.0 and "+400 s from ours" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        window.learn_offset(EPOCH + 401, EPOCH)  # a second's jitter is not news
    assert window.server_offset == 401.0 and caplog.text == ""


def test_a_refresh_reports_changed_and_departed_accounts_and_moves_the_window():
    clock = FakeClock(EPOCH)
    directory = FakeDirectory(clock)
    directory.add_account("old@example.org")
    clock.advance(MODIFY_MARGIN + 1)  # "old" was modified before the window
    window = RefreshWindow()
    window.full_sync_began(clock())
    directory.add_account("new@example.org")
    clock.advance(3)
    disabled = directory.add_account("gone@example.org")
    directory.set_account(disabled, False)
    newest = directory.entries[disabled.lower()].modified
    changed, departed, ticks = [], [], []
    store = directory.store().connect()

    def run(wall):
        refresh(store, window, ["mail"], wall, changed=lambda e: changed.append(e.first("mail")),
                departed=departed.append, tick=lambda: ticks.append(1))

    run(clock())
    assert changed == ["new@example.org"] and departed == [disabled] and len(ticks) == 2
    assert window.newest == directory.entries[account_dn("new@example.org").lower()].modified
    assert window.last_look == clock()
    # The newest second is still open: asked again (inclusive), so a change landing in it
    # later in the same second is not missed.
    changed.clear()
    departed.clear()
    run(clock())
    assert changed == ["new@example.org"] and departed == [disabled] and newest > window.newest
    # A minute on, that second is read once more (the last look began within its minute),
    # and then no more: that look began after the second was closed. (Departed DNs do not
    # move the window: one modified between the two searches may be newer than an account
    # changed meanwhile, which must not be skipped. The daemon ignores DNs it has forgotten.)
    clock.advance(SECOND_CLOSED + 1)
    changed.clear()
    run(clock())
    assert changed == ["new@example.org"]
    changed.clear()
    departed.clear()
    run(clock())
    assert changed == [] and departed == [disabled]


def test_a_refresh_that_fails_leaves_the_window_where_it_was():
    clock = FakeClock(EPOCH)
    directory = FakeDirectory(clock)
    directory.add_account("a@example.org")
    window = RefreshWindow()
    window.full_sync_began(clock() - 10)
    store = directory.store().connect()
    directory.down = "server stopped"
    with pytest.raises(DirectoryUnavailable):
        refresh(store, window, ["mail"], clock(), changed=lambda e: None, departed=lambda dn: None, tick=lambda: None)
    assert window.newest is None and window.last_look == clock() - 10


def test_the_account_listing_gives_dns_in_lower_case_and_its_pace_follows_its_cost():
    clock = FakeClock(EPOCH)
    directory = FakeDirectory(clock)
    dn = directory.add_account("Ann@example.org")
    directory.add(account_dn("x@example.org"), {"mail": ["x@example.org"]}, account=False)
    assert list_accounts(directory.store().connect(), tick=lambda: None) == {dn.lower()}
    pace = ListingPace(60.0)
    assert not pace.is_due(1e12)  # not before the first full sync
    pace.schedule(100.0)
    assert not pace.is_due(159.0) and pace.is_due(160.0)
    pace.took(0.5, 60.0, 200.0)
    assert pace.every == 250.0 and pace.due == 450.0
    pace.took(0.001, 60.0, 200.0)
    assert pace.every == 60.0


# --------------------------------------------------------------------------- stopping


def test_a_stop_outside_any_wait_only_sets_the_flag():
    switch = StopSwitch()
    switch.request()
    assert switch.requested
    with pytest.raises(Stopping):
        switch.check()


def test_a_stop_inside_an_abandonable_wait_leaves_it_at_once():
    switch = StopSwitch()
    reached = []
    with pytest.raises(Stopping), switch.abandonable():
        switch.request()  # the signal handler runs here
        reached.append("after")
    assert reached == [] and switch._interruptible == 0
    with pytest.raises(Stopping), switch.abandonable():  # no new wait starts once asked
        reached.append("entered")
    assert reached == []


def test_a_write_in_flight_is_finished_before_the_stop_takes_effect():
    switch = StopSwitch()
    done = []
    with pytest.raises(Stopping), switch.abandonable():
        with switch.shielded():
            switch.request()  # arrives during the write: no exception here
            done.append("write")
        done.append("not reached")
    assert done == ["write"] and switch._interruptible == 0


def test_a_shielded_write_outside_any_wait_leaves_the_stop_to_the_loop():
    switch = StopSwitch()
    with switch.shielded():
        switch.request()
    assert switch.requested  # the loop sees the flag and ends after this turn


def test_an_error_in_a_shielded_write_restores_the_wait_it_was_in():
    switch = StopSwitch()
    with switch.abandonable():
        with pytest.raises(EntryWriteError), switch.shielded():
            raise EntryWriteError("refused")
        assert switch._interruptible == 1
    assert switch._interruptible == 0


# --------------------------------------------------------------------------- the full sync's tee


class Hooks:
    def __init__(self, superseded=()):
        self.seen, self.written, self.ticks, self.shields = [], [], 0, 0
        self._superseded = {dn.lower() for dn in superseded}

    def make(self):
        @contextlib.contextmanager
        def shielded():
            self.shields += 1
            yield

        def tick():
            self.ticks += 1

        return SyncHooks(lambda e: self.seen.append(e.dn), lambda dn: dn.lower() in self._superseded,
                         lambda dn, new: self.written.append((dn, new)), tick, shielded)


def test_the_tee_notes_every_account_searched_and_is_complete_only_at_the_end():
    directory = FakeDirectory(FakeClock(EPOCH))
    dns = [directory.add_account(f"u{n}@example.org") for n in range(3)]
    hooks = Hooks()
    tee = SyncTee(directory.store(), hooks.make()).connect()
    assert tee.server == "ldap://fake"
    stream = tee.search_accounts(["mail"])
    first = next(stream)
    assert hooks.seen == [first.dn] and not tee.complete
    rest = list(stream)
    assert [first.dn] + [e.dn for e in rest] == sorted(dns) and hooks.seen == sorted(dns)
    assert tee.complete


def test_a_search_cut_short_leaves_the_tee_incomplete():
    directory = FakeDirectory(FakeClock(EPOCH))
    for n in range(3):
        directory.add_account(f"u{n}@example.org")
    directory.page_size = 1
    hooks = Hooks()
    tee = SyncTee(directory.store(), hooks.make()).connect()
    stream = tee.search_accounts(["mail"])
    next(stream)
    directory.down = "server stopped"
    with pytest.raises(DirectoryUnavailable):
        list(stream)
    assert not tee.complete and len(hooks.seen) == 1


def test_a_superseded_write_is_not_written():
    directory = FakeDirectory(FakeClock(EPOCH))
    mine = directory.add_account("mine@example.org")
    newer = directory.add_account("newer@example.org")
    hooks = Hooks(superseded=[newer])
    tee = SyncTee(directory.store(), hooks.make()).connect()
    with pytest.raises(WriteSuperseded):
        tee.write_state(newer, UNDER, OVER, False)
    assert directory.writes == [] and hooks.written == [] and hooks.ticks == 1
    tee.write_state(mine, UNDER, OVER, False)
    assert [w.dn for w in directory.writes] == [mine] and hooks.written == [(mine, OVER)]
    assert hooks.ticks == 2 and hooks.shields == 1
    assert not tee.sync_time_written
    tee.write_sync_time(STATUS_DN, EPOCH)
    assert directory.sync_times == [EPOCH] and hooks.shields == 2 and tee.sync_time_written


def test_the_tee_passes_reads_through_to_its_store():
    clock = FakeClock(EPOCH)
    directory = FakeDirectory(clock)
    dn = directory.add_account("a@example.org")
    tee = SyncTee(directory.store(), Hooks().make()).connect()
    assert [e.dn for e in tee.find_accounts("A@example.org", ["mail"])] == [dn]
    assert [e.dn for e, _ in tee.changed_accounts(["mail"], clock() - 1)] == [dn]
    assert list(tee.departed_accounts(clock() - 1)) == [STATUS_DN]  # not an account
    assert list(tee.account_dns()) == [dn]
    assert tee.read_entry(dn, ["mail"]).first("mail") == "a@example.org"
    assert tee.modified_at(dn) == float(int(clock()))
    assert tee.missing_schema() == []
    tee.close()
    assert tee.store.closed


def test_a_modification_time_past_the_servers_now_counts_as_now():
    clock = FakeClock(EPOCH)
    directory = FakeDirectory(clock)
    ahead = directory.add_account("ahead@example.org")
    directory.entries[ahead.lower()].modified = EPOCH + 3600
    window = RefreshWindow()
    window.server_offset = 20.0
    window.full_sync_began(EPOCH)
    refresh(directory.store().connect(), window, ["mail"], EPOCH + 0.5, changed=lambda e: None,
            departed=lambda dn: None, tick=lambda: None)
    assert window.newest == EPOCH + 20
    assert window.since(EPOCH + 60) == EPOCH + 20  # not an hour ahead
