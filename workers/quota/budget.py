"""The query budget: one rate per account (20 QPS by default) shared by every poll of every model.

`GET /tasks/{id}` draws on it, from every worker on every host; the task list draws on a share of it reserved
for the lists (`take_list`, its own key), so that the two together never pass the account's figure. A poll that
finds the budget spent is not a failure: it comes back after the wait the budget names and burns no retry. Built on
the same GCRA step as the submit rate (`rate.py`), with its own key per account; a small burst lets the
polls that fall due together go at once without breaking the service's one-second window.
"""

from __future__ import annotations

from config.accounts import AccountSettings
from config.settings import Settings
from workers.jobstore import keys
from workers.quota.rate import RateLimiter

#: Fraction of the documented QPS genq spends, so that jitter between our clock and the service's window
#: never tips a second over the limit.
QUERY_SAFETY = 0.9


#: The share of an account's query budget reserved for task lists, when they have no budget of their own.
LIST_SHARE = 0.2


def lists_share_the_budget(settings: Settings) -> bool:
    return settings.watch_task_list and not settings.task_list_qps


def list_qps(settings: Settings, account: AccountSettings) -> float:
    """The task lists' budget: their own when configured (`task_list_qps`), else their share of the account's."""
    return settings.task_list_qps or account.query_qps * LIST_SHARE


def task_query_qps(settings: Settings, account: AccountSettings) -> float:
    """The budget of every other query (polls, cancels' checks, reconciliation): the account's, less the lists'
    share when they share it. Both figures together never pass the account's."""
    return account.query_qps * (1 - LIST_SHARE) if lists_share_the_budget(settings) else account.query_qps


class QueryBudget:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def take(self, account: str, qps: float, now: float) -> float:
        """0.0 when a query of `account` may go now, else the seconds to wait."""
        return self._limiter.take(keys.query_budget(account), qps * QUERY_SAFETY, now, burst=1)

    def take_list(self, account: str, qps: float, now: float) -> float:
        """The same for a page of the account's task list, on the lists' own share (`workers/watch.py`)."""
        return self._limiter.take(keys.list_budget(account), qps * QUERY_SAFETY, now, burst=1)
