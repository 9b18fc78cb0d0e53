"""exporter.exposition.deflate: a family's pieces compressed in blocks kept between publishes, in one gzip member."""

from __future__ import annotations

import gzip
import random
import struct
import zlib

import pytest

from exporter.exposition import deflate
from exporter.exposition.deflate import (
    BLOCK,
    FINAL_BLOCK,
    GZIP_HEADER,
    BlockDeflater,
    Segments,
    combined,
    crc32_combine,
    crc32_zeros_combine,
)


def member(*families: Segments) -> bytes:
    crc, size = combined(families)
    body = b"".join(part for family in families for part in family.parts)
    return GZIP_HEADER + body + FINAL_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)


def pieces(rng: random.Random, count: int) -> list[bytes]:
    return [
        b"".join(
            f'meta_dataset_quality_match_key_coverage_ratio{{dataset_id="{i}",match_key="k{k}"}} {round(rng.random(), 3)}\n'.encode()
            for k in range(rng.randrange(1, 40))
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("combine", [crc32_combine, crc32_zeros_combine])
def test_crc32_combine_is_the_crc_of_the_concatenation(combine):
    rng = random.Random(5)
    for _ in range(50):
        first, second = rng.randbytes(rng.randrange(0, 3000)), rng.randbytes(rng.randrange(0, 200_000))
        assert combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def test_libz_is_used_where_it_loads():
    assert deflate.crc32_combine is not crc32_zeros_combine  # Debian and the image ship libz.so.1


def test_blocks_decode_as_one_member_a_decoder_that_stops_after_one_reads_whole():
    data = pieces(random.Random(1), 20 * BLOCK + 5)
    data[3:3] = [b"", b""]  # a family can be empty for some datasets
    data[40 : 40 + BLOCK] = [b""] * BLOCK  # and for a whole block
    deflater = BlockDeflater()
    first, second = deflater.family("a", data), deflater.family("b", data[::-1])
    packed = member(first, second)
    single = zlib.decompressobj(31)  # httpx's and curl's decoders stop after the first member
    assert single.decompress(packed) == b"".join(data) + b"".join(data[::-1]) and single.eof
    assert gzip.decompress(packed) == b"".join(data) + b"".join(data[::-1])


def test_a_changed_piece_costs_its_block_and_equal_bytes_cost_nothing():
    data = pieces(random.Random(2), 10 * BLOCK)
    deflater = BlockDeflater()
    deflater.family("a", data)
    assert deflater.finish() == len(data)
    before = deflater.family("a", data)
    assert deflater.finish() == 0  # the same objects: nothing compressed
    copies = [bytes(bytearray(piece)) for piece in data]  # new objects, the same bytes
    assert deflater.family("a", copies) is before and deflater.finish() == 0
    changed = list(data)
    changed[3 * BLOCK + 2] = b'meta_dataset_quality_x{dataset_id="changed"} 1.0\n'
    after = deflater.family("a", changed)
    assert deflater.finish() == BLOCK  # its block only
    assert gzip.decompress(member(after)) == b"".join(changed)
    assert len(after.parts) == 1 and after.parts != before.parts


def test_families_not_in_a_publish_are_forgotten():
    data = pieces(random.Random(3), 3 * BLOCK)
    deflater = BlockDeflater()
    deflater.family("a", data)
    deflater.finish()
    deflater.finish()  # a publish without family a
    deflater.family("a", data)
    assert deflater.finish() == len(data)


def test_a_family_keeps_its_crc_right_as_blocks_change_and_the_fleet_grows_and_shrinks():
    rng = random.Random(4)
    data = pieces(rng, 30 * BLOCK)
    deflater = BlockDeflater()
    for step in range(30):
        for _ in range(rng.choice((0, 1, 5))):
            data[rng.randrange(len(data))] = pieces(rng, 1)[0]
        if step % 7 == 3:
            data.insert(rng.randrange(len(data)), pieces(rng, 1)[0])
        if step % 11 == 5:
            del data[rng.randrange(len(data))]
        family = deflater.family("a", data)
        deflater.finish()
        assert (family.crc, family.size) == (zlib.crc32(b"".join(data)), len(b"".join(data))), step
        assert gzip.decompress(member(family)) == b"".join(data), step
