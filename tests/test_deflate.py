"""exporter.deflate: pieces compressed once, in blocks kept between bodies, in one gzip member."""

from __future__ import annotations

import gzip
import random
import struct
import zlib

import pytest

from exporter import deflate
from exporter.deflate import (
    BLOCK,
    CRC_GROUP,
    FINAL_BLOCK,
    FINE_BLOCK,
    GZIP_HEADER,
    MAX_BLOCK,
    BlockDeflater,
    block_ends,
    crc32_combine,
    crc32_combine_python,
)


def member(*families: deflate.Compressed) -> bytes:
    crc = size = 0
    for family in families:
        crc, size = crc32_combine(crc, family.crc, family.size), size + family.size
    body = b"".join(segment for family in families for segment in family.segments)
    return GZIP_HEADER + body + FINAL_BLOCK + struct.pack("<II", crc, size)


def pieces(rng: random.Random, count: int) -> list[bytes]:
    return [
        b"".join(
            f'meta_dataset_quality_match_key_coverage_ratio{{dataset_id="{i}",match_key="k{k}"}} {round(rng.random(), 3)}\n'.encode()
            for k in range(rng.randrange(1, 40))
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("combine", [crc32_combine, crc32_combine_python])
def test_crc32_combine_is_the_crc_of_the_concatenation(combine):
    rng = random.Random(5)
    for _ in range(50):
        first, second = rng.randbytes(rng.randrange(0, 3000)), rng.randbytes(rng.randrange(0, 70000))
        assert combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def test_libz_is_used_where_it_loads():
    assert deflate.crc32_combine is not crc32_combine_python  # Debian and the image ship libz.so.1


def test_blocks_decode_as_one_member_and_compress_like_one_stream():
    data = pieces(random.Random(1), 20 * BLOCK + 5)
    data[3:3] = [b"", b""]  # a family can be empty for some datasets
    first, second = BlockDeflater().family("a", data), BlockDeflater().family("b", data[::-1])
    packed = member(first, second)
    single = zlib.decompressobj(31)  # stops after one member, as httpx's and curl's decoders do
    whole = b"".join(data) + b"".join(data[::-1])
    assert single.decompress(packed) == whole and single.eof and not single.unused_data
    assert gzip.decompress(packed) == whole
    alone = sum(len(deflate.deflate(piece)) for piece in data)
    assert len(packed) < 0.8 * 2 * alone  # blocks pay: neighbours share names and labels


def test_block_ends_follow_the_marks_and_cap_long_runs():
    assert block_ends([False, True, False, False, True], 5) == [2, 5]
    assert block_ends([False] * (2 * MAX_BLOCK + 3), 2 * MAX_BLOCK + 3) == [MAX_BLOCK, 2 * MAX_BLOCK, 2 * MAX_BLOCK + 3]
    assert block_ends([], 0) == []


def test_finer_blocks_split_the_coarser_ones():
    """A finer block ends wherever a coarse one does, and about twice as often, so the two sizes of blocks
    of one fleet move together when a dataset comes or goes."""
    marks = [deflate.block_mark(f"dataset-{index}") for index in range(4000)]
    coarse = block_ends([not mark for mark in marks], len(marks))
    fine = block_ends([not mark % FINE_BLOCK for mark in marks], len(marks), 4 * FINE_BLOCK)
    assert set(coarse) <= set(fine)
    assert 1.6 < len(fine) / len(coarse) < 2.4
    assert deflate.ends_block("dataset-7") == (deflate.block_mark("dataset-7") == 0)


def test_a_changed_piece_costs_its_block_and_equal_bytes_cost_nothing():
    rng = random.Random(2)
    data = pieces(rng, 40 * BLOCK)
    ends = block_ends([index % BLOCK == BLOCK - 1 for index in range(len(data))], len(data))  # one per dataset
    deflater = BlockDeflater()
    deflater.family("f", data, ends)
    assert deflater.finish() == len(data)
    changed = list(data)
    changed[BLOCK + 3] = changed[BLOCK + 3].replace(b"0.", b"1.", 1)  # in the second block
    changed[5 * BLOCK] = b""  # the family is empty for this dataset now: the sixth block, and no other
    again = [bytes(piece) for piece in changed]  # new objects, same bytes: datasets fetched again
    compressed = deflater.family("f", again, ends)
    assert deflater.finish() == 2 * BLOCK
    assert gzip.decompress(member(compressed)) == b"".join(changed)
    assert deflater.family("f", [bytes(piece) for piece in changed], ends) is compressed
    assert deflater.finish() == 0


def test_blocks_found_by_contents_move_only_around_an_inserted_piece():
    rng = random.Random(13)
    data = pieces(rng, 60 * BLOCK)
    deflater = BlockDeflater()
    ends = block_ends(map(deflate.ends_block, data), len(data))
    assert max(b - a for a, b in zip([0, *ends], ends, strict=False)) < MAX_BLOCK  # no run cut by position
    deflater.family("f", data)
    deflater.finish()
    grown = [*data[: 30 * BLOCK], b"a dataset discovered\n", *data[30 * BLOCK :]]
    assert gzip.decompress(member(deflater.family("f", grown))) == b"".join(grown)
    assert deflater.finish() <= MAX_BLOCK + 1  # the block the new piece joined, not the rest of the family


def test_families_not_in_a_body_are_forgotten():
    deflater = BlockDeflater()
    deflater.family("old", pieces(random.Random(4), 50))
    deflater.finish()
    deflater.family("new", pieces(random.Random(5), 50))
    deflater.finish()
    assert list(deflater._columns) == ["new"]


def test_a_family_of_many_crc_groups_keeps_its_crc_right_as_blocks_change():
    """Each CRC_GROUP blocks' CRC-32 is kept: a changed block recombines its group only."""
    rng = random.Random(5)
    count = (3 * CRC_GROUP + 5) * BLOCK
    data = pieces(rng, count)
    ends = block_ends([index % BLOCK == BLOCK - 1 for index in range(count)], count)
    deflater = BlockDeflater()
    for step in range(6):
        for index in rng.sample(range(count), 3):  # blocks in any group, the last one's too
            data[index] = data[index].replace(b"0.", f"{step}.".encode(), 1) if step % 3 else b""
        compressed = deflater.family("f", list(data), ends)
        deflater.finish()
        joined = b"".join(data)
        assert (compressed.crc, compressed.size) == (zlib.crc32(joined), len(joined))
        assert gzip.decompress(member(compressed)) == joined
    data.append(b"x 1\n")  # one more block: the groups are made again
    compressed = deflater.family("f", data, [*ends, count + 1])
    assert compressed.crc == zlib.crc32(b"".join(data))
