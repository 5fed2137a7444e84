"""Write flattening and coalescing rules, shared by the server and both transport shells.

A frame whose payload is within the flatten limit is one buffer (header and
payload copied together); a larger payload stays a buffer of its own, never
copied. Frames ready together are written with one call: joined when every
buffer is small, else handed over as a list (one ``writev`` on uvloop), so a
large payload is not copied into the batch either.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ("frame_buffers", "joined")


def frame_buffers(header: bytes, payload: bytes, flatten_limit: int) -> tuple[bytes, ...]:
    """The buffers to write for a frame: one when its payload is within ``flatten_limit``, else two."""
    if len(payload) <= flatten_limit:
        return (header + payload,)
    return (header, payload)


def joined(buffers: Sequence[bytes], flatten_limit: int) -> bytes | None:
    """``buffers`` as one buffer when each is within ``flatten_limit``, else ``None``: write them as they are.

    The test is on each buffer's own length, so a payload above the limit, which
    travels as a buffer of its own, is never copied, even one a few bytes larger
    than the limit (a 64 KiB argument is 64 KiB and 5 bytes of MessagePack). A
    flattened frame whose payload is within a header's length of the limit is
    not joined either: the batch goes as a list, uncopied, which costs nothing.
    """
    if len(buffers) == 1:
        return buffers[0]
    if flatten_limit >= 0 and max(map(len, buffers)) <= flatten_limit:
        return b"".join(buffers)
    return None
