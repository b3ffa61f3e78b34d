"""The submit -> poll -> finalize stages on the memory store, quota and bucket (and the same bodies over Redis),
against a scripted DashScope behind httpx's `MockTransport`, on a virtual clock: the stage logic in under a
second, no network.

The same chains run over real Redis, S3 and the simulator in `tests/integration/test_stages.py` and
`test_outcomes.py`; these take the cases whose answers are easiest to script exactly (a lost create, a refused
key, a 429, an S3 outage) and check what was recorded, sent upstream and stored.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from config.settings import Settings
from producer.batch import enqueue_rows, new_job
from producer.csv_source import CsvRow
from tests.stage_runner import STAGES, VirtualClock, run
from workers import admission, control
from workers import sweep as sweep_module
from workers.admission import dispatch_all
from workers.bucket import MemoryBucket
from workers.claimed import run_stage
from workers.dashscope import DashScopeClient
from workers.dashscope.protocol import upstream_epoch
from workers.finalize import finalize
from workers.job import Action, Job, Next, Status
from workers.jobstore import JobStore, MemoryJobStore, RedisJobStore
from workers.poll import poll
from workers.quota.quota import Quota, Scope
from workers.quota.spend import Cap, MemorySpend, Reserved, batch_ledger
from workers.requests import GenerationRequest
from workers.runtime import Runtime
from workers.submit import submit

BASE_URL = "https://dashscope.example/api/v1"
RESULT_HOST = "dashscope-result-bj.oss-cn-beijing.aliyuncs.com"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MODEL = "wan2.5-t2i-preview"  # the default model
#: A scripted answer: (status, body), (status, body, headers), or an exception the transport raises.
Answer = tuple[int, dict[str, Any]] | tuple[int, dict[str, Any], dict[str, str]] | Exception


@dataclass
class Upstream:
    """DashScope as scripted: creates answer from `create_answers` (then make a task), each task's queries
    answer its statuses in turn (the last one repeats), and every request is counted."""

    create_answers: deque[Answer] = field(default_factory=deque)
    statuses: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "SUCCEEDED"])
    query_answers: deque[Answer] = field(default_factory=deque)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_ms: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    lose_answers: int = 0  # creates whose task is made but whose answer is lost (the read times out)
    clock: Callable[[], float] = time.time
    on_query: Callable[[], None] = lambda: None  # runs while a query is answered (to let time pass)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        self.calls.append(f"{request.method} {path}")
        if request.method == "POST" and path.endswith("image-synthesis"):
            return self._answer(self.create_answers, self._create)
        if request.method == "GET" and path == "/tasks":
            listed = [{"task_id": t, "gmt_create": ms} for t, ms in self.created_ms.items()]
            return httpx.Response(200, json={"data": listed, "total_page": 1})
        if request.method == "POST" and path.endswith("/cancel"):
            task = self.tasks[path.split("/")[2]]
            if task["answers"][0] != "PENDING":
                return httpx.Response(400, json={"code": "UnsupportedOperation", "message": "not PENDING"})
            task["answers"] = ["CANCELED"]
            return httpx.Response(200, json={"request_id": "r"})
        task_id = path.split("/")[2]
        self.on_query()
        return self._answer(self.query_answers, lambda: self._query(task_id))

    def _answer(self, scripted: deque[Answer], otherwise: Callable[[], httpx.Response]) -> httpx.Response:
        if not scripted:
            return otherwise()
        answer = scripted.popleft()
        if isinstance(answer, Exception):
            raise answer
        status, body, *headers = answer
        return httpx.Response(status, json=body, headers=headers[0] if headers else None)

    def _create(self) -> httpx.Response:
        task_id = f"task-{len(self.tasks) + 1}"
        self.tasks[task_id] = {"answers": list(self.statuses)}
        self.created_ms[task_id] = int(self.clock() * 1000)
        if self.lose_answers:
            self.lose_answers -= 1
            raise httpx.ReadTimeout("the answer never came")
        return httpx.Response(200, json={"output": {"task_id": task_id, "task_status": "PENDING"}, "request_id": "r"})

    def _query(self, task_id: str) -> httpx.Response:
        answers = self.tasks[task_id]["answers"]
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        output: dict[str, Any] = {"task_id": task_id, "task_status": status}
        if status == "SUCCEEDED":
            output["results"] = [{"url": f"https://{RESULT_HOST}/{task_id}/{i}.png"} for i in range(2)]
            output.update(submit_time="2026-12-02 10:00:00.000", end_time="2026-12-02 10:00:20.000")
        if status == "FAILED":
            output.update(code="InternalError.Algo", message="the model failed")
        return httpx.Response(200, json={"output": output, "usage": {"image_count": 2}, "request_id": "r"})

    def creates(self) -> int:
        return sum(1 for call in self.calls if call.endswith("image-synthesis"))


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def clock(upstream: Upstream) -> VirtualClock:
    virtual = VirtualClock()
    upstream.clock = virtual
    return virtual


@pytest.fixture(params=["memory", "redis"])
def rt(upstream: Upstream, clock: VirtualClock, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """The stages' runtime over the memory store and quota, or (the same bodies) over Redis."""
    settings = Settings(dashscope_base_url=BASE_URL, http_timeout_s=2.0, submit_max_attempts=3)
    store: JobStore = MemoryJobStore()
    quota = Quota.memory()
    if request.param == "redis":
        settings = settings.model_copy(update={"redis_url": request.getfixturevalue("redis_url")})
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        store, quota = RedisJobStore(client, event_stream=settings.event_stream), Quota.redis(client)
    api = httpx.Client(transport=httpx.MockTransport(upstream.handle))
    images = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))
    )
    yield Runtime(
        settings=settings,
        store=store,
        dashscope=DashScopeClient(api, base_url=BASE_URL, api_key="sk-test"),
        results=MemoryBucket(),
        downloads=images,
        quota=quota,
        clock=clock,
        rng=random.Random(7),
    )


