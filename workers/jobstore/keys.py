"""Every Redis key genq uses, built here and used only inside `workers/jobstore/` and `workers/quota/`.

A job is named by its *ref*, `{batch_id}/{job_id}` (`workers/refs.py`). "purged" in the TTL column: the key has no
TTL of its own, and the purge (`JobStore.purge`, run by beat and by `genq purge`) removes it once its job or batch
ended more than `retention_s` ago (`docs/architecture.md`, "Retention").

| key                                    | type       | TTL    | holds                                                |
| -------------------------------------- | ---------- | ------ | ---------------------------------------------------- |
| `genq:job:{ref}`                       | hash       | purged | the job record (`workers/job.py` lists the fields)   |
| `genq:batch:{batch_id}`                | hash       | purged | batch meta and counters: `total`, `terminal`,        |
|                                        |            |        | `rejected`, `n:{status}` per status, `purged`,       |
|                                        |            |        | `sealed`, ... (one never sealed, like the request    |
|                                        |            |        | stream's, stays: its counters are small)             |
| `genq:batch:{batch_id}:jobs`           | sorted set | purged | job ids of the batch, scored by source line number   |
|                                        |            |        | (a purged job leaves it)                             |
| `genq:batch:{batch_id}:rejected`       | hash       | purged | line -> JSON record of rejected input: field, reason |
| `genq:batches`                         | sorted set | purged | batch ids scored by creation time (a purged batch    |
|                                        |            |        | leaves it)                                           |
| `genq:finished`                        | sorted set | none   | refs of terminal jobs, scored by when they ended:    |
|                                        |            |        | what the purge reads (revived or purged: gone)       |
| `genq:batches:done`                    | sorted set | none   | ids of sealed, finished batches, scored by `done_at` |
|                                        |            |        | (reopened, given a job, or purged: gone)             |
| `genq:due`                             | sorted set | none   | job refs scored by when their next action is due     |
| `genq:events` (setting)                | stream     | none   | CloudEvents of terminal jobs and finished batches,   |
|                                        |            |        | trimmed to `event_stream_maxlen`                     |
| `genq:paused`                          | hash       | none   | account -> JSON {code, message, at}: paused scopes   |
| `genq:counts`                          | hash       | none   | status -> number of jobs in it, over all batches     |
|                                        |            |        | (purged jobs still counted)                          |
| `genq:inflight`                        | hash       | none   | model -> tasks submitted or running upstream         |
| `genq:task:{task_id}`                  | string     | 48 h   | the ref of the job that owns an upstream task (taken |
|                                        |            |        | with SET NX only: an owner is never replaced); also  |
|                                        |            |        | purged with its job                                  |
| `genq:creating:{account}:{model}`      | sorted set | none   | job refs whose create is sent and unanswered, scored |
|                                        |            |        | by when it was sent (reconcile.py waits on these);   |
|                                        |            |        | trimmed to the last hour                             |
| `genq:creating:{account}:{model}:lost` | set        | none   | those of them whose answer is known lost (no wait)   |
| `genq:webhook:dead`                    | stream     | none   | events never delivered, each with its reason, capped |
|                                        |            |        | at `webhook_dead_maxlen` (`webhook_outbox.py`)       |
| `genq:webhook:out:{entry}`             | hash       | none   | an event waiting for webhook delivery, by its entry  |
|                                        |            |        | id in `genq:events`: event, attempts, first_at,      |
|                                        |            |        | error (at most `webhook_outbox_max` of them)         |
| `genq:webhook:due`                     | sorted set | none   | entry ids of waiting events, scored by their next    |
|                                        |            |        | try (while a try runs: when its lease ends)          |
| `genq:webhook:collect`                 | string     | 30 s   | lock of the one collector reading `genq:events`      |
| `genq:wait:{model}`                    | sorted set | none   | accepted job refs waiting for a slot, scored by      |
|                                        |            |        | priority band * 1e12 + fair position (admission.py)  |
| `genq:wait:{model}:clock`              | string     | none   | the fair position of the last job admitted           |
| `genq:slots:{account}:{model}`         | sorted set | none   | job refs holding a slot, scored by lease expiry      |
| `genq:rate:{account}:{model}`          | string     | ~1 s   | GCRA arrival time of the scope's next create         |
| `genq:cooldown:{account}:{model}`      | hash       | 1 h    | 429 pause and AIMD factor of the scope's submit rate |
| `genq:qbudget:{account}`               | string     | ~1 s   | GCRA arrival time of the account's next query        |
| `genq:qbudget:{account}:lists`         | string     | ~1 s   | the same for its task lists (their reserved share)   |
| `genq:durations:{account}:{model}:run` | list       | 7 d    | "at:seconds" of the scope's last 64 task runs, and   |
| `genq:durations:{account}:{model}:queue`| list      | 7 d    | of their waits in the service's queue (durations.py) |
| `genq:watch:{account}`                 | hash       | ~30 s  | the account's task-list watcher: `token` and `round` |
|                                        |            |        | of the one running, `ok_at` of its last good round,  |
|                                        |            |        | `sent` polls (quota/watch_board.py)                  |
| `genq:billed:{day}`                    | hash       | 40 d   | `{account}|{model}` -> units billed on that UTC day  |
|                                        |            |        | (`workers/billing.py`)                               |
| `genq:spend:batch:{batch_id}`           | hash       | 40 d   | a batch's spending ledger: `committed_u`/`_m`, its   |
|                                        |            |        | cap `cap_u`/`cap_m`, `reached`, `j:{ref}` = the      |
|                                        |            |        | job's reservation "units money" (quota/spend.py)     |
| `genq:spend:day:{day}:{account}`       | hash       | 40 d   | an account's ledger for one UTC day (the same)       |
| `genq:held:{batch_id}`                 | sorted set | none   | `model|ref` of the batch's jobs held out of their    |
|                                        |            |        | wait queue by its cap, scored as they waited there   |
| `genq:held`                            | set        | none   | ids of the batches that hold jobs (the sweep's view) |
| `genq:requests` (setting)              | stream     | none   | requests of upstream stages (`request_inbox.py`);    |
|                                        |            |        | trimmed by their producers (`docs/requests.md`)      |
| `genq:requests:answered:{entry}`       | string     | 7 d    | a request entry already answered with a rejection    |
| `genq:requests:dead`                   | stream     | none   | entries given up after repeated failures, capped at  |
|                                        |            |        | 10,000 (`request_inbox.py`)                          |

Celery's own keys (the broker queues, `unacked`, `unacked_index`) are kombu's and live beside these.
"""

