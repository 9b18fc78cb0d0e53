"""exporter.deflate: pieces compressed once, chained by preset dictionaries, in one gzip member."""

from __future__ import annotations

import gzip
import random
import struct
import zlib

import pytest

from exporter import deflate
from exporter.deflate import BLOCK, FINAL_BLOCK, GZIP_HEADER, BlockDeflater, crc32_combine, crc32_combine_python


def member(blocks: list[deflate.Block]) -> bytes:
    crc = size = 0
    for block in blocks:
        crc, size = crc32_combine(crc, block.crc, block.size), size + block.size
    body = b"".join(block.deflated for block in blocks)
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


def test_chained_pieces_decode_as_one_member_and_compress_like_one_stream():
    data = pieces(random.Random(1), 3 * BLOCK + 5)
    blocks = BlockDeflater().blocks(data)
    packed = member(blocks)
    single = zlib.decompressobj(31)  # stops after one member, as httpx's and curl's decoders do
    assert single.decompress(packed) == b"".join(data) and single.eof and not single.unused_data
    assert gzip.decompress(packed) == b"".join(data)
    alone = sum(len(deflate.deflate(piece)) for piece in data)
    assert len(packed) < 0.8 * alone  # the dictionaries pay: neighbours share names and labels


def test_a_changed_piece_costs_itself_and_its_successor_and_equal_bytes_cost_nothing():
    rng = random.Random(2)
    data = pieces(rng, 4 * BLOCK)
    deflater = BlockDeflater()
    deflater.blocks(data)
    assert deflater.finish() == len(data)
    changed = list(data)
    changed[BLOCK + 3] = changed[BLOCK + 3].replace(b"0.", b"1.", 1)  # inside the second block
    changed[2 * BLOCK - 1] = b"last of its block\n"  # its successor starts a new block: no dictionary
    again = [bytes(piece) for piece in changed]  # new objects, same bytes: a dataset fetched again
    blocks = deflater.blocks(again)
    assert deflater.finish() == 3  # BLOCK+3, its successor BLOCK+4, and 2*BLOCK-1
    assert gzip.decompress(member(blocks)) == b"".join(changed)
    deflater.blocks([bytes(piece) for piece in changed])
    assert deflater.finish() == 0


def test_forgotten_segments_are_pruned():
    rng = random.Random(3)
    deflater = BlockDeflater()
    for _ in range(30):
        deflater.blocks(pieces(rng, 100))
        deflater.finish()
    assert len(deflater._segments) <= 100 + 25 + 1024
    for _ in range(30):
        deflater.blocks(pieces(rng, 2000))
        deflater.finish()
    assert len(deflater._segments) <= 2000 + 500 + 1024  # replaced pieces are not kept past a quarter
