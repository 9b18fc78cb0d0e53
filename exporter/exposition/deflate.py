"""Gzip kept in blocks, so that a publish compresses again only where the bytes changed.

A family's pieces (one per dataset: that dataset's lines of the family) are cut into blocks of BLOCK pieces,
by position, and each block is compressed alone into a raw deflate segment that ends byte-aligned (a sync
flush) without a final block, so that segments can follow one another in one gzip member. A block whose
pieces are the bytes of the last publish's is kept. A dataset added or removed moves the blocks after it:
they are compressed again once, which happens when discovery or a reload changes the targets.

The gzip trailer holds the CRC-32 of the whole body: zlib's crc32_combine computes it from the blocks' own.
Python's zlib module does not offer that function, so libz's is called through ctypes; where libz cannot be
loaded, the same result comes from zlib.crc32 over zero bytes, which costs time in proportion to the bytes
(enough to push the first cycle past its figure in one run of two: bench/README.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

LEVEL = 1  # zlib's fastest: about twice as fast as the default for a body a fifth larger
BLOCK = 16  # pieces per block: a changed dataset costs its block in each family it has lines in
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no time, unknown OS
FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed codes
_MASK = 0xFFFFFFFF
_ZEROS = memoryview(bytes(1 << 16))


def deflate(data: bytes) -> bytes:
    """`data` as a raw deflate segment that may follow any other in a stream, and be followed by any."""
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)


def crc32_zeros_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A+B from those of A and B (len2 = len(B)): A's register carried over len2 zero bytes,
    then B's CRC added in. Linear in len2: the fallback where libz's crc32_combine cannot be loaded."""
    register = ~crc1 & _MASK
    while len2 > 0:
        step = min(len2, len(_ZEROS))
        register = zlib.crc32(_ZEROS[:step], register)
        len2 -= step
    return (~register & _MASK) ^ crc2


def _libz_combine() -> Callable[[int, int, int], int] | None:
    """libz's own crc32_combine64, checked against zlib.crc32 before it is trusted."""
    try:
        combine = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1").crc32_combine64
    except (OSError, AttributeError):
        return None
    combine.restype, combine.argtypes = ctypes.c_ulong, [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int64]
    first, second = b"meta_dataset_quality", b"_event_match_quality_score 7.5\n" * 3
    if combine(zlib.crc32(first), zlib.crc32(second), len(second)) != zlib.crc32(first + second):
        return None
    return combine


crc32_combine: Callable[[int, int, int], int] = _libz_combine() or crc32_zeros_combine


class Block(NamedTuple):
    """Consecutive pieces of one family, their raw deflate segment, and the CRC-32 and length of their bytes.
    (A tuple of bytes and ints: Python's cyclic garbage collector stops looking at it.)"""

    pieces: tuple[bytes, ...]
    deflated: bytes
    crc: int
    size: int


class Segments(NamedTuple):
    """A family's bytes as raw deflate segments, with the CRC-32 and length of what they hold."""

    parts: tuple[bytes, ...]
    crc: int
    size: int


def compress_block(pieces: tuple[bytes, ...]) -> Block:
    joined = b"".join(pieces)
    return Block(pieces, deflate(joined), zlib.crc32(joined), len(joined))


def combined(segments: Sequence[Segments | Block]) -> tuple[int, int]:
    """The CRC-32 and length of the concatenation of what `segments` hold."""
    crc = size = 0
    for part in segments:
        crc, size = crc32_combine(crc, part.crc, part.size), size + part.size
    return crc, size


class BlockDeflater:
    """Compresses each family's pieces in blocks and keeps them until the next publish, which compresses again
    only the blocks whose pieces differ. One thread at a time."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[tuple[Block | None, ...], Segments]] = {}
        self._kept: dict[str, tuple[tuple[Block | None, ...], Segments]] = {}
        self.compressed = 0  # pieces compressed since the last `finish`, which returns it (tests read it)

    def family(self, name: str, pieces: Sequence[bytes]) -> Segments:
        """A family's pieces in blocks, each compressed or kept from the last publish."""
        before, known = self._families.get(name, ((), None))
        blocks: list[Block | None] = []
        for index, start in enumerate(range(0, len(pieces), BLOCK)):
            chunk = tuple(pieces[start : start + BLOCK])
            old = before[index] if index < len(before) else None
            if old is not None and old.pieces == chunk:  # the same objects, or the same bytes
                blocks.append(old)
            elif any(chunk):
                self.compressed += len(chunk)
                blocks.append(compress_block(chunk))
            else:
                blocks.append(None)  # no dataset has lines here
        kept = tuple(blocks)
        if known is not None and len(kept) == len(before) and all(map(_same, kept, before)):
            segments = known
        else:  # joined once here, not by every scrape: an answer is then a few dozen chunks
            present = [block for block in kept if block is not None]
            segments = Segments((b"".join([block.deflated for block in present]),), *combined(present))
        self._kept[name] = (kept, segments)
        return segments

    def finish(self) -> int:
        """End a publish: forget the families it did not have; how many pieces it compressed."""
        compressed, self.compressed = self.compressed, 0
        self._families, self._kept = self._kept, {}
        return compressed

    def forget(self) -> None:
        self._families, self._kept, self.compressed = {}, {}, 0


def _same(a: Block | None, b: Block | None) -> bool:
    return a is b
