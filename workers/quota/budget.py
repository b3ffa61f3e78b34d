"""The query budget: one rate per account (20 QPS by default) shared by every poll of every model.

`GET /tasks/{id}` and the task list draw on it, from every worker on every host. A poll that finds the
budget spent is not a failure: it comes back after the wait the budget names and burns no retry. Built on
the same GCRA step as the submit rate (`rate.py`), with its own key per account; a small burst lets the
polls that fall due together go at once without breaking the service's one-second window.
"""

from __future__ import annotations

from workers.jobstore import keys
from workers.quota.rate import RateLimiter

#: Fraction of the documented QPS genq spends, so that jitter between our clock and the service's window
#: never tips a second over the limit.
QUERY_SAFETY = 0.9


class QueryBudget:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def take(self, account: str, qps: float, now: float) -> float:
        """0.0 when a query of `account` may go now, else the seconds to wait."""
        return self._limiter.take(keys.query_budget(account), qps * QUERY_SAFETY, now, burst=1)
