"""``mailboxes.source: dovecot``: Dovecot's own quota, for any mailbox format and backend.

An account's mailbox is its Dovecot user (``dovecot.user``, a template like
``mailboxes.path``). Usage and Dovecot's limit come from ``doveadm quota get``, run locally
(``dovecot.doveadm``) or through the doveadm HTTP API (``dovecot.http_url``), always for a
batch of users at once: one doveadm process (user names on its stdin, ``-F -``) or one
HTTP request per batch, never one per account (docs/contract.md §10). What doveadm prints
is read in :mod:`.doveadm_report`.

Faults: no doveadm, or doveadm failing for everyone, or an API that does not answer →
SourceUnavailable (69, before anything is written); a refused API key → SourceRefused
(77); a user Dovecot does not know or cannot open, or output that is not doveadm's
report → an error for that account, which keeps its flag; a hung doveadm or API is
abandoned after ``dovecot.timeout``. User names travel on stdin or inside JSON, never
through a shell or a URL.

The daemon has no notifications from Dovecot of its own: Dovecot's hooks run
``ldapquota --sync ADDRESS`` (examples/dovecot/), the daemon's account refresh sees what
they wrote, and every user is also polled, slowly and in batches (:class:`DovecotPolling`).
"""

import base64
import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from typing import Dict, List, Optional, Sequence

from ldapquota.entry import AccountEntry
from ldapquota.errors import AccountError, MeasureError, SourceRefused, SourceUnavailable
from ldapquota.settings import Config, DaemonConfig, DovecotConfig
from ldapquota.sources.base import BatchedSource, ChangeFeed, MailboxRequest, Measurement, PollingFeed, Result, SaysOver
from ldapquota.sources.doveadm_report import Outcome, choose_root, excerpt, http_outcomes, local_outcomes

#: Users per doveadm run. Each costs doveadm a userdb lookup and an index read (about a
#: millisecond with the count backend); a run costs a process start (about 20 ms).
LOCAL_BATCH = 500
#: Users per HTTP request (two commands each: the quota and an INBOX status).
HTTP_BATCH = 100
#: Biggest answer read from the API (a 100-user answer is about 30 KB).
MAX_ANSWER = 64 * 1024 * 1024
#: How long an answer asked for ahead (:meth:`Source.prefetch`) may stand in for a measurement.
PREFETCH_FRESH = 5.0
#: The daemon polls at most this many users per second: the hooks bring the news, polling
#: is the net for what they miss (see :class:`DovecotPolling`).
POLL_RATE = 20.0


class Source(BatchedSource):
    own_limit = "Dovecot's own quota limit"

    def __init__(self, config: Config):
        super().__init__(config)
        self.settings = config.dovecot
        self.client: DoveadmClient = HttpDoveadm(config.dovecot) if config.dovecot.http_url else LocalDoveadm(config.dovecot)
        self._prefetched: Dict[str, Outcome] = {}
        self._prefetched_at = 0.0

    @property
    def attributes(self) -> Sequence[str]:
        return self.settings.user.attributes

    def locate(self, entry: AccountEntry, address: Optional[str]) -> str:
        try:
            user = self.settings.user.fill(address, entry.attributes)
        except ValueError as exc:
            raise AccountError(f"Dovecot user name (dovecot.user {self.settings.user.text!r}): {exc}") from None
        if not user or not user.isprintable() or user != user.strip():
            # One name a line on doveadm's stdin: a newline would make it two users.
            raise AccountError(f"Dovecot user name {user!r} is empty or holds control characters or edge spaces")
        return user

    def check_ready(self) -> None:
        self.client.check()

    def describe_ready(self) -> str:
        return self.client.describe()

    def measure_many(self, requests: Sequence[MailboxRequest], says_over: SaysOver, now: float) -> List[Result]:
        users = list(dict.fromkeys(request.mailbox for request in requests))  # each once, in order
        outcomes = self._take_prefetched(users)
        outcomes.update(self._ask([user for user in users if user not in outcomes]))
        return [self._result(request, outcomes[request.mailbox], says_over) for request in requests]

    def prefetch(self, keys: Sequence[str]) -> None:
        """The daemon measures its due accounts one by one: ask Dovecot about all of them
        in one batch now, and let each measurement take its answer."""
        self._prefetched = self._ask(list(dict.fromkeys(keys)))
        self._prefetched_at = time.monotonic()

    def _take_prefetched(self, users: Sequence[str]) -> Dict[str, Outcome]:
        if time.monotonic() - self._prefetched_at > PREFETCH_FRESH:
            self._prefetched = {}  # an answer only stands in for one asked just now
        return {user: self._prefetched.pop(user) for user in users if user in self._prefetched}

    def _ask(self, users: Sequence[str]) -> Dict[str, Outcome]:
        outcomes: Dict[str, Outcome] = {}
        size = self.client.batch
        for start in range(0, len(users), size):
            outcomes.update(self.client.ask(users[start : start + size]))
        return outcomes

    def _result(self, request: MailboxRequest, outcome: Outcome, says_over: SaysOver) -> Result:
        if isinstance(outcome, str):
            return MeasureError(f"Dovecot user {request.mailbox}: {outcome}")
        try:
            root, limit = choose_root(outcome, request.limit, self.settings.quota_root, says_over)
        except ValueError as exc:
            return MeasureError(f"Dovecot user {request.mailbox}: {exc}")
        return Measurement(root.usage, limit, f"Dovecot quota root {root.name!r}, {self.client.how}", request.mailbox)

    def feed(self, daemon: DaemonConfig) -> ChangeFeed:
        return DovecotPolling(daemon.poll_interval, step=min(daemon.poll_interval, LOCAL_BATCH / POLL_RATE))