def enqueue(rt: Runtime, *prompts: str, batch_id: str = "b") -> list[Next]:
    sent: list[Next] = []
    rows = [CsvRow(i + 2, {"id": f"j{i}", "prompt": p}) for i, p in enumerate(prompts)]
    enqueue_rows(
        rt.store,
        rt.settings,
        batch_id,
        rows,
        source="test",
        send=lambda s: sent.append(s) if s else None,
        quota=rt.quota,
    )
    return sent


def follow(rt: Runtime, clock: VirtualClock, steps: list[Next]) -> None:
    """Run every step as Celery would, in the order they fall due, jumping the clock to each due time; all of
    them end."""
    assert run(rt, steps, timeout_s=10, clock=clock) == []


def events(rt: Runtime) -> list[dict[str, Any]]:
    """The events as a consumer of the store reads them (over Redis: its stream, read by a client of our own)."""
    if isinstance(rt.store, MemoryJobStore):
        return rt.store.events()
    observer = redis.Redis.from_url(rt.settings.redis_url, decode_responses=True)
    return [json.loads(fields["event"]) for _, fields in observer.xrange(rt.settings.event_stream)]


def test_a_job_goes_from_submit_to_stored_images_and_one_event(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A job is created once, polled until SUCCEEDED, and both images land in the bucket with their sha256 and a
    manifest; one succeeded event and one batch event are emitted."""
    follow(rt, clock, enqueue(rt, "a fox"))
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.SUCCEEDED
    assert upstream.creates() == 1
    bucket = rt.results
    assert isinstance(bucket, MemoryBucket)
    assert [o["key"] for o in job.objects] == ["b/j0/0.png", "b/j0/1.png"]
    assert all(
        bucket.objects[o["key"]].data == PNG and o["sha256"] == hashlib.sha256(PNG).hexdigest() for o in job.objects
    )
    manifest = bucket.get_json("b/j0/manifest.json")
    assert manifest is not None and manifest["task_id"] == job.task_id
    assert [e["type"] for e in events(rt)] == ["genq.job.succeeded", "genq.batch.finished"]


def test_a_second_delivery_of_the_submit_message_creates_nothing(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """The same submit message delivered twice makes one task: the second finds the attempt moved on."""
    [step] = enqueue(rt, "a fox")
    follow(rt, clock, [step, step])
    assert upstream.creates() == 1
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.SUCCEEDED


def test_a_lost_create_is_reconciled_not_sent_again(rt: Runtime, clock: VirtualClock, upstream: Upstream) -> None:
    """A create whose answer never comes (the read timed out after the service made the task) is settled by
    the task list: the job adopts that task and no second create is sent."""
    upstream.lose_answers = 1
    [submit_step] = enqueue(rt, "a fox")
    after_loss = run_stage(submit, rt, submit_step.ref, submit_step.attempt)
    lost = rt.store.get("b/j0")
    assert lost is not None and lost.create_pending and list(upstream.tasks) == ["task-1"]
    follow(rt, clock, [after_loss] if after_loss else [])
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.SUCCEEDED and job.task_id == "task-1"
    assert upstream.creates() == 1 and "GET /tasks" in upstream.calls
    assert rt.store.creates_unresolved("default", job.request.model) == []


def test_two_deliveries_that_both_read_the_job_create_one_task(
    rt: Runtime, clock: VirtualClock, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two deliveries of one submit message that both read the job before either claimed it make one task: the
    claim is a compare-and-set on the attempt, so the later one is refused. (The store's `claim` is wrapped only
    to run the rival delivery at that moment; the store itself is the real one.)"""
    [step] = enqueue(rt, "a fox")
    real_claim = rt.store.claim
    rival: list[Next | None] = []

    def claim_after_a_rival(*args: Any, **kwargs: Any) -> Any:
        if not rival:
            rival.append(None)  # the rival read the job as this delivery did, and claims first
            rival[0] = run_stage(submit, rt, step.ref, step.attempt)
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(rt.store, "claim", claim_after_a_rival)
    mine = run_stage(submit, rt, step.ref, step.attempt)
    monkeypatch.undo()
    assert mine is None and rival[0] is not None and rival[0].action is Action.POLL
    assert upstream.creates() == 1


def test_a_throttled_create_waits_and_is_not_counted_as_a_submit(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A 429 on the create pauses the scope for every worker for at least its Retry-After, the job comes back
    after it, costs no submit, and then succeeds."""
    throttled = (429, {"code": "Throttling.RateQuota", "message": "slow down"}, {"Retry-After": "7"})
    upstream.create_answers.append(throttled)
    [step] = enqueue(rt, "a fox")
    again = run_stage(submit, rt, step.ref, step.attempt)
    assert again is not None and again.action is Action.SUBMIT and again.delay_s >= 7
    assert rt.quota.cooldown(Scope("default", MODEL), clock.now).wait_s >= 7
    follow(rt, clock, [again])
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.SUCCEEDED
    assert (job.submits, job.throttles) == (1, 1)


def test_a_refused_key_pauses_the_account_and_fails_the_job_once(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """An InvalidApiKey answer fails the job with that code, pauses the account for every job, and says so in
    one event; nothing is left marked as a create in flight."""
    upstream.create_answers.append((401, {"code": "InvalidApiKey", "message": "Invalid API-key provided."}))
    follow(rt, clock, enqueue(rt, "a fox"))
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.FAILED and job.error_code == "InvalidApiKey"
    assert not job.create_pending
    assert list(rt.store.paused_accounts()) == ["default"]
    assert [e["type"] for e in events(rt)].count("genq.account.paused") == 1


def test_a_transient_task_failure_is_submitted_again_and_then_succeeds(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A task FAILED with a transient code makes the job create a second task, which succeeds."""
    upstream.statuses = ["RUNNING", "FAILED"]
    [step] = enqueue(rt, "a fox")
    first = run_stage(submit, rt, step.ref, step.attempt)
    upstream.statuses = ["RUNNING", "SUCCEEDED"]
    follow(rt, clock, [first] if first else [])
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.SUCCEEDED and job.task_id == "task-2"
    assert upstream.creates() == 2


def test_a_pending_task_at_its_deadline_is_canceled_and_times_out(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A task still PENDING when the job's deadline passes is cancelled upstream (nothing billed) and the job
    ends timed_out; nothing is created again."""
    upstream.statuses = ["PENDING"]
    [step] = enqueue(rt, "a fox")
    polling = run_stage(submit, rt, step.ref, step.attempt)
    job = rt.store.get("b/j0")
    assert job is not None
    clock.now = job.deadline_at + 1
    follow(rt, clock, [polling] if polling else [])
    ended = rt.store.get("b/j0")
    assert ended is not None and ended.status is Status.TIMED_OUT and ended.task_status == "CANCELED"
    assert any(call.endswith("/cancel") for call in upstream.calls) and upstream.creates() == 1


def test_a_bucket_outage_is_waited_out_and_the_paid_images_are_stored(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """While the bucket refuses every write, finalize retries with backoff (the job stays downloading); once
    it is back, the images are stored and the job succeeds."""
    bucket = rt.results
    assert isinstance(bucket, MemoryBucket)
    bucket.failing = True
    steps = enqueue(rt, "a fox")
    rt.send = lambda step: None  # one job: nothing else is admitted
    queue = list(steps)
    for _ in range(40):
        step = queue.pop(0)
        clock.now += step.delay_s
        following = run_stage(STAGES[step.action], rt, step.ref, step.attempt)
        if following is None:
            break
        queue.append(following)
        job = rt.store.get("b/j0")
        if job is not None and job.finalize_errors >= 3:
            break
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.DOWNLOADING and job.finalize_errors >= 3
    bucket.failing = False
    follow(rt, clock, queue)
    done = rt.store.get("b/j0")
    assert done is not None and done.status is Status.SUCCEEDED and len(done.objects) == 2
    assert isinstance(bucket, MemoryBucket) and sorted(bucket.objects) == [
        "b/j0/0.png",
        "b/j0/1.png",
        "b/j0/manifest.json",
    ]


def submitted(rt: Runtime, clock: VirtualClock, prompt: str = "a fox") -> Next:
    """Enqueue one job and run its submit: the poll it schedules."""
    [step] = enqueue(rt, prompt)
    polling = run_stage(submit, rt, step.ref, step.attempt)
    assert polling is not None and polling.action is Action.POLL
    return polling


@pytest.mark.parametrize(
    ("answer", "pauses"),
    [
        ((401, {"code": "InvalidApiKey", "message": "Invalid API-key provided."}), True),
        ((404, {"code": "NotFound", "message": "a proxy's page"}), False),
    ],
)
def test_a_refused_query_never_fails_a_task_that_may_still_bill(
    rt: Runtime, clock: VirtualClock, upstream: Upstream, answer: Answer, pauses: bool
) -> None:
    """A query refused by the key (the account is paused) or by an intermediary says nothing about the task,
    which may run and bill: the job is asked about again every `overdue_poll_s`, and its result is stored once
    an answer comes."""
    polling = submitted(rt, clock)
    upstream.query_answers.append(answer)
    again = run_stage(poll, rt, polling.ref, polling.attempt)
    job = rt.store.get(polling.ref)
    assert job is not None and not job.terminal and job.poll_errors == 1
    assert again is not None and again.action is Action.POLL and again.delay_s == rt.settings.overdue_poll_s
    assert ("default" in rt.store.paused_accounts()) is pauses
    follow(rt, clock, [again])
    done = rt.store.get(polling.ref)
    assert done is not None and done.status is Status.SUCCEEDED and len(done.objects) == 2


def test_failing_queries_back_off_then_slow_down_and_a_429_waits_its_retry_after(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """Queries that fail with 5xx are asked again after a backoff, and every `overdue_poll_s` once
    `poll_max_errors` failed in a row; a 429 on a query waits its Retry-After; the first answer resets the
    count, and the job succeeds."""
    polling = submitted(rt, clock)
    failing = (500, {"code": "InternalError", "message": "try later"})
    upstream.query_answers.extend([failing] * rt.settings.poll_max_errors)
    step: Next | None = polling
    delays = []
    for _ in range(rt.settings.poll_max_errors):
        assert step is not None
        clock.now += step.delay_s
        step = run_stage(poll, rt, step.ref, step.attempt)
        assert step is not None
        delays.append(step.delay_s)
    assert delays[-1] == rt.settings.overdue_poll_s and all(d < rt.settings.overdue_poll_s for d in delays[:-1])
    upstream.query_answers.append((429, {"code": "Throttling", "message": "slow"}, {"Retry-After": "3"}))
    assert step is not None
    clock.now += step.delay_s
    throttled = run_stage(poll, rt, step.ref, step.attempt)
    assert throttled is not None and throttled.delay_s == 3
    follow(rt, clock, [throttled])
    job = rt.store.get(polling.ref)
    assert job is not None and job.status is Status.SUCCEEDED and job.poll_errors == 0 and job.throttles == 1


def test_unknown_is_believed_only_after_four_answers_over_a_minute(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A young task answered UNKNOWN is asked again until it was said 4 times over at least `unknown_confirm_s`;
    a RUNNING answer in between starts the count again, and a task that then succeeds is stored."""
    upstream.statuses = ["UNKNOWN", "UNKNOWN", "UNKNOWN", "RUNNING", "UNKNOWN", "UNKNOWN", "UNKNOWN", "SUCCEEDED"]
    follow(rt, clock, enqueue(rt, "a fox"))
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.SUCCEEDED
    upstream.statuses = ["UNKNOWN"]
    started = clock.now
    follow(rt, clock, enqueue(rt, "a hare", batch_id="c"))
    gone = rt.store.get("c/j0")
    assert gone is not None and gone.status is Status.EXPIRED and gone.error_code == "TaskUnknown"
    assert gone.unknown_seen == 4 and clock.now - started >= rt.settings.unknown_confirm_s


def test_unknown_said_four_times_within_the_window_is_not_yet_believed(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """Four UNKNOWN answers that come sooner than `unknown_confirm_s` apart in all do not end the job; once the
    answers span the window it expires. A RUNNING answer in between forgets the first UNKNOWN's time."""
    upstream.statuses = ["UNKNOWN", "RUNNING", "UNKNOWN"]
    step: Next | None = submitted(rt, clock)
    seen = []
    for _ in range(3):
        assert step is not None
        clock.now += 1.0
        step = run_stage(poll, rt, step.ref, step.attempt)
        job = rt.store.get("b/j0")
        assert job is not None
        seen.append((job.unknown_seen, job.unknown_first_at))
    assert seen == [(1, seen[0][1]), (0, None), (1, clock.now)] and seen[0][1] is not None
    for _ in range(3):
        assert step is not None
        clock.now += 1.0
        step = run_stage(poll, rt, step.ref, step.attempt)
    job = rt.store.get("b/j0")
    assert job is not None and not job.terminal and job.unknown_seen == 4
    assert step is not None and job.unknown_first_at is not None
    clock.now = job.unknown_first_at + rt.settings.unknown_confirm_s
    run_stage(poll, rt, step.ref, step.attempt)
    gone = rt.store.get("b/j0")
    assert gone is not None and gone.status is Status.EXPIRED and gone.unknown_seen == 5


def test_a_task_running_at_its_deadline_is_waited_for_and_stored(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A task still RUNNING when the deadline passes cannot be cancelled and will be billed: the job turns
    overdue (one event), is never submitted again, and its result is stored when the task ends."""
    upstream.statuses = ["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    polling = submitted(rt, clock)
    job = rt.store.get(polling.ref)
    assert job is not None
    clock.now = job.deadline_at + 1
    overdue = run_stage(poll, rt, polling.ref, polling.attempt)
    assert overdue is not None and overdue.delay_s == rt.settings.overdue_poll_s
    assert rt.store.get(polling.ref).status is Status.OVERDUE  # type: ignore[union-attr]
    follow(rt, clock, [overdue])
    done = rt.store.get(polling.ref)
    assert done is not None and done.status is Status.SUCCEEDED and upstream.creates() == 1
    assert [e["type"] for e in events(rt)] == ["genq.job.overdue", "genq.job.succeeded", "genq.batch.finished"]


def test_the_detection_lag_counts_to_when_the_answer_arrived_as_the_results_record_it(
    rt: Runtime, clock: VirtualClock, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time passes while the query is answered and while the task's durations are kept (Redis round trips on a
    loaded machine): the detection lag observed ends at the answer, the instant the job records as `results_at`,
    so the metric and the records agree (the dashboard's truth is taken from the records)."""
    upstream.statuses = ["SUCCEEDED"]

    def time_passes() -> None:
        clock.now += 0.7

    upstream.on_query = time_passes
    keep = rt.durations.record

    def slow_keep(account: str, model: str, *, run_s: float | None, queue_s: float | None, now: float) -> None:
        time_passes()
        keep(account, model, run_s=run_s, queue_s=queue_s, now=now)

    monkeypatch.setattr(rt.durations, "record", slow_keep)
    scope = {"account": "default", "model": MODEL}
    before = REGISTRY.get_sample_value("genq_detection_lag_seconds_sum", scope) or 0.0
    follow(rt, clock, enqueue(rt, "a fox"))
    (job,) = rt.store.jobs("b")
    ended = upstream_epoch("2026-12-02 10:00:20.000")
    assert job.status is Status.SUCCEEDED and job.results_at is not None and ended is not None
    observed = (REGISTRY.get_sample_value("genq_detection_lag_seconds_sum", scope) or 0.0) - before
    assert observed == pytest.approx(job.results_at - ended, abs=1e-6)


def billed(account: str = "default", model: str = MODEL) -> float:
    """genq_billed_units_total of a scope, as this process counted it."""
    return REGISTRY.get_sample_value("genq_billed_units_total", {"account": account, "model": model}) or 0.0


def test_a_task_is_billed_once_when_two_deliveries_of_its_poll_see_it_succeed(
    rt: Runtime, clock: VirtualClock, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll re-sent while the first delivery still waits on its query (as the sweep re-sends a lapsed lease):
    both see SUCCEEDED, and the task's two billed images are counted once, by the delivery whose record took
    effect; the finalize, delivered twice, counts nothing more. (The client's `get_task` is wrapped only to run
    the rival delivery at that moment.)"""
    upstream.statuses = ["SUCCEEDED"]
    polling = submitted(rt, clock)
    before = billed()
    real_get_task = rt.dashscope.get_task
    rival: list[Next | None] = []

    def get_task_while_a_rival_polls(task_id: str) -> Any:
        if not rival:
            rival.append(None)
            clock.now += 1.0  # the first query is slow: the rival comes with the account's query budget back
            current = rt.store.get(polling.ref)
            assert current is not None
            rival[0] = run_stage(poll, rt, polling.ref, current.attempt)
        return real_get_task(task_id)

    monkeypatch.setattr(rt.dashscope, "get_task", get_task_while_a_rival_polls)
    mine = run_stage(poll, rt, polling.ref, polling.attempt)
    monkeypatch.undo()
    assert mine is None and rival[0] is not None and rival[0].action is Action.FINALIZE
    assert upstream.calls.count(f"GET /tasks/{rt.store.get(polling.ref).task_id}") == 2  # type: ignore[union-attr]
    assert billed() - before == 2
    for _ in range(2):
        run_stage(finalize, rt, rival[0].ref, rival[0].attempt)
    job = rt.store.get(polling.ref)
    assert job is not None and job.status is Status.SUCCEEDED
    assert billed() - before == 2


def test_a_threads_pool_worker_never_cancels_its_tasks_on_a_lost_broker_connection() -> None:
    """The call lane's threads pool cannot cancel a running task (Celery would stop the worker trying, on a Redis
    blip), and a synchronous call must not be cancelled anyway: for that pool the option is turned off at start,
    and left on for the stages' prefork pool."""
    from types import SimpleNamespace

    from celery import Celery

    from workers.tasks import _never_cancel_synchronous_calls

    for pool, cancels in (("threads", False), ("prefork", True)):
        app = Celery("check")
        app.conf.worker_cancel_long_running_tasks_on_connection_loss = True
        _never_cancel_synchronous_calls(sender=SimpleNamespace(pool_cls=pool, app=app))
        assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is cancels


# --- budget caps (workers/admission.py, workers/quota/spend.py) -----------------------------------------------
def test_a_batch_cap_admits_only_what_fits_holds_the_rest_and_a_raised_cap_lets_them_go_on(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """Five jobs of 2 images under a batch cap of 6 images: three tasks are created upstream and billed, the two
    others are held with the batch (no task), one cap-reached event says so; raising the cap to 10 admits them,
    and the batch's bill is 10 images with nothing created twice."""
    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=6))
    follow(rt, clock, enqueue_images(rt, 2, *(f"a fox {i}" for i in range(5))))
    assert upstream.creates() == 3 and rt.store.held("b") == 2
    assert sorted(j.status.value for j in rt.store.jobs("b")) == ["accepted"] * 2 + ["succeeded"] * 3
    ledger = rt.quota.spend.read(batch_ledger("b"))
    assert (ledger.committed_units, ledger.reached, ledger.reserved) == (6, True, 0)
    reached = [e for e in _cap_events(rt) if e["subject"] == "b"]
    assert len(reached) == 1 and reached[0]["data"]["scope"] == "batch"

    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=10))
    while rt.store.unhold("b"):
        pass
    sent: list[Next] = []
    dispatch_all(rt.store, rt.quota, rt.settings, lambda s: sent.append(s) if s else None)
    follow(rt, clock, sent)
    summary = rt.store.batch_summary("b")
    assert summary is not None and summary.counts == {"succeeded": 5} and summary.billed == {MODEL: 10}
    assert upstream.creates() == 5


def test_a_job_that_ends_unbilled_gives_its_reservation_back_to_a_held_one(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """Under a cap of 2 images, the first job's create is refused by moderation (nothing made, nothing billed),
    which gives back its reservation: the held job is admitted and succeeds, within the cap."""
    upstream.create_answers.append((400, {"code": "DataInspectionFailed", "message": "the input was refused"}))
    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=2))
    first = enqueue_images(rt, 2, "a fox", "a hare")
    assert rt.store.held("b") == 1
    follow(rt, clock, first)
    statuses = sorted(j.status.value for j in rt.store.jobs("b"))
    assert statuses == ["failed", "succeeded"] and rt.store.held("b") == 0
    assert rt.quota.spend.read(batch_ledger("b")).committed_units == 2


def test_an_account_cap_for_the_day_stops_admission_and_the_next_day_resumes_it(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A daily cap of 6 images on the account: of four two-image jobs, three are created today and the fourth
    waits in line (not failed, not created); the next UTC day's dispatch admits it; four tasks in all."""
    account = rt.settings.resolved_accounts()[0].model_copy(update={"daily_cap_units": 6.0})
    rt.settings = rt.settings.model_copy(update={"accounts": (account,)})
    follow(rt, clock, enqueue_images(rt, 2, *(f"a fox {i}" for i in range(4))))
    assert upstream.creates() == 3
    assert sorted(j.status.value for j in rt.store.jobs("b")) == ["accepted"] + ["succeeded"] * 3
    clock.now += 86400  # tomorrow (UTC): a new day's ledger
    sent: list[Next] = []
    dispatch_all(rt.store, rt.quota, rt.settings, lambda s: sent.append(s) if s else None, now=clock.now)
    follow(rt, clock, sent)
    summary = rt.store.batch_summary("b")
    assert summary is not None and summary.counts == {"succeeded": 4} and upstream.creates() == 4


def test_with_reject_a_job_over_the_cap_ends_failed_saying_why(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """`budget_on_cap = "reject"`: the job that does not fit ends failed with BudgetCapReached and a reason that
    names the cap and what is committed; nothing is created for it."""
    rt.settings = rt.settings.model_copy(update={"budget_on_cap": "reject"})
    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=2))
    follow(rt, clock, enqueue_images(rt, 2, "a fox", "a hare"))
    jobs = {j.job_id: j for j in rt.store.jobs("b")}
    assert jobs["j0"].status is Status.SUCCEEDED and jobs["j1"].status is Status.FAILED
    assert jobs["j1"].error_code == "BudgetCapReached" and "2 of 2 units committed" in (jobs["j1"].error_message or "")
    assert upstream.creates() == 1


def _cap_events(rt: Runtime) -> list[dict[str, Any]]:
    """The cap-reached events: in the Redis stream, or (memory quota) as the ledgers appended them."""
    spend = rt.quota.spend
    found = [json.loads(e) for e in spend.events] if isinstance(spend, MemorySpend) else events(rt)
    return [e for e in found if e.get("type") == "genq.budget.cap_reached"]


def enqueue_images(rt: Runtime, n: int, *prompts: str) -> list[Next]:
    """`enqueue`, each job asking for `n` images (the scripted service makes and bills 2 per task)."""
    sent: list[Next] = []
    rows = [CsvRow(i + 2, {"id": f"j{i}", "prompt": p, "n": str(n)}) for i, p in enumerate(prompts)]
    enqueue_rows(
        rt.store, rt.settings, "b", rows, source="test", send=lambda s: sent.append(s) if s else None, quota=rt.quota
    )
    return sent


class Killed(BaseException):
    """A worker process killed (SIGKILL) at a chosen point."""


def test_a_worker_killed_between_the_bill_and_its_settling_never_lets_a_cap_be_overshot(
    rt: Runtime, clock: VirtualClock, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a batch cap of 2 images, the first job's SUCCEEDED answer is recorded (billed 2) and its worker
    dies before settling the reservation; the finalize the sweep re-sends ends the job, and its reservation is
    kept as spent (what it cost is not known there), so the held job stays held: 2 billed, cap 2."""
    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=2))
    settle = rt.quota.spend.settle

    def killed_once(keys: Any, ref: str, *, units: float, money: float) -> int:
        if units > 0 and not killed:
            killed.append(ref)
            raise Killed("the worker died after recording the answer")
        return settle(keys, ref, units=units, money=money)

    killed: list[str] = []
    monkeypatch.setattr(rt.quota.spend, "settle", killed_once)
    steps = enqueue_images(rt, 2, "a fox", "a hare")
    with pytest.raises(Killed):
        run(rt, steps, timeout_s=5, clock=clock)
    job = rt.store.get("b/j0")
    assert job is not None and job.status is Status.DOWNLOADING and killed == ["b/j0"]
    follow(rt, clock, [Next(Action.FINALIZE, job.ref, job.attempt)])  # the sweep re-sends it
    summary = rt.store.batch_summary("b")
    assert summary is not None and summary.billed == {MODEL: 2} and rt.store.held("b") == 1
    assert upstream.creates() == 1 and rt.quota.spend.read(batch_ledger("b")).committed_units == 2


def test_a_cancel_answered_unknown_leaves_a_running_task_to_finish_and_bill(
    rt: Runtime, clock: VirtualClock, upstream: Upstream
) -> None:
    """A running task whose cancel is refused and whose status then reads UNKNOWN (the service cannot tell just
    now): the job is left as it is, saying so, and goes on to store its result; nothing is given back."""
    upstream.statuses = ["RUNNING", "RUNNING", "SUCCEEDED"]
    steps = enqueue_images(rt, 2, "a fox")
    left = run(rt, steps, timeout_s=5, clock=clock, until=lambda: _status(rt, "b/j0") == "running")
    upstream.query_answers.append((200, {"output": {"task_id": "task-1", "task_status": "UNKNOWN"}, "request_id": "r"}))
    report = control.cancel(rt, "b/j0")
    assert report.changed == [] and "UNKNOWN" in report.skipped["b/j0"]
    follow(rt, clock, left)
    assert _status(rt, "b/j0") == "succeeded"


def _status(rt: Runtime, ref: str) -> str:
    job = rt.store.get(ref)
    return job.status.value if job is not None else ""


def test_the_loser_of_an_admission_race_keeps_the_winners_reservation(rt: Runtime) -> None:
    """Dispatcher A reserves for a job first; dispatcher B (same account) reserves nothing new and admits it; A's
    admission is then refused: A gives back nothing the admitted job stands on, and the batch's ledger still
    holds the job's reservation (its bill will settle it)."""
    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=10))
    job = waiting_job(rt)
    now = time.time()
    first = admission.reserve_spend(rt.quota, rt.settings, job, "default", now)
    second = admission.reserve_spend(rt.quota, rt.settings, job, "default", now)
    assert first == Reserved((0, 1)) and second == Reserved(())
    assert admission.admit(rt.store, rt.settings, "b/j", "default", now=now, job=job) is not None  # B wins
    scope = Scope("default", job.request.model)
    assert admission.admit(rt.store, rt.settings, "b/j", "default", now=now, job=job) is None  # A loses
    admission._settle_lost_race(rt.store, rt.quota, scope, "b/j", admission._ledgers(job, "default", now, first))
    assert rt.quota.spend.reservations(batch_ledger("b")) == ["b/j"]
    assert rt.quota.spend.read(batch_ledger("b")).committed_units == 2


