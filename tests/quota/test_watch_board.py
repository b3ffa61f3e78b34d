"""The watch board, one body per behaviour, against Redis and memory: one lease per account, rounds that end once."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from workers.quota.watch_board import MemoryWatchBoard, RedisWatchBoard, Sent, WatchBoard


@pytest.fixture(params=["redis", "memory"])
def board(request: pytest.FixtureRequest) -> Iterator[WatchBoard]:
    if request.param == "memory":
        yield MemoryWatchBoard()
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    yield RedisWatchBoard(client)
    client.close()


def account() -> str:
    return "acct-" + secrets.token_hex(4)


def test_one_watcher_holds_an_account_until_it_leaves(board: WatchBoard) -> None:
    """The first claim wins; others see its last good round; after it leaves the next claim wins."""
    acct = account()
    assert board.claim(acct, "a", 30) == (True, None)
    assert board.claim(acct, "b", 30) == (False, None)
    assert board.hold(acct, "a", 0, 30, ok_at=123.0, sent={})
    assert board.claim(acct, "b", 30) == (False, 123.0)
    board.leave(acct, "b")  # not the holder: nothing happens
    assert board.read(acct).token == "a"
    board.leave(acct, "a")
    assert board.read(acct).token is None
    assert board.claim(acct, "b", 30)[0]


def test_each_round_ends_once_so_a_message_delivered_twice_stops(board: WatchBoard) -> None:
    """Round 0 ends once; its second delivery (the same token and round) is refused, and so is a stale token."""
    acct = account()
    board.claim(acct, "a", 30)
    sent = {"b/j1": Sent(attempt=4, at=10.0, times=2)}
    assert board.hold(acct, "a", 0, 30, ok_at=None, sent=sent)
    assert not board.hold(acct, "a", 0, 30, ok_at=None, sent={})
    assert not board.hold(acct, "other", 1, 30, ok_at=None, sent={})
    state = board.read(acct)
    assert (state.round, state.sent, state.ok_at) == (1, sent, None)
    assert board.hold(acct, "a", 1, 30, ok_at=5.0, sent={})
    assert board.read(acct).round == 2 and board.read(acct).ok_at == 5.0


def test_a_redis_lease_lapses_by_itself(redis_url: str) -> None:
    """In Redis the lease is the hash's TTL: a watcher that stops renewing is gone within it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    board, acct = RedisWatchBoard(client), account()
    board.claim(acct, "a", 0.05)
    assert 0 < client.pttl(f"genq:watch:{acct}") <= 50
    client.close()