class DovecotPolling(PollingFeed):
    """Every user polled, but never more than :data:`POLL_RATE` a second: a round over
    10,000 users takes about eight minutes instead of ``daemon.poll_interval``. The news
    comes from Dovecot's hooks (``--sync ADDRESS``, seen by the account refresh), over-quota
    users are re-measured every ``daemon.over_recheck`` and everyone at each full sync;
    polling only catches what all of those missed (a hook that failed, a change made
    behind Dovecot's back). The loop measures each slice in one doveadm batch, and the
    slices come ``step`` apart (25 s: up to 500 users a slice), since every doveadm run
    also costs a process and a userdb iteration (docs/maildir-and-mta-facts.md §8)."""

    def __init__(self, interval: float, step: float = 1.0):
        super().__init__(interval, step)
        self.base_interval = interval

    def follow(self, key: str, now: float, measurement: Optional[Measurement] = None) -> None:
        super().follow(key, now, measurement)
        self._pace()

    def unfollow(self, key: str) -> None:
        super().unfollow(key)
        self._pace()

    def _pace(self) -> None:
        self.interval = max(self.base_interval, len(self._keys) / POLL_RATE)

    @property
    def description(self) -> str:
        return f"Dovecot's hooks (ldapquota --sync ADDRESS), and polling at most {POLL_RATE:g} users a second"


# --------------------------------------------------------------------------- asking Dovecot


class DoveadmClient:
    batch = LOCAL_BATCH
    how = "doveadm"

    def __init__(self, settings: DovecotConfig):
        self.timeout = settings.timeout

    def check(self) -> None:
        """Raise SourceUnavailable when Dovecot cannot be asked at all."""

    def describe(self) -> str:
        return "doveadm answers"

    def ask(self, users: Sequence[str]) -> Dict[str, Outcome]:
        """An outcome for each of ``users`` (at most :attr:`batch`)."""
        raise NotImplementedError


