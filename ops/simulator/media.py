"""Result bytes: real PNG images of the requested size, and a small valid MP4, from the standard library."""

from __future__ import annotations

import hashlib
import struct
import zlib


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


def mp4(seed: str, size_bytes: int = 0) -> bytes:
    """A structurally valid MP4 (ftyp + moov + mdat); `size_bytes` pads the mdat for large-download tests."""
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
    moov = _box(b"moov", mvhd)
    filler = hashlib.sha256(seed.encode()).digest()
    body_len = max(len(filler), size_bytes - len(ftyp) - len(moov) - 8)
    mdat = _box(b"mdat", (filler * (body_len // len(filler) + 1))[:body_len])
    return ftyp + moov + mdat
