"""The daemon's account table and the stat poller kept small (benchmarks/table_memory.py):
what they share or leave out must never change what they answer."""

import pytest

from ldapquota.entry import AccountEntry
from ldapquota.maildir_poll import StatPoller, signature
from ldapquota.quota import QuotaState
from ldapquota.service.table import AccountTable
from ldapquota.sources.base import ChangeFeed, FeedChanges


class RecordingFeed(ChangeFeed):
    def __init__(self):
        self.followed = []
        self.unfollowed = []

    def collect(self, now):
        return FeedChanges()

    def follow(self, key, now, measurement=None):
        self.followed.append(key)

    def unfollow(self, key):
        self.unfollowed.append(key)

    @property
    def description(self):
        return "recording"


def account(dn, mail="a@example.org", quota="1000"):
    return AccountEntry(dn, {"mail": [mail], "mailQuota": [quota]})


@pytest.fixture
def table():
    table = AccountTable(["mail", "isOverQuota", "quotaFreeBytes", "mailQuota"], clock=lambda: 0.0)
    table.feed = RecordingFeed()
    return table


@pytest.mark.parametrize("dn", [
    "uid=a,ou=people,dc=example,dc=org",  # all lower case: the key itself
    "uid=a,ou=People,dc=Example,dc=ORG",  # the parent shared
    "uid=A.Smith,ou=People,dc=example,dc=org",  # the first RDN in capitals: kept whole
    "uid=a\\,b,ou=People,dc=example,dc=org",  # an escaped comma in the first RDN
    "cn=a+uid=b,OU=x,o=y",
])
def test_the_dn_is_given_back_as_the_server_spelt_it(table, dn):
    key, record, _ = table.upsert(account(dn), "a@example.org", "/m/a")
    assert key == dn.lower() and record.dn == dn
    assert table.entry_for(record, QuotaState(False, None)).dn == dn
    # The server spells it another way now (modrdn): the record follows.
    _, again, _ = table.upsert(account(dn.upper()), "a@example.org", "/m/a")
    assert again is record and record.dn == dn.upper()


def test_repeated_values_are_one_object_and_the_address_is_the_mail_value(table):
    _, first, _ = table.upsert(account("uid=a,ou=P,dc=x", "a@x", "".join(["10", "00"])), "a@x", "/m/a")
    _, second, _ = table.upsert(account("uid=b,ou=P,dc=x", "b@x", "".join(["1", "000"])), "b@x", "/m/b")
    assert first.attrs[1] is second.attrs[1] == "1000"
    assert first._dn is second._dn == ",ou=P,dc=x"
    assert second.address is second.attrs[0] == "b@x"


def test_a_mailbox_shared_by_accounts_is_followed_until_the_last_one_goes(table):
    table.upsert(account("uid=a,dc=x"), "a@x", "/m/shared")
    table.upsert(account("uid=b,dc=x"), "b@x", "/m/shared")
    table.upsert(account("uid=c,dc=x"), "c@x", "/m/shared")
    assert sorted(table.keys_for("/m/shared")) == ["uid=a,dc=x", "uid=b,dc=x", "uid=c,dc=x"]
    table.forget("uid=b,dc=x")
    table.forget("uid=a,dc=x")
    assert list(table.keys_for("/m/shared")) == ["uid=c,dc=x"] and table.feed.unfollowed == []
    table.upsert(account("uid=c,dc=x"), "c@x", "/m/own")  # moved to a mailbox of its own
    assert table.feed.unfollowed == ["/m/shared"] and list(table.keys_for("/m/own")) == ["uid=c,dc=x"]
    assert list(table.keys_for("/m/shared")) == []


def test_a_path_removed_and_added_back_is_polled_once_per_lap(tmp_path):
    boxes = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "maildirsize").write_text("100S\n1 1\n")
        boxes.append(str(tmp_path / name))
    poller = StatPoller(interval=3.0, step=1.0)  # one path per step
    for box in boxes:
        poller.add(box, False, 0.0)
    poller.remove(boxes[0])
    poller.add(boxes[0], False, 0.0)
    poller.remove(boxes[1])
    assert len(poller) == 2
    for box in boxes:
        with open(f"{box}/maildirsize", "a") as handle:
            handle.write("1 1\n")
    seen = []
    for step in range(1, 7):
        seen += sorted(poller.poll(float(step)))
    assert seen == [boxes[0], boxes[2]]  # each once, b (removed) never


def test_the_polling_signature_sees_each_of_inode_size_and_mtime(tmp_path):
    box = tmp_path / "m"
    box.mkdir()
    size = box / "maildirsize"
    size.write_text("100S\n1 1\n")
    first = signature(str(box), False)
    assert isinstance(first, int)  # the compact form
    with open(size, "a") as handle:
        handle.write("2 1\n")
    second = signature(str(box), False)
    import os

    os.utime(size, ns=(1, 1))
    third = signature(str(box), False)
    (box / "new").write_text("100S\n1 1\n2 1\n")
    os.replace(box / "new", size)
    os.utime(size, ns=(1, 1))
    fourth = signature(str(box), False)  # same size and mtime, another inode
    assert len({first, second, third, fourth}) == 4


def test_the_account_listing_keeps_the_tables_own_keys_and_a_few_unknown_dns():
    from fakes import EPOCH, FakeClock, FakeDirectory

    from ldapquota.service.refresher import list_against

    directory = FakeDirectory(FakeClock(EPOCH))
    dns = [directory.add_account(f"User{n}@example.org") for n in range(5)]
    table = AccountTable(["mail"], clock=lambda: 0.0)
    for dn in dns[:3]:
        table.upsert(AccountEntry(dn, {"mail": ["x"]}), "x", None)
    count, known, unknown = list_against(directory.store().connect(), table, tick=lambda: None, keep=1)
    assert count == 5
    assert known == {dn.lower() for dn in dns[:3]}
    assert all(any(key is record.key for record in table.records.values()) for key in known)  # no copies
    assert len(unknown) == 1 and unknown[0] in {dn.lower() for dn in dns[3:]}


def test_many_polled_paths_are_polled_in_short_slices_a_few_in_long_ones(tmp_path):
    from ldapquota import maildir_poll

    poller = StatPoller(interval=3.0, step=1.0)
    boxes = []
    for n in range(6 * maildir_poll.SLICE_PATHS):
        box = tmp_path / f"m{n}"
        box.mkdir()
        boxes.append(str(box))
        poller.add(str(box), False, 0.0)
        if n == 2:
            assert poller.current_step() == 1.0  # a few: one slice a second
    step = poller.current_step()
    assert step == 3.0 * maildir_poll.SLICE_PATHS / len(poller) == 0.5
    for box in boxes:
        (tmp_path / box / "maildirsize").write_text("100S\n")
    seen, now = [], 0.0
    for _ in range(6):  # one interval: every path once, SLICE_PATHS at a time
        now += step
        changed = poller.poll(now)
        assert len(changed) == maildir_poll.SLICE_PATHS and poller.next_poll_at == now + step
        seen += changed
    assert sorted(seen) == sorted(boxes)