from __future__ import annotations

PREFIX = "genq"
DUE = f"{PREFIX}:due"
BATCHES = f"{PREFIX}:batches"
BATCHES_DONE = f"{PREFIX}:batches:done"
FINISHED = f"{PREFIX}:finished"
PAUSED = f"{PREFIX}:paused"
COUNTS = f"{PREFIX}:counts"
INFLIGHT = f"{PREFIX}:inflight"
WEBHOOK_DEAD = f"{PREFIX}:webhook:dead"
REQUESTS_DEAD = f"{PREFIX}:requests:dead"
WEBHOOK_DUE = f"{PREFIX}:webhook:due"
WEBHOOK_COLLECT_LOCK = f"{PREFIX}:webhook:collect"
WEBHOOK_GROUP = "genq-webhook"
#: The field of a batch's hash naming its own webhook (`genq batch --webhook`).
BATCH_WEBHOOK_FIELD = "webhook_url"
TASK_OWNER_TTL_S = 48 * 3600


def job(ref: str) -> str:
    return f"{PREFIX}:job:{ref}"


def batch(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_rejected(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:rejected"


def task_owner(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def creating(account: str, model: str) -> str:
    return f"{PREFIX}:creating:{account}:{model}"


def creating_lost(account: str, model: str) -> str:
    return f"{PREFIX}:creating:{account}:{model}:lost"


def webhook_outbox(entry_id: str) -> str:
    return f"{PREFIX}:webhook:out:{entry_id}"


def billed(day: str) -> str:
    return f"{PREFIX}:billed:{day}"


def spend_batch(batch_id: str) -> str:
    return f"{PREFIX}:spend:batch:{batch_id}"


def spend_day(day: str, account: str) -> str:
    return f"{PREFIX}:spend:day:{day}:{account}"


HELD_BATCHES = f"{PREFIX}:held"


def held(batch_id: str) -> str:
    return f"{PREFIX}:held:{batch_id}"


def wait_queue(model: str) -> str:
    return f"{PREFIX}:wait:{model}"


def wait_clock(model: str) -> str:
    return f"{PREFIX}:wait:{model}:clock"


def slots(account: str, model: str) -> str:
    return f"{PREFIX}:slots:{account}:{model}"


def submit_rate(account: str, model: str) -> str:
    return f"{PREFIX}:rate:{account}:{model}"


def cooldown(account: str, model: str) -> str:
    return f"{PREFIX}:cooldown:{account}:{model}"


def query_budget(account: str) -> str:
    return f"{PREFIX}:qbudget:{account}"


def durations(account: str, model: str, what: str) -> str:
    """`what`: "run" or "queue"."""
    return f"{PREFIX}:durations:{account}:{model}:{what}"


def list_budget(account: str) -> str:
    return f"{PREFIX}:qbudget:{account}:lists"


def watch(account: str) -> str:
    return f"{PREFIX}:watch:{account}"


def request_answered(entry_id: str) -> str:
    return f"{PREFIX}:requests:answered:{entry_id}"
