"""What the server logs, and how a flood of the same failure is kept from flooding the log.

callrt logs through the standard :mod:`logging` module under ``callrt.*`` loggers and
prints nothing unless the application configures logging (``callrt`` has a
``NullHandler``). On the server (``callrt.server``):

- ERROR: a handler raised an unexpected exception (anything but a :class:`RemoteError`
  it raised on purpose), or its result could not be encoded (:class:`Internal`): the
  method, the caller's address and the traceback;
- WARNING: a peer broke the protocol and its connection was closed: the peer's address
  and what was wrong, as escaped text of bounded length (never the peer's bytes raw);
- INFO: serving, draining; DEBUG: connections accepted and closed.

ERROR and WARNING records are rate-limited per kind (per method for handler failures):
at most :data:`BURST` a second; the next record that gets through says how many were
held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..component import is_declared_error
from ..errors import Internal, RemoteError

__all__ = ("BURST", "LogLimiter", "handler_failed", "loggable", "logger", "protocol_error")

logger = logging.getLogger("callrt.server")

#: Records of one kind per second, at most; the rest are counted, not written.
BURST = 10

_TEXT_LIMIT = 300  # characters of a peer's (or an exception's) text in one record


def loggable(text: str, limit: int = _TEXT_LIMIT) -> str:
    """``text`` safe to write to a log: ASCII, control characters escaped, at most ``limit`` characters.

    For text that may carry a peer's bytes: a terminal escape or a forged line cannot reach the log.
    """
    escaped = ascii(text)[1:-1]
    if len(escaped) > limit:
        return f"{escaped[:limit]}... [{len(escaped) - limit} more]"
    return escaped


class LogLimiter:
    """At most ``burst`` records per ``period`` seconds per key; counts what it holds back."""

    def __init__(self, burst: int = BURST, period: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.period, self.clock = burst, period, clock
        self._windows: dict[str, list[float]] = {}  # key -> [window start, records in it, held back]

    def allow(self, key: str) -> int | None:
        """``None``: hold this record back. Else it may be written, and this many were held back before it."""
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            held = 0 if window is None else int(window[2])
            self._windows[key] = [now, 1, 0]
            return held
        if window[1] < self.burst:
            window[1] += 1
            held, window[2] = int(window[2]), 0
            return held
        window[2] += 1
        return None


def _held(count: int) -> str:
    return f" ({count} more like it in the last second not logged)" if count else ""


def handler_failed(limiter: LogLimiter, method: str, exc: BaseException, peer: str) -> None:
    """Log a handler's failure at ERROR with its traceback, unless it is an error it raised on purpose."""
    if isinstance(exc, RemoteError) and not isinstance(exc, Internal):
        return  # chosen by the handler (or callrt's own refusal): the caller is told, nothing to fix here
    if is_declared_error(exc):
        return  # declared by its component (@component(errors=...)): part of the method's contract
    if not logger.isEnabledFor(logging.ERROR):
        return
    held = limiter.allow(method)
    if held is None:
        return
    logger.error(
        "%s failed for %s: %s%s",
        method,
        peer,
        loggable(f"{type(exc).__qualname__}: {exc}"),
        _held(held),
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def protocol_error(limiter: LogLimiter, peer: str, exc: BaseException) -> None:
    """Log at WARNING that ``peer`` broke the protocol and its connection is closed (its text escaped)."""
    if not logger.isEnabledFor(logging.WARNING):
        return
    held = limiter.allow("protocol")
    if held is None:
        return
    logger.warning("%s broke the protocol, connection closed: %s%s", peer, loggable(str(exc)), _held(held))
