"""Write flattening and coalescing rules, shared by the server and both transport shells.

A frame whose payload is within the flatten limit is one buffer (header and
payload copied together); a larger payload stays a buffer of its own, never
copied. Frames ready together are written with one call: joined when every
buffer is small, else handed over as a list (one ``writev`` on uvloop), so a
large payload is not copied into the batch either.
"""

from __future__ import annotations

from collections.abc import Sequence

from .protocol import HEADER_SIZE

__all__ = ("frame_buffers", "joined")


def frame_buffers(header: bytes, payload: bytes, flatten_limit: int) -> tuple[bytes, ...]:
    """The buffers to write for a frame: one when its payload is within ``flatten_limit``, else two."""
    if len(payload) <= flatten_limit:
        return (header + payload,)
    return (header, payload)


def joined(buffers: Sequence[bytes], flatten_limit: int) -> bytes | None:
    """``buffers`` as one buffer when they are all small enough to copy, else ``None``: write them as they are."""
    if len(buffers) == 1:
        return buffers[0]
    if flatten_limit >= 0 and max(map(len, buffers)) <= flatten_limit + HEADER_SIZE:
        return b"".join(buffers)
    return None