class LocalDoveadm(DoveadmClient):
    """``doveadm -f json quota get -F -`` with the users on stdin.

    doveadm checks the over flag too, and runs ``quota_over_script`` when it is wrong: a
    hook that calls us would start itself again. examples/dovecot/90-ldapquota.conf
    therefore sets that script for mail protocols only. (Emptying it with ``-o
    plugin/quota_over_script=`` is no way out: Dovecot 2.3.19's doveadm then crashes
    for an over-quota user without the flag; docs/maildir-and-mta-facts.md §8.)"""

    def __init__(self, settings: DovecotConfig):
        super().__init__(settings)
        self.command = settings.doveadm
        self.how = f"{self.command[0]} quota get"

    def check(self) -> None:
        if shutil.which(self.command[0]) is None:
            raise SourceUnavailable(f"dovecot.doveadm: {self.command[0]} is not an executable command (is dovecot-core installed?)")

    def describe(self) -> str:
        return f"{shutil.which(self.command[0]) or self.command[0]} can be run"

    def ask(self, users: Sequence[str]) -> Dict[str, Outcome]:
        # An absolute argv[0]: doveadm finds itself through PATH otherwise, and Dovecot's
        # script service (the hook) runs us without any PATH.
        program = shutil.which(self.command[0]) or self.command[0]
        argv = [program, *self.command[1:], "-f", "json", "quota", "get", "-F", "-"]
        try:
            done = subprocess.run(argv, input="".join(user + "\n" for user in users).encode(), capture_output=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise SourceUnavailable(f"{self.command[0]} quota get did not finish within {self.timeout:g}s "
                                    f"(dovecot.timeout) for {len(users)} users; is Dovecot hung?") from None
        except OSError as exc:
            raise SourceUnavailable(f"cannot run {self.command[0]} (dovecot.doveadm): {exc.strerror}") from None
        stdout = done.stdout.decode("utf-8", "replace")
        return local_outcomes(stdout, done.stderr.decode("utf-8", "replace"), done.returncode, users)


class HttpDoveadm(DoveadmClient):
    """The doveadm HTTP API: one POST per batch, ``Authorization: X-Dovecot-API <base64 key>``.

    http.client rather than urllib: urllib always sends ``Connection: close``, and
    Dovecot 2.3 never answers a refused key on such a request (facts §8)."""

    batch = HTTP_BATCH
    how = "doveadm HTTP API"

    def __init__(self, settings: DovecotConfig):
        super().__init__(settings)
        assert settings.http_url is not None and settings.http_key is not None  # config.py sees to it
        self.url = urllib.parse.urlsplit(settings.http_url)
        self.path = self.url.path or "/doveadm/v1"
        self.authorization = "X-Dovecot-API " + base64.b64encode(settings.http_key.encode()).decode("ascii")

    def describe(self) -> str:
        return f"the doveadm HTTP API at {urllib.parse.urlunsplit(self.url)} answers"

    def ask(self, users: Sequence[str]) -> Dict[str, Outcome]:
        commands: List[List[object]] = []
        quota_tags: Dict[str, str] = {}
        probe_tags: Dict[str, str] = {}
        refused: Dict[str, Outcome] = {}
        for number, user in enumerate(users):
            if "*" in user or "?" in user:
                # The API reads them as wildcards and would list (other) users.
                refused[user] = "the doveadm HTTP API takes * and ? in a user name as wildcards; use the local doveadm"
                continue
            quota_tags[f"q{number}"] = user
            probe_tags[f"s{number}"] = user
            commands.append(["quotaGet", {"user": user}, f"q{number}"])
            commands.append(["mailboxStatus", {"user": user, "field": ["messages"], "mailboxMask": ["INBOX"]}, f"s{number}"])
        if not commands:
            return refused
        body = self._post(json.dumps(commands).encode())
        return {**http_outcomes(body, quota_tags, probe_tags), **refused}

    def check(self) -> None:
        """One cheap request (the list of commands): a wrong key or a dead API shows here,
        before anything is measured."""
        self._request("GET", None)

    def _post(self, payload: bytes) -> str:
        return self._request("POST", payload)

    def _request(self, method: str, payload: Optional[bytes]) -> str:
        deadline = time.monotonic() + self.timeout
        kind = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        connection = kind(self.url.hostname or "", self.url.port, timeout=self.timeout)
        where = urllib.parse.urlunsplit(self.url)
        headers = {"Authorization": self.authorization, "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self.path, body=payload, headers=headers)
            response = connection.getresponse()
            body = _read_until(response, connection, deadline)
        except (OSError, http.client.HTTPException) as exc:
            raise SourceUnavailable(f"the doveadm HTTP API at {where} (dovecot.http_url): {exc or type(exc).__name__}") from None
        finally:
            connection.close()
        if response.status in (401, 403):
            raise SourceRefused(f"the doveadm HTTP API at {where} refused the key in dovecot.http_key_file "
                                f"(HTTP {response.status}); it must equal Dovecot's doveadm_api_key")
        if response.status != 200:
            raise SourceUnavailable(f"the doveadm HTTP API at {where} answered HTTP {response.status}: {excerpt(body)}")
        return body


def _read_until(response: http.client.HTTPResponse, connection: http.client.HTTPConnection, deadline: float) -> str:
    """The response body, within the deadline however slowly it trickles in."""
    chunks: List[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer within dovecot.timeout")
        if connection.sock is not None:
            connection.sock.settimeout(left)
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks).decode("utf-8", "replace")
        size += len(chunk)
        if size > MAX_ANSWER:
            raise http.client.HTTPException(f"answer larger than {MAX_ANSWER} bytes")
        chunks.append(chunk)

