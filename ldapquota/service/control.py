"""Stopping the daemon: SIGTERM ends the loop after the write in flight; while the loop
waits on the store for something it may abandon (connecting, searching, a sync), it
leaves at once."""

import contextlib
from typing import Iterator


class Stopping(Exception):
    """SIGTERM arrived while the loop was waiting on something it may abandon."""


class StopSwitch:
    def __init__(self) -> None:
        self.requested = False
        self._interruptible = 0

    def request(self) -> None:
        """From the signal handler: raises Stopping inside an abandonable wait."""
        self.requested = True
        if self._interruptible:
            raise Stopping()

    def check(self) -> None:
        if self.requested:
            raise Stopping()

    @contextlib.contextmanager
    def abandonable(self) -> Iterator[None]:
        """A wait on the store that a SIGTERM may cut short."""
        self.check()
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A write in flight: a SIGTERM waits for it (then takes effect)."""
        saved, self._interruptible = self._interruptible, 0
        try:
            yield
        finally:
            self._interruptible = saved
        if self.requested and saved:
            raise Stopping()