def test_the_sweep_puts_back_a_held_job_whose_batch_has_room(rt: Runtime) -> None:
    """A job held while its batch's ledger has room (the room freed just before the hold landed) is put back
    in line by the sweep, and admitted; once none is held, the batch leaves the sweep's index."""
    rt.quota.spend.set_cap(batch_ledger("b"), Cap(units=10))
    job = waiting_job(rt)
    assert rt.store.hold(job.request.model, "b/j") and rt.store.held_batches() == ["b"]
    assert sweep_module.unhold_with_room(rt) == 1 and rt.store.held("b") == 0
    sent: list[Next] = []
    dispatch_all(rt.store, rt.quota, rt.settings, lambda s: sent.append(s) if s else None)
    assert [s.ref for s in sent] == ["b/j"]
    sweep_module.unhold_with_room(rt)
    assert rt.store.held_batches() == []


def waiting_job(rt: Runtime) -> Job:
    """Job `b/j` (two images) created and waiting in its model's queue, admitted by nobody yet."""
    rt.store.open_batch("b", source="t")
    request = GenerationRequest(model=MODEL, prompt="a fox", size="1280*1280", n=2)
    rt.store.create_jobs([new_job("b/j", 2, request)])
    job = rt.store.get("b/j")
    assert job is not None and job.status is Status.ACCEPTED
    return job
