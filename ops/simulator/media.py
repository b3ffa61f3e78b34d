"""Result bytes: real PNG images of the requested size, and a small valid MP4, from the standard library."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, seed: str) -> bytes:
    """An RGB PNG of `width` x `height`: horizontal bands whose colours derive from `seed`."""
    digest = hashlib.sha256(seed.encode()).digest()
    palette = [digest[i : i + 3] for i in range(0, 24, 3)]
    band = max(1, height // len(palette))
    rows = []
    for i, colour in enumerate(palette):
        row = b"\x00" + colour * width  # filter byte 0, then RGB pixels
        count = band if i < len(palette) - 1 else height - band * (len(palette) - 1)
        rows.append(row * max(0, count))
    raw = b"".join(rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    )


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _mp4_head() -> bytes:
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
    mvhd = _box(
        b"mvhd",
        b"\x00" * 4
        + struct.pack(">IIII", 0, 0, 1000, 5000)
        + b"\x00\x01\x00\x00"
        + b"\x01\x00"
        + b"\x00" * 10
        + b"\x00\x01\x00\x00"
        + b"\x00" * 12
        + b"\x00\x01\x00\x00"
        + b"\x00" * 12
        + b"\x40\x00\x00\x00"
        + b"\x00" * 24
        + struct.pack(">I", 2),
    )
    return ftyp + _box(b"moov", mvhd)


def mp4_size(size_bytes: int) -> int:
    """The length `mp4_chunks` will produce for a requested size (at least a minimal file)."""
    return max(size_bytes, len(_mp4_head()) + 8 + 32)


def mp4_chunks(seed: str, size_bytes: int = 0, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
    """A structurally valid MP4 (ftyp + moov + mdat) of `mp4_size(size_bytes)` bytes, generated in chunks so a
    large file never sits in memory (for download tests of hundreds of MB)."""
    head = _mp4_head()
    payload = mp4_size(size_bytes) - len(head) - 8
    yield head + struct.pack(">I", 8 + payload if 8 + payload < 2**32 else 1) + b"mdat"
    block = (hashlib.sha256(seed.encode()).digest() * (chunk_bytes // 32 + 1))[:chunk_bytes]
    while payload > 0:
        piece = block[: min(chunk_bytes, payload)]
        payload -= len(piece)
        yield piece


def mp4(seed: str, size_bytes: int = 0) -> bytes:
    return b"".join(mp4_chunks(seed, size_bytes))
