"""A Redis sorted set in one process, for the memory store: member -> score, ordered as Redis orders it."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort


class SortedSet:
    """A Redis sorted set: member -> score, ordered by (score, member)."""

    def __init__(self) -> None:
        self._scores: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._scores)

    def add(self, member: str, score: float, *, nx: bool = False) -> bool:
        """ZADD (NX: never update an existing member). True when the member is new."""
        old = self._scores.get(member)
        if old is not None:
            if nx or old == score:
                return False
            del self._order[bisect_left(self._order, (old, member))]
        self._scores[member] = score
        insort(self._order, (score, member))
        return old is None

    def remove(self, member: str) -> bool:
        old = self._scores.pop(member, None)
        if old is None:
            return False
        del self._order[bisect_left(self._order, (old, member))]
        return True

    def score(self, member: str) -> float | None:
        return self._scores.get(member)

    def first(self) -> tuple[str, float] | None:
        return (self._order[0][1], self._order[0][0]) if self._order else None

    def up_to(self, max_score: float, limit: int | None = None) -> list[tuple[str, float]]:
        """ZRANGEBYSCORE -inf max_score (LIMIT 0 limit), as (member, score)."""
        found = self._order[: bisect_right(self._order, max_score, key=lambda entry: entry[0])]
        if limit is not None:
            found = found[:limit]
        return [(member, score) for score, member in found]

    def drop_up_to(self, max_score: float) -> None:
        """ZREMRANGEBYSCORE -inf max_score."""
        for member, _ in self.up_to(max_score):
            self.remove(member)

    def items(self) -> list[tuple[str, float]]:
        return [(member, score) for score, member in self._order]

    def members(self) -> list[str]:
        return [member for _, member in self._order]
