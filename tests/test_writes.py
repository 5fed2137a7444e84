"""Write flattening rules: which frames are copied into one buffer, and which batches are joined."""

from __future__ import annotations

import pytest

from callrt._writes import frame_buffers, joined

LIMIT = 4096


def test_a_payload_within_the_limit_is_one_buffer_with_its_header() -> None:
    assert frame_buffers(b"h" * 13, b"p" * LIMIT, LIMIT) == (b"h" * 13 + b"p" * LIMIT,)


def test_a_payload_above_the_limit_stays_its_own_buffer() -> None:
    payload = b"p" * (LIMIT + 1)
    header, body = frame_buffers(b"h" * 13, payload, LIMIT)
    assert body is payload


def test_small_frames_ready_together_are_joined() -> None:
    frames = [b"a" * 40, b"b" * 100, b"c" * LIMIT]
    assert joined(frames, LIMIT) == b"".join(frames)


@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT + 5, LIMIT + 13, 10 * LIMIT])
def test_a_batch_with_a_payload_above_the_limit_is_never_copied(size: int) -> None:
    """Also a payload only a header's length above the limit (a 4 KiB argument encodes to 4 KiB + 3 bytes)."""
    assert joined([b"h" * 13, b"p" * size, b"small frame"], LIMIT) is None


def test_flattening_off_joins_nothing_and_one_buffer_is_written_as_it_is() -> None:
    assert joined([b"a", b"b"], -1) is None
    only = b"x" * (10 * LIMIT)
    assert joined([only], LIMIT) is only
