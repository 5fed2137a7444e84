"""Credit-based flow control of one stream direction, for both sides (protocol version 3).

The receiver of a stream's items grants *credit*: a number of items and a
number of bytes the sender may send. The sender spends credit as it sends and
waits when it has none; the receiver grants more as its consumer takes items,
in steps of half its window, so a slow consumer never makes the other side
buffer more than the window and a fast producer is paused, never dropped.
A sender may send while it has an item and a byte of credit left, so an item
larger than the window still goes, alone: what a receiver holds is bounded by
its window plus one item.

:class:`Inbox` is the receiving half (the items held for the consumer, and the
credit to grant back); :class:`SendCredit` the sending half. Neither does I/O:
the connection that owns them writes the frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio

from ..errors import RemoteProtocolError

__all__ = ("Inbox", "SendCredit")


class Inbox:
    """Items received for a consumer that has not taken them yet, within the window granted.

    ``grant(items, size)`` writes a CREDIT frame; :meth:`open` grants the whole window, and
    :meth:`take` grants again what the consumer took, once that reaches half the window.
    """

    __slots__ = (
        "_error",
        "_event",
        "_grant",
        "_items",
        "_taken",
        "_taken_bytes",
        "ended",
        "left",
        "left_bytes",
        "window",
        "window_bytes",
    )

    def __init__(self, window: int, window_bytes: int, grant: Callable[[int, int], None]) -> None:
        self._items: deque[bytes] = deque()
        self._grant = grant
        self.window, self.window_bytes = max(1, window), max(1, window_bytes)
        self.left = 0  # items the sender may still send
        self.left_bytes = 0
        self._taken = 0  # items taken since credit was last granted
        self._taken_bytes = 0
        self.ended = False  # the sender sent its last item
        self._error: BaseException | None = None
        self._event: anyio.Event | None = None  # set when an item, the end or an error comes

    @property
    def held(self) -> int:
        """Items received and not yet taken."""
        return len(self._items)

    def open(self) -> None:
        """Let the sender send a window's worth."""
        self.left, self.left_bytes = self.window, self.window_bytes
        self._grant(self.window, self.window_bytes)

    def received(self, item: bytes) -> None:
        """An ITEM frame arrived; beyond the credit granted it is a protocol error."""
        if self.ended:
            raise RemoteProtocolError("stream item after the stream's end")
        if self.left <= 0 or self.left_bytes <= 0:
            raise RemoteProtocolError("stream item beyond the credit granted")
        self.left -= 1
        self.left_bytes -= len(item)
        self._items.append(item)
        self._wake()

    def end(self) -> None:
        """The sender sent its last item."""
        self.ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The stream failed: the consumer gets ``error`` after the items already here."""
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def take(self) -> bytes | None:
        """The next item, waiting for it; ``None`` after the last one. Raises the stream's error."""
        while not self._items:
            if self._error is not None:
                raise self._error
            if self.ended:
                return None
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        return self._took(self._items.popleft())

    def take_nowait(self) -> bytes | None:
        """The next item if one is here already; ``None``: await :meth:`take` (it waits, ends or raises)."""
        return self._took(self._items.popleft()) if self._items else None

    def _took(self, item: bytes) -> bytes:
        self._taken += 1
        self._taken_bytes += len(item)
        if self._taken * 2 >= self.window or self._taken_bytes * 2 >= self.window_bytes:
            items, size = self._taken, self._taken_bytes
            self._taken = self._taken_bytes = 0
            self.left += items
            self.left_bytes += size
            if not self.ended and self._error is None:
                self._grant(items, size)
        return item


class SendCredit:
    """What a sender may still send of one stream, as the receiver granted it."""

    __slots__ = ("_error", "_event", "left", "left_bytes")

    def __init__(self) -> None:
        self.left = 0
        self.left_bytes = 0
        self._error: BaseException | None = None
        self._event: anyio.Event | None = None

    def granted(self, items: int, size: int) -> None:
        """A CREDIT frame arrived."""
        self.left += items
        self.left_bytes += size
        if self._event is not None and self.left > 0 and self.left_bytes > 0:
            self._event.set()
            self._event = None

    def fail(self, error: BaseException) -> None:
        """No more sending: a waiting sender gets ``error``."""
        self._error = error
        if self._event is not None:
            self._event.set()
            self._event = None

    def try_spend(self, size: int) -> bool:
        """Take one item of ``size`` bytes from the credit if there is some, without waiting."""
        if self.left > 0 and self.left_bytes > 0 and self._error is None:
            self.left -= 1
            self.left_bytes -= size
            return True
        return False

    async def spend(self, size: int) -> None:
        """Take one item of ``size`` bytes from the credit, waiting until there is some."""
        while self.left <= 0 or self.left_bytes <= 0:
            if self._error is not None:
                raise self._error
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self._error is not None:
            raise self._error
        self.left -= 1
        self.left_bytes -= size
