"""Faults on demand: each fires by probability (from the profile or `POST /_sim/config`), or by a trigger word
in the prompt: `sim:NAME` fires every time, `sim:NAME:once` only the first time for that prompt (so a client's
retry of the same request succeeds). Query and download faults read the trigger from the task's prompt.

| name                | where     | what the client sees                                                  |
| ------------------- | --------- | --------------------------------------------------------------------- |
| create_500          | create    | 500 InternalError, no task created                                    |
| create_503          | create    | 503 ModelServingError, no task created                                |
| create_slow         | create    | the answer comes after `slow_response_s` (past a client timeout); the task exists |
| create_drop_before  | create    | the connection drops mid-answer; no task was created                  |
| create_drop_after   | create    | the connection drops mid-answer; the task WAS created                 |
| create_malformed    | create    | 200 with truncated JSON; the task WAS created                         |
| create_inspection   | create    | 400 DataInspectionFailed                                              |
| burst               | create    | 429 Throttling.BurstRate                                              |
| query_500 / query_503 | query   | 500 InternalError / 503 ModelServingError                             |
| query_slow          | query     | the answer comes after `slow_response_s`                              |
| query_drop          | query     | the connection drops mid-answer                                       |
| query_malformed     | query     | 200 with truncated JSON                                               |
| query_429           | query     | 429 Throttling                                                        |
| task_failed         | task      | the task ends FAILED with InternalError.Algo                          |
| task_timeout        | task      | the task ends FAILED with InternalError.Timeout                       |
| task_inspection     | task      | the task ends FAILED with DataInspectionFailed (output moderation)    |
| task_partial        | task      | n > 1: some sub-images fail with InternalError.Timeout, the rest succeed |
| task_expire         | task      | queries answer UNKNOWN as soon as the task ends (the list still shows it) |
| url_fail_once       | download  | the first download of each result URL gets 503, later ones succeed    |
| url_expired         | download  | the result URL is already expired: 403 with OSS's XML error           |
"""

from __future__ import annotations

import random
import re
from collections import Counter

FAULTS = frozenset(
    {
        "create_500",
        "create_503",
        "create_slow",
        "create_drop_before",
        "create_drop_after",
        "create_malformed",
        "create_inspection",
        "burst",
        "query_500",
        "query_503",
        "query_slow",
        "query_drop",
        "query_malformed",
        "query_429",
        "task_failed",
        "task_timeout",
        "task_inspection",
        "task_partial",
        "task_expire",
        "url_fail_once",
        "url_expired",
    }
)

_TRIGGER = re.compile(r"sim:([a-z0-9_]+)(:once)?")


class FaultPlan:
    """Decides whether a fault fires, and counts every fault it fired."""

    def __init__(self, probabilities: dict[str, float], rng: random.Random) -> None:
        unknown = set(probabilities) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(sorted(FAULTS))}")
        self.probabilities = dict(probabilities)
        self.rng = rng
        self.fired: Counter[str] = Counter()
        self._once_seen: set[tuple[str, str]] = set()

    def fires(self, name: str, prompt: str = "") -> bool:
        """True when `name` fires for a request or task with this prompt; counted when it does."""
        hit = self._triggered(name, prompt) or self.rng.random() < self.probabilities.get(name, 0.0)
        if hit:
            self.fired[name] += 1
        return hit

    def _triggered(self, name: str, prompt: str) -> bool:
        for match in _TRIGGER.finditer(prompt):
            if match[1] != name:
                continue
            if not match[2]:
                return True
            if (name, prompt) not in self._once_seen:
                self._once_seen.add((name, prompt))
                return True
        return False
