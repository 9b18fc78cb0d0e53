"""One gzip member built from pieces compressed once each, so a body that changes in a few places is
compressed again only there.

Each piece (one dataset's lines of one family) is a raw deflate segment that ends byte-aligned with a sync
flush and no final block, so segments can follow one another. A piece is compressed with the piece before it
as its preset dictionary: in the stream, that piece is exactly what precedes it, so a decoder resolves the
back-references from its own output, and neighbouring datasets' lines (the same names, the same labels)
compress nearly as well as one long stream. The dictionary is reset at every block of BLOCK pieces, so a
changed piece costs its own compression, its successor's, and the CRC of its block; a piece whose bytes and
predecessor's bytes are unchanged (a dataset fetched again with the same values) costs nothing.

The gzip trailer needs the CRC-32 of the whole: each block's CRC is kept, and the blocks' CRCs are combined
with zlib's crc32_combine (through ctypes; the same algorithm in Python where libz cannot be loaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass

LEVEL = 1  # measured at 2,000 datasets: level 6 costs 15 % more publish time for 7 % fewer bytes
BLOCK = 16  # pieces per block: a changed piece costs the CRC of its block and one combine per block
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no time, unknown OS
FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed codes
WINDOW = 32768


def deflate(data: bytes, preceding: bytes = b"") -> bytes:
    """`data` as a raw deflate segment that may follow `preceding` (or anything, when empty) in a stream."""
    if preceding:
        packer = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=preceding[-WINDOW:])
    else:
        packer = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)


# ----- CRC-32 of a concatenation ----------------------------------------------------------------------------------
def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine_python(crc1: int, crc2: int, len2: int) -> int:
    """zlib's crc32_combine (crc32.c, the GF(2) matrix method): the CRC-32 of A+B from those of A and B."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


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


crc32_combine: Callable[[int, int, int], int] = _libz_combine() or crc32_combine_python


# ----- blocks ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Block:
    """Up to BLOCK consecutive pieces of one family: their deflate segments joined, CRC-32 and length."""

    pieces: tuple[bytes, ...]
    deflated: bytes
    crc: int
    size: int


class BlockDeflater:
    """Compresses blocks of pieces, reusing each piece's segment while the piece and its predecessor hold the
    same bytes (a dataset fetched again with the same values is not compressed again). One thread at a time."""

    def __init__(self) -> None:
        self._segments: dict[bytes, tuple[bytes | None, bytes]] = {}  # piece -> (its predecessor, segment)
        self._blocks: dict[int, Block] = {}  # id of the block's first piece -> block
        self._next_blocks: dict[int, Block] = {}
        self.compressed = 0  # pieces compressed since the last `finish` (benchmarks and tests read it)

    def blocks(self, pieces: list[bytes]) -> list[Block]:
        """`pieces` in blocks of BLOCK, each compressed or, when its pieces are the same, as it was."""
        found = []
        for start in range(0, len(pieces), BLOCK):
            block = tuple(pieces[start : start + BLOCK])
            key = id(block[0])  # the comparison below compares the pieces themselves, by identity first
            known = self._blocks.get(key) or self._next_blocks.get(key)
            if known is None or known.pieces != block:
                known = self._compress(block)
            self._next_blocks[key] = known
            found.append(known)
        return found

    def _compress(self, pieces: tuple[bytes, ...]) -> Block:
        segments: list[bytes] = []
        previous: bytes | None = None
        crc = size = 0
        for piece in pieces:
            entry = self._segments.get(piece)
            if entry is None or entry[0] != previous:
                entry = self._segments[piece] = (previous, deflate(piece, previous or b""))
                self.compressed += 1
            segments.append(entry[1])
            crc = zlib.crc32(piece, crc)
            size += len(piece)
            previous = piece
        return Block(pieces, b"".join(segments), crc, size)

    def finish(self) -> int:
        """End a body: forget blocks and segments it did not use; how many pieces it compressed."""
        compressed, self.compressed = self.compressed, 0
        self._blocks, self._next_blocks = self._next_blocks, {}
        live = sum(len(block.pieces) for block in self._blocks.values())
        # Segments of replaced pieces keep those pieces alive: pruned once they are a quarter of the live ones,
        # so memory stays within 1.25 times, and the pruning's cost is spread over a quarter of a fleet's changes.
        if len(self._segments) > live + live // 4 + 1024:
            used = {piece for block in self._blocks.values() for piece in block.pieces}
            self._segments = {piece: entry for piece, entry in self._segments.items() if piece in used}
        return compressed
