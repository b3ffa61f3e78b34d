"""Faults on demand: each fires by probability (from the profile or `POST /_sim/config`), or by a trigger word
in the prompt: `sim:NAME` fires every time, `sim:NAME:once` only the first time for that prompt (so a client's
retry of the same request succeeds). Query and download faults read the trigger from the task's prompt.

What the simulator does not know it refuses, so a test cannot switch on a fault that silently never fires: an
unknown fault name (profile, `POST /_sim/config`) or a probability outside [0, 1] is a `ValueError`, and a
create whose prompt holds an unknown trigger word (`sim:` followed by anything but a fault name, optionally
`:once`) is answered 400 naming it. `FaultPlan.fired` counts every fault that fired (`GET /_sim/counters`
reports it as `faults_fired`), so a test can check that each fault it names did fire.

| name                | where     | what the client sees                                                  |
| ------------------- | --------- | --------------------------------------------------------------------- |
| create_500          | create    | 500 InternalError, no task created                                    |
| create_503          | create    | 503 ModelServingError, no task created                                |
| create_slow         | create    | the answer comes after `slow_response_s` (past a client timeout); the task exists |
| create_hang         | create    | no task is created, and a 504 comes only after 4 x `slow_response_s` (a request |
|                     |           | lost on its way in: the client times out not knowing)                  |
| create_drop_before  | create    | the connection drops mid-answer; no task was created                  |
| create_drop_after   | create    | the connection drops mid-answer; the task WAS created                 |
| create_malformed    | create    | 200 with truncated JSON; the task WAS created                         |
| create_inspection   | create    | 400 DataInspectionFailed                                              |
| create_ip_infringement | create | 400 IPInfringementSuspect (input moderation), no task created         |
| burst               | create    | 429 Throttling.BurstRate                                              |
| query_500 / query_503 | query   | 500 InternalError / 503 ModelServingError                             |
| query_slow          | query     | the answer comes after `slow_response_s`                              |
| query_drop          | query     | the connection drops mid-answer                                       |
| query_malformed     | query     | 200 with truncated JSON                                               |
| query_429           | query     | 429 Throttling                                                        |
| list_500            | list      | `GET /tasks` answers 500 InternalError (by probability only: a list   |
|                     |           | has no prompt to carry a trigger word)                                |
| cancel_429          | cancel    | 429 Throttling; the task is not cancelled                             |
| cancel_503          | cancel    | 503 ModelServingError; the task is not cancelled                      |
| cancel_refused      | cancel    | 400 UnsupportedOperation although the task is PENDING (as if it had   |
|                     |           | started between the client's query and its cancel)                    |
| task_failed         | task      | the task ends FAILED with InternalError.Algo                          |
| task_timeout        | task      | the task ends FAILED with InternalError.Timeout                       |
| task_inspection     | task      | the task ends FAILED with DataInspectionFailed (output moderation)    |
| task_ip_infringement | task     | the task ends FAILED with IPInfringementSuspect (output moderation)   |
| task_invalid_parameter | task   | the task ends FAILED with InvalidParameter, a message and task_metrics |
| task_partial        | task      | n > 1: some sub-images fail with InternalError.Timeout, the rest succeed |
| task_expire         | task      | queries answer UNKNOWN as soon as the task ends (the list still shows it) |
| task_unknown_flap   | task      | the task's first 2 queries answer UNKNOWN, then the truth (RUNNING, ...) |
| task_long           | task      | the task runs 10 times its drawn duration (past a client's deadline: the |
|                     |           | deadline races of a task that succeeds just before it, or runs on after) |
| sync_drop           | sync call | the task runs and SUCCEEDS (billed), but the connection drops before |
|                     |           | the answer: the client cannot know it was made (sync endpoint only)   |
| url_fail_once       | download  | the first download of each result URL gets 503, later ones succeed    |
| url_expired         | download  | the result URL is already expired: 403 with OSS's XML error           |
| url_wrong_bytes     | download  | 200 declared `image/png` whose bytes are an HTML page (a proxy's)     |
| url_unparseable     | download  | the result URL reads as the allowed host to urllib but holds a tab     |
|                     |           | (`http://evil.example\t@host/...`), which httpx refuses to parse       |
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping

FAULTS = frozenset(
    {
        "create_500",
        "create_503",
        "create_slow",
        "create_hang",
        "create_drop_before",
        "create_drop_after",
        "create_malformed",
        "create_inspection",
        "create_ip_infringement",
        "burst",
        "query_500",
        "query_503",
        "query_slow",
        "query_drop",
        "query_malformed",
        "query_429",
        "list_500",
        "cancel_429",
        "cancel_503",
        "cancel_refused",
        "task_failed",
        "task_timeout",
        "task_inspection",
        "task_ip_infringement",
        "task_invalid_parameter",
        "task_partial",
        "task_expire",
        "task_unknown_flap",
        "task_long",
        "sync_drop",
        "url_fail_once",
        "url_expired",
        "url_unparseable",
        "url_wrong_bytes",
    }
)

#: `sim:` then a word, optionally `:` and a modifier. Any such word must name a fault (`check_triggers`).
_TRIGGER = re.compile(r"sim:(\w+)(?::(\w+))?")
MODIFIERS = frozenset({"once"})


def _known() -> str:
    return ", ".join(sorted(FAULTS))


def check_probabilities(probabilities: Mapping[str, object]) -> dict[str, float]:
    """The probabilities as floats; `ValueError` naming any unknown fault or value that is not in [0, 1]."""
    if not isinstance(probabilities, Mapping):
        raise ValueError(f"faults must map fault names to probabilities, got {probabilities!r}")
    unknown = set(probabilities) - FAULTS
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {_known()}")
    checked: dict[str, float] = {}
    for name, value in probabilities.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"fault {name} needs a probability in [0, 1], got {value!r}")
        checked[name] = float(value)
    return checked


def check_triggers(prompt: str) -> None:
    """`ValueError` naming every trigger word of `prompt` that is not `sim:NAME` or `sim:NAME:once` for a
    known fault NAME."""
    unknown = [m[0] for m in _TRIGGER.finditer(prompt) if m[1] not in FAULTS or (m[2] and m[2] not in MODIFIERS)]
    if unknown:
        raise ValueError(
            f"unknown fault trigger {', '.join(unknown)} in the prompt: use sim:NAME or sim:NAME:once "
            f"with NAME one of {_known()}"
        )


class FaultPlan:
    """Decides whether a fault fires, and counts every fault it fired."""

    def __init__(self, probabilities: Mapping[str, object], rng: random.Random) -> None:
        self.probabilities = check_probabilities(probabilities)
        self.rng = rng
        self.fired: Counter[str] = Counter()
        self._once_seen: set[tuple[str, str]] = set()

    def update(self, probabilities: Mapping[str, object]) -> None:
        """Change some probabilities (the others stay); what fired so far stays counted."""
        self.probabilities = {**self.probabilities, **check_probabilities(probabilities)}

    def fires(self, name: str, prompt: str = "") -> bool:
        """True when `name` fires for a request or task with this prompt; counted when it does."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {_known()}")
        hit = self._triggered(name, prompt) or self.rng.random() < self.probabilities.get(name, 0.0)
        if hit:
            self.fired[name] += 1
        return hit

    def _triggered(self, name: str, prompt: str) -> bool:
        for match in _TRIGGER.finditer(prompt):
            if match[1] != name:
                continue
            if match[2] != "once":
                return True
            if (name, prompt) not in self._once_seen:
                self._once_seen.add((name, prompt))
                return True
        return False
