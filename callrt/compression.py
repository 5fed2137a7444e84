"""Payload compression codecs (protocol version 3): which exist here, and bounded decompression.

A compressed payload is flagged in its frame's kind byte (the codec's id in the
high four bits; never sniffed from the bytes), and is the decompressed size as
a little-endian u32 followed by the codec's output. The receiver checks that
size against its limit *before* decompressing, and decompresses at most that
many bytes, so a compression bomb costs the receiver no more memory than an
honest payload of the limit's size, and fails that call only.

The standard library's zlib is always here; zstd (``zstandard``) and lz4
(``lz4``) are optional extras (``callrt[zstd]``, ``callrt[lz4]``). A server
lists the ones it has in its SETTINGS frame; a client compresses with its
chosen codec only when the server listed it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ("BY_ID", "CODECS", "Codec", "CompressionError", "codecs_named", "compress", "decompress")

_SIZE = struct.Struct("<I")
_PROBE: Final = 64 << 10
_MAX_U32: Final = (1 << 32) - 1


class CompressionError(ValueError):
    """A compressed payload that cannot be decompressed within the limit: corrupt, a bomb, an unknown codec."""


@dataclass(frozen=True, slots=True)
class Codec:
    """One compression codec: its wire id (1-15) and name, and its two functions on whole payloads."""

    id: int
    name: str
    pack: Callable[[bytes], bytes]
    unpack: Callable[[bytes, int], bytes]  # (data, exact decompressed size) -> payload


def _zlib_unpack(data: bytes, size: int) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, size + 1)  # one byte more than promised shows a lie
    if len(out) != size or inflater.unconsumed_tail or not inflater.eof:
        raise CompressionError(f"zlib payload does not decompress to the {size} bytes it declared")
    return out


def _codecs() -> dict[str, Codec]:
    found = {"zlib": Codec(1, "zlib", lambda data: zlib.compress(data, 1), _zlib_unpack)}
    try:
        import lz4.block  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        lz4_block: Any = lz4.block

        def lz4_unpack(data: bytes, size: int) -> bytes:
            out: bytes = lz4_block.decompress(data, uncompressed_size=size)
            if len(out) != size:
                raise CompressionError(f"lz4 payload does not decompress to the {size} bytes it declared")
            return out

        found["lz4"] = Codec(2, "lz4", lambda data: lz4_block.compress(data, store_size=False), lz4_unpack)
    try:
        import zstandard
    except ImportError:
        pass
    else:
        packer, unpacker = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()

        def zstd_unpack(data: bytes, size: int) -> bytes:
            out = unpacker.decompress(data, max_output_size=size)
            if len(out) != size:
                raise CompressionError(f"zstd payload does not decompress to the {size} bytes it declared")
            return out

        found["zstd"] = Codec(3, "zstd", packer.compress, zstd_unpack)
    return found


#: The codecs this process has, by name (zlib always; lz4 and zstd when installed).
CODECS: Final[dict[str, Codec]] = _codecs()
#: The same, by wire id.
BY_ID: Final[dict[int, Codec]] = {codec.id: codec for codec in CODECS.values()}


def codecs_named(names: Sequence[str] | None) -> list[Codec]:
    """The codecs called ``names`` (``None``: every one this process has), most preferred first.

    :raises ValueError: a name that is not a codec, or one whose package is not installed.
    """
    if names is None:
        return sorted(CODECS.values(), key=lambda c: -c.id)
    if isinstance(names, str):
        raise ValueError(f"compression codecs are a list of names, not the string {names!r}: use ({names!r},)")
    missing = [n for n in names if n not in CODECS]
    if missing:
        raise ValueError(
            f"compression codec {missing[0]!r} is not available here (have {', '.join(sorted(CODECS))});"
            " zstd and lz4 are extras: pip install 'callrt[zstd,lz4]'"
        )
    return [CODECS[n] for n in names]


def compress(codec: Codec, payload: bytes | bytearray | memoryview) -> bytes | None:
    """``payload`` compressed with ``codec`` and its size prefixed, or None when that does not make it smaller."""
    size = len(payload)
    if size > _MAX_U32:
        return None
    data = bytes(payload)
    if size >= 4 * _PROBE and len(codec.pack(data[:_PROBE])) >= _PROBE * 0.9:
        # A large payload whose first 64 KiB barely compress (random, or already compressed
        # bytes): sent as it is, without paying to compress all of it (zlib: ~19 ms per MiB).
        return None
    packed = codec.pack(data)
    if len(packed) + _SIZE.size >= size:
        return None  # incompressible (random bytes, already compressed): sent as it is
    return _SIZE.pack(size) + packed


def decompress(codec_id: int, data: bytes | bytearray, limit: int) -> bytes:
    """The payload that ``data`` (size prefix, then the codec's output) holds; at most ``limit`` bytes.

    :raises CompressionError: an unknown codec, a declared size over ``limit``, or data that does
        not decompress to exactly the declared size. Memory used is bounded by the declared size.
    """
    codec = BY_ID.get(codec_id)
    if codec is None:
        raise CompressionError(f"payload compressed with codec {codec_id}, which this side does not have")
    if len(data) < _SIZE.size:
        raise CompressionError("compressed payload shorter than its size prefix")
    (size,) = _SIZE.unpack_from(data)
    if size > limit:
        raise CompressionError(f"compressed payload declares {size} bytes, over the limit of {limit}")
    try:
        return codec.unpack(bytes(memoryview(data)[_SIZE.size :]), size)
    except CompressionError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError, lz4's LZ4BlockError (a RuntimeError)
        raise CompressionError(f"{codec.name} payload is corrupt: {exc}") from None
