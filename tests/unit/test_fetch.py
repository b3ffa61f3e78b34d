"""The result URL gate: only allowed hosts and schemes are fetched, and bytes must be what they claim."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from config.settings import DOCUMENTED_RESULT_HOSTS
from workers.errors import ResultRejected
from workers.fetch import CHUNK_BYTES, check_url, fetch, sniff

OSS = "https://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com/1d/59/x.png?Expires=1&Signature=s"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",  # the local Redis port
        "https://169.254.169.254/latest/meta-data/",  # cloud metadata
        "https://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com.evil.example/x.png",
        "https://evil.example/?h=dashscope-result-bj.oss-cn-beijing.aliyuncs.com",
    ],
)
def test_hosts_off_the_allowlist_are_refused(url: str) -> None:
    """Anything but the documented OSS hosts is refused (even with http allowed), before any request is made."""
    with pytest.raises(ResultRejected) as info:
        check_url(url, allowed_hosts=DOCUMENTED_RESULT_HOSTS, require_https=False)
    assert info.value.code == "ResultHostNotAllowed"


def test_documented_hosts_pass_and_https_is_required() -> None:
    """A documented OSS URL passes; the same over http, or a file: URL, is refused by scheme."""
    check_url(OSS, allowed_hosts=DOCUMENTED_RESULT_HOSTS, require_https=True)
    for url in (OSS.replace("https", "http", 1), "file:///etc/passwd"):
        with pytest.raises(ResultRejected) as info:
            check_url(url, allowed_hosts=DOCUMENTED_RESULT_HOSTS, require_https=True)
        assert info.value.code == "ResultUrlScheme"


def test_a_local_host_is_allowed_only_with_its_port() -> None:
    """The local simulator is allowed as host:port, which does not open other ports of the same host."""
    check_url("http://127.0.0.1:8089/results/t/0.png", allowed_hosts=("127.0.0.1:8089",), require_https=False)
    with pytest.raises(ResultRejected):
        check_url("http://127.0.0.1:6379/", allowed_hosts=("127.0.0.1:8089",), require_https=False)


def test_content_is_sniffed_not_trusted() -> None:
    """PNG and MP4 are recognised by their bytes; HTML claiming to be an image is refused."""
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) == ("image/png", "png")
    assert sniff(b"\0\0\0 ftypisom") == ("video/mp4", "mp4")
    with pytest.raises(ResultRejected):
        sniff(b"<html><body>")


class Chunks(httpx.SyncByteStream):
    """A body streamed in chunks, with no length declared; counts how many chunks were read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.read = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    def __repr__(self) -> str:
        return f"Chunks({self.read} of {len(self.chunks)} read)"


def test_size_cap_refuses_a_declared_length_before_reading() -> None:
    """A body whose Content-Length is over the cap is refused before any of it is read."""
    body = Chunks([b"\x89PNG\r\n\x1a\n" + b"x" * 5000])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "5008"}, stream=body)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(ResultRejected) as info,
        fetch(http, "https://h/x.png", max_bytes=1000),
    ):
        pass
    assert info.value.code == "ResultTooLarge" and body.read == 0


def test_size_cap_stops_a_streamed_download_midway() -> None:
    """A streamed body that declares no length is refused as soon as what was read passes the cap, before the
    rest is read."""
    body = Chunks([b"\x89PNG\r\n\x1a\n" + b"x" * (CHUNK_BYTES - 8)] + [b"x" * CHUNK_BYTES] * 7)
    seen: list[httpx.Response] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(httpx.Response(200, stream=body))
        return seen[-1]

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(ResultRejected) as info,
        fetch(http, "https://h/x.png", max_bytes=2 * CHUNK_BYTES + 1),
    ):
        pass
    assert "content-length" not in seen[0].headers  # so only the streaming cap can refuse it
    assert info.value.code == "ResultTooLarge" and body.read < len(body.chunks)
