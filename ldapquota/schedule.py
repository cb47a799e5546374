"""Timing helpers of the daemon (pure, no I/O): debouncing, retry backoff, spreading work.

Everything takes the current time as an argument, so the rules can be tested with a
made-up clock.
"""

import heapq
import random
from typing import Dict, Generic, Hashable, List, Optional, Tuple, TypeVar

K = TypeVar("K", bound=Hashable)


class Debouncer(Generic[K]):
    """Collects "this key changed" notices and says when to act on each key.

    :meth:`notice` acts on the first change of a quiet key (no change noticed for
    ``delay``) at once, and folds the changes that follow within ``delay`` into one more
    action at ``delay`` after the last one: a burst of deliveries costs two
    measurements, and the first one is not kept waiting. Quiet counts from the last
    change, not from the last action: the burst's closing action does not make the next
    change, ``delay`` after the burst, wait another ``delay``. :meth:`touch` makes a key due ``delay`` (or any) seconds after its
    first notice. Due times are never pushed back by later notices, so a mailbox under
    a steady stream of deliveries is still acted on once per ``delay``, not starved (and
    no key is acted on more than twice per ``delay``: once at a burst's start, once more
    at its end).
    """

    def __init__(self, delay: float):
        self.delay = delay
        self._acted: Dict[K, float] = {}  # key → when it was last due, oldest first
        self._noticed: Dict[K, float] = {}  # key → its last change, oldest first
        self._due: Dict[K, float] = {}
        self._heap: List[Tuple[float, int, K]] = []
        self._counter = 0  # tie-breaker: keys need not be comparable

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def touch(self, key: K, now: float, delay: Optional[float] = None) -> None:
        """Note a change of ``key``; act at ``now + delay`` unless already due sooner."""
        due = now + (self.delay if delay is None else delay)
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        self._counter += 1
        heapq.heappush(self._heap, (due, self._counter, key))

    def notice(self, key: K, now: float) -> None:
        """A change of ``key``: due now if it was quiet for ``delay``, else ``delay``
        after it was last due (the end of the burst)."""
        last_change = self._noticed.pop(key, None)
        self._noticed[key] = now  # to the end: the dict stays ordered by time
        if last_change is None or now - last_change >= self.delay:
            due = now
        else:
            acted = self._acted.get(key)
            due = max(now, acted + self.delay) if acted is not None else now + self.delay
        self.touch(key, now, delay=due - now)

    def next_due(self) -> Optional[float]:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: Optional[int] = None) -> List[K]:
        """Keys due at ``now``, earliest first (at most ``limit``); they are forgotten."""
        out: List[K] = []
        while self._heap and (limit is None or len(out) < limit):
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # superseded by an earlier due time
                continue
            if due > now:
                break
            heapq.heappop(self._heap)
            del self._due[key]
            out.append(key)
            self._acted.pop(key, None)
            self._acted[key] = now  # to the end: the dict stays ordered by time
        self._forget_quiet(now)
        return out

    def _forget_quiet(self, now: float) -> None:
        """Keys last due or changed ``delay`` ago are quiet again: memory stays with the
        busy ones."""
        for times in (self._acted, self._noticed):
            while times:
                key = next(iter(times))
                if now - times[key] < self.delay:
                    break
                del times[key]

    def discard(self, key: K) -> None:
        self._due.pop(key, None)  # its heap item becomes stale and is skipped
        self._acted.pop(key, None)
        self._noticed.pop(key, None)

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)


class Backoff:
    """Exponential retry delays with jitter: ``initial``, ×``factor`` each failure, at
    most ``maximum``; ``reset()`` after a success. Jitter (±``jitter`` of the delay)
    keeps many daemons from reconnecting to a restarted server in lockstep."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0, jitter: float = 0.1,
                 rng: Optional[random.Random] = None):
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next try, counting one more failure."""
        base = min(self.maximum, self.initial * (self.factor ** self.failures))
        self.failures += 1
        spread = base * self.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def reset(self) -> None:
        self.failures = 0


class Periodic:
    """A task due every ``interval`` seconds; ``due_at`` may be pulled in (``soon``)."""

    def __init__(self, interval: float, now: float, *, first: Optional[float] = None):
        self.interval = interval
        self.due_at = now + interval if first is None else first

    def is_due(self, now: float) -> bool:
        return now >= self.due_at

    def done(self, now: float) -> None:
        """Ran now: next time one interval later."""
        self.due_at = now + self.interval

    def retry(self, now: float, delay: float) -> None:
        self.due_at = now + delay

    def soon(self, now: float, delay: float = 0.0) -> None:
        """Run no later than ``now + delay``."""
        self.due_at = min(self.due_at, now + delay)

    def change_interval(self, interval: float, now: float) -> None:
        """A new interval (config reload): keep the phase, but never wait longer than it."""
        self.interval = interval
        self.due_at = min(self.due_at, now + interval)


def slice_size(total: int, interval: float, step: float) -> int:
    """How many of ``total`` items to handle per ``step`` so that all are handled once
    per ``interval`` (at least one while any are left)."""
    if total <= 0:
        return 0
    steps = max(1, int(interval / step))
    return max(1, -(-total // steps))
