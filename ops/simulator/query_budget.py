"""One account's query budget: `GET /tasks/{id}` and `GET /tasks` together, `per_s` in any sliding second.

Besides enforcing the budget, it keeps what a benchmark must see from the outside: how many task queries and
lists were answered, how many requests were refused, and the most requests within any one second, both as
sent (refused ones included: what the client asked of the budget) and as answered (never above `per_s`).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

#: What a request of the budget is: a task query (`GET /tasks/{id}`) or a list (`GET /tasks`).
QueryKind = Literal["queries", "lists"]


def _trim(window: deque[float], now: float) -> None:
    """Drop the times that fell out of the second ending at `now`, which is (now - 1, now]."""
    while window and window[0] <= now - 1.0:
        window.popleft()


@dataclass
class QueryBudget:
    per_s: int
    answered: deque[float] = field(default_factory=deque)  # times of answered requests in the last second
    asked: deque[float] = field(default_factory=deque)  # times of every request in the last second
    peak_asked_1s: int = 0
    peak_answered_1s: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # "queries", "lists" answered; "throttled" refused

    def take(self, now: float, kind: QueryKind) -> bool:
        """Whether a request at `now` fits the budget; counted either way."""
        _trim(self.asked, now)
        self.asked.append(now)
        self.peak_asked_1s = max(self.peak_asked_1s, len(self.asked))
        _trim(self.answered, now)
        if len(self.answered) >= self.per_s:
            self.counts["throttled"] += 1
            return False
        self.answered.append(now)
        self.peak_answered_1s = max(self.peak_answered_1s, len(self.answered))
        self.counts[kind] += 1
        return True

    def report(self) -> dict[str, Any]:
        return {
            "query_qps": self.per_s,
            "queries": self.counts["queries"],
            "lists": self.counts["lists"],
            "throttled_query": self.counts["throttled"],
            "query_peak_1s": self.peak_asked_1s,
            "query_peak_1s_answered": self.peak_answered_1s,
        }
