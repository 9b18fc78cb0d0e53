"""One gzip member built from blocks compressed once each, so a body that changes in a few places is
compressed again only there.

A family's pieces (one per dataset: its lines of that family) are grouped in blocks of about BLOCK pieces,
and each block is compressed alone into a raw deflate segment that ends byte-aligned with a sync flush and no
final block, so segments can follow one another in one stream. A block is kept while its pieces hold the
same bytes: a dataset fetched again with the same values costs nothing, a changed one costs its block.
Where blocks end is a property of the datasets (a mark from a CRC of the dataset's key), not of positions, so
a dataset added or removed moves only its own block, and blocks end after the same datasets in every family.
Blocks of about eight pieces balance a publish's two costs: compressing the blocks that changed (larger
blocks cost more per changed dataset) and going over every block of the fleet (smaller ones are more). The
families with several kilobytes per dataset (match keys) use blocks of about four, which split the others.

The gzip trailer needs the CRC-32 of the whole: each block's CRC is kept, and the blocks' CRCs are combined
with zlib's crc32_combine (through ctypes; the same algorithm in Python where libz cannot be loaded).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import operator
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat

LEVEL = 1  # measured at 2,000 datasets in blocks of 16: level 6 compresses 2.3 times slower for 13 % fewer bytes
BLOCK = 8  # pieces per block on average (a power of two): a changed piece costs its block's compression
MAX_BLOCK = 4 * BLOCK
# Families whose lines run per event and key hold several kilobytes per dataset: eight datasets make blocks of
# 20 to 40 KB, which compress hardly better than blocks of four (a 7 % larger body for match key coverage) and
# cost twice as much to compress again when one of their datasets changes.
FINE_BLOCK = BLOCK // 2
# Blocks whose CRC-32 is combined and kept as one: a changed block costs its group's combination and one per
# group, not one per block of the family (at 10,000 datasets, 1,250 calls into libz for each changed family).
# At 10,000 datasets, the combinations of a publish took 1.3 / 14.9 ms (one changed dataset / 100 scattered)
# in groups of 32, 2.4 / 9.9 ms in groups of 8, and 4.0 / 9.1 ms in groups of 4.
CRC_GROUP = 8
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no time, unknown OS
FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed codes


def deflate(data: bytes) -> bytes:
    """`data` as a raw deflate segment that may follow any other in a stream, and be followed by any."""
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
def block_mark(key: bytes | str) -> int:
    """Where blocks may end after the item of this key: after it in blocks of about BLOCK items when 0, in
    blocks of about FINE_BLOCK when a multiple of FINE_BLOCK (so the finer blocks split the coarser ones). A
    property of the item, not of its position, so an item inserted or removed (a dataset discovered, a family
    empty for one dataset) moves only its own block. A CRC, not hash(): the same blocks in every process
    (PYTHONHASHSEED), so bodies and tests are repeatable."""
    return zlib.crc32(key if isinstance(key, bytes) else key.encode()) & (BLOCK - 1)


def ends_block(key: bytes | str) -> bool:
    """Whether a block of about BLOCK items ends after the item of this key (see `block_mark`)."""
    return not block_mark(key)


def block_ends(marks: Iterable[bool], count: int, longest: int = MAX_BLOCK) -> list[int]:
    """Where blocks end among `count` items: after each marked one, after the last, and after `longest` items
    without a mark."""
    ends = list(compress(range(1, count + 1), marks))  # in C: a fleet's pieces are not a Python loop
    if count and (not ends or ends[-1] != count):
        ends.append(count)
    if not ends or max(map(operator.sub, ends, [0, *ends[:-1]])) <= longest:
        return ends
    capped, start = [], 0
    for end in ends:
        capped.extend(range(start + longest, end, longest))
        capped.append(end)
        start = end
    return capped


def fleet_ends(marks: Sequence[int]) -> tuple[list[int], list[int]]:
    """Where blocks of about BLOCK items end among items with these marks (`block_mark`), and where the finer
    blocks of about FINE_BLOCK end, which split them."""
    count = len(marks)
    return (
        block_ends(map(operator.not_, marks), count),
        block_ends(map(operator.not_, map(operator.mod, marks, repeat(FINE_BLOCK))), count, FINE_BLOCK * 4),
    )


# Consecutive pieces of one family, as one raw deflate segment, with the CRC-32 and length of their bytes. A plain
# tuple of untracked values, which the cyclic collector stops tracking: at 10,000 datasets, 27,500 blocks as
# objects (and the rows' diagnostics as lists and sets) made the full collection at the end of every cycle
# 0.04 s longer (0.35 s against 0.31 s).
Block = tuple[tuple[bytes, ...], bytes, int, int]  # pieces, deflated, crc, size


def compress_block(pieces: tuple[bytes, ...]) -> Block:
    joined = b"".join(pieces)
    return (pieces, deflate(joined), zlib.crc32(joined), len(joined))


@dataclass(frozen=True, slots=True)
class Compressed:
    """A family's pieces as raw deflate segments, one per CRC group of blocks (a changed block costs joining
    its group's segments again, not the family's), with the CRC-32 and length of the bytes they hold."""

    segments: tuple[bytes, ...]
    crc: int
    size: int


@dataclass(frozen=True, slots=True)
class _Column:
    """A family's pieces at the last body, where its blocks ended, its blocks (None: nothing in it), and
    what they made."""

    pieces: Sequence[bytes]
    ends: list[int]
    blocks: tuple[Block | None, ...]  # a tuple, which the cyclic collector stops tracking (see Block)
    groups: list[tuple[int, int, bytes]]  # CRC-32, length and joined segments of each CRC_GROUP blocks
    compressed: Compressed
    aligned: bool  # one piece per dataset, with the caller's ends (see `family`)


class BlockDeflater:
    """Compresses each family's pieces in blocks, each alone, and keeps them: a block whose pieces hold the
    same bytes as at the last body is not compressed again (a dataset fetched again with the same values costs
    nothing; a changed one costs its block). One thread at a time."""

    def __init__(self) -> None:
        self._columns: dict[str, _Column] = {}
        self._next_columns: dict[str, _Column] = {}
        self.compressed = 0  # pieces compressed since the last `finish`, which returns it (tests read it)

    def family(
        self, name: str, pieces: Sequence[bytes], ends: list[int] | None = None, changed: list[int] | None = None
    ) -> Compressed:
        """A family's pieces (empty ones allowed) in the blocks that `ends` delimit (by default, by their
        contents), each compressed or kept from the last body. With `ends`, pieces are one per dataset, and
        `changed` (if known) lists the datasets whose pieces may differ from the last body's, when that body
        had this family one piece per dataset too: the caller knows them, and need not be compared here."""
        aligned = ends is not None
        if ends is None:
            ends = block_ends(map(ends_block, pieces), len(pieces))
        before = self._columns.get(name)
        if before is not None and before.pieces is pieces and before.ends == ends and before.aligned == aligned:
            self._next_columns[name] = before  # the last body's pieces, which are never changed in place
            return before.compressed
        if before is not None and before.ends == ends and len(before.pieces) == len(pieces):
            # The usual case: the same blocks, a few pieces changed. Found without a loop over the fleet.
            found = list(before.blocks)
            if changed is None or not (aligned and before.aligned):
                changed = compress(range(len(pieces)), map(operator.is_not, pieces, before.pieces))  # type: ignore[assignment]
            for index in sorted({bisect.bisect_right(ends, position) for position in changed}):
                found[index] = self._block(_slice(pieces, ends, index), found[index])
        else:  # blocks moved (datasets added or removed): known blocks are found by their first piece
            known = {_first(block[0]): block for block in before.blocks if block} if before else {}
            found = []
            for index in range(len(ends)):
                block = _slice(pieces, ends, index)
                found.append(self._block(block, known.get(_first(block))))
        same_count = before is not None and len(found) == len(before.blocks)
        moved = list(compress(range(len(found)), map(operator.is_not, found, before.blocks))) if same_count else []
        if before is not None and same_count and not moved:
            groups, compressed = before.groups, before.compressed
        else:
            if before is not None and same_count:
                groups = before.groups.copy()
                for group in {index // CRC_GROUP for index in moved}:
                    groups[group] = _group(found, group)
            else:
                groups = [_group(found, group) for group in range(-(-len(found) // CRC_GROUP))]
            crc = size = 0
            for group_crc, group_size, _ in groups:
                crc, size = crc32_combine(crc, group_crc, group_size), size + group_size
            compressed = Compressed(tuple(segments for _, _, segments in groups if segments), crc, size)
        self._next_columns[name] = _Column(pieces, ends, tuple(found), groups, compressed, aligned)
        return compressed

    def _block(self, pieces: tuple[bytes, ...], known: Block | None) -> Block | None:
        """A block of these pieces (None if they are all empty): `known` if it holds the same bytes."""
        if not any(pieces):
            return None
        if known is not None and known[0] == pieces:  # by identity first, then by bytes
            return known
        self.compressed += len(pieces)
        return compress_block(pieces)

    def finish(self) -> int:
        """End a body: forget the families it did not have; how many pieces it compressed."""
        compressed, self.compressed = self.compressed, 0
        self._columns, self._next_columns = self._next_columns, {}
        return compressed


def _group(blocks: list[Block | None], group: int) -> tuple[int, int, bytes]:
    """The CRC-32, length and joined segments of the blocks in CRC group `group`."""
    crc = size = 0
    members = [block for block in blocks[group * CRC_GROUP : (group + 1) * CRC_GROUP] if block is not None]
    for _, _, block_crc, block_size in members:
        crc, size = crc32_combine(crc, block_crc, block_size), size + block_size
    return crc, size, b"".join([deflated for _, deflated, _, _ in members])


def _slice(pieces: Sequence[bytes], ends: list[int], index: int) -> tuple[bytes, ...]:
    return tuple(pieces[ends[index - 1] if index else 0 : ends[index]])


def _first(pieces: tuple[bytes, ...]) -> int:
    """The id of the first piece with bytes in it (0 if none): empty pieces are all one object."""
    return id(next(filter(None, pieces), None)) if any(pieces) else 0
