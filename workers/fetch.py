"""Fetch one result URL safely: allowed host, allowed scheme, bounded size, bytes that match the type.

The body is streamed into a spooled temporary file while its sha256 is computed, so memory stays
constant whatever the size (small results stay in RAM, large ones go to disk).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import httpx

from workers.errors import ResultRejected, TransientRemoteError

CHUNK_BYTES = 1024 * 1024
SPOOL_BYTES = 8 * 1024 * 1024

#: content type -> (file extension, magic test on the first bytes)
_SIGNATURES: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "image/png": ("png", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    "image/jpeg": ("jpg", lambda head: head.startswith(b"\xff\xd8\xff")),
    "image/webp": ("webp", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
    "video/mp4": ("mp4", lambda head: head[4:8] == b"ftyp"),
}


@dataclass(frozen=True)
class Fetched:
    file: BinaryIO
    size: int
    sha256: str
    content_type: str
    extension: str


def _without_query(url: object) -> object:
    """A result URL as an error may quote it: without its query, which holds the presigned URL's signature and
    access key id (a message goes to the job, its events, webhooks and logs)."""
    return url.split("?", 1)[0] + "?..." if isinstance(url, str) and "?" in url else url


def check_url(url: str, *, allowed_hosts: Iterable[str], require_https: bool) -> None:
    """Raise `ResultRejected` unless the URL is well formed and its scheme and host are allowed. Nothing is
    fetched. A URL that urllib and httpx could read differently (whitespace or control characters, as in
    `https://evil.com\t@allowed-host/`, a bad port) is refused as malformed, never handed to httpx."""
    if not isinstance(url, str) or not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        shown = _without_query(url)
        raise ResultRejected("ResultUrlMalformed", f"result URL {shown!r:.200} has whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        shown = _without_query(url)
        raise ResultRejected("ResultUrlMalformed", f"result URL {shown!r:.200} cannot be parsed: {exc}") from None
    if parts.scheme not in {"http", "https"} or (require_https and parts.scheme != "https"):
        raise ResultRejected("ResultUrlScheme", f"result URL scheme {parts.scheme!r} is not allowed")
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port else host
    allowed = set(allowed_hosts)
    if host not in allowed and netloc not in allowed:
        raise ResultRejected("ResultHostNotAllowed", f"result host {netloc!r} is not on the allowlist")


def sniff(head: bytes) -> tuple[str, str]:
    for content_type, (extension, matches) in _SIGNATURES.items():
        if matches(head):
            return content_type, extension
    raise ResultRejected("ResultContentType", "result bytes are not PNG, JPEG, WebP or MP4")


@contextmanager
def fetch(http: httpx.Client, url: str, *, max_bytes: int) -> Iterator[Fetched]:
    """Stream `url` into a temporary file; yield it rewound, with its size, sha256 and sniffed type."""
    digest = hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        try:
            with http.stream("GET", url, follow_redirects=False) as response:
                if response.status_code == 403:
                    raise ResultRejected("ResultUrlExpired", "result URL answered 403 (expired?)")
                if response.status_code >= 400:
                    raise TransientRemoteError("ResultDownload", f"result URL answered HTTP {response.status_code}")
                length = response.headers.get("Content-Length") or "0"
                # A garbled header (Unicode digits included: '²'.isdigit()): the streamed cap decides.
                declared = int(length) if length.isascii() and length.isdigit() else 0
                if declared > max_bytes:
                    raise ResultRejected("ResultTooLarge", f"result is {declared} bytes, over {max_bytes}")
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResultRejected("ResultTooLarge", f"result is over {max_bytes} bytes")
                    digest.update(chunk)
                    spool.write(chunk)
        except httpx.HTTPError as exc:
            raise TransientRemoteError("ResultDownload", f"downloading a result failed: {type(exc).__name__}") from exc
        spool.seek(0)
        content_type, extension = sniff(spool.read(16))
        spool.seek(0)
        yield Fetched(cast(BinaryIO, spool), size, digest.hexdigest(), content_type, extension)
