"""The request stream: an upstream stage asks for images by adding entries to `genq:requests`.

`genq consume` reads the stream with a consumer group (`XREADGROUP`, at-least-once), so several consumers share
the work and an entry is acknowledged only once it is answered. The entries a dead consumer had read but not
answered are taken over with `XAUTOCLAIM` once they have been idle for `claim_idle_s`.

An entry has one field, `request`, holding a JSON object (`docs/requests.md`): `request_id` (required; the
idempotency key, also the job id), `prompt` and the CSV's other columns, optional `batch_id` (default
`GENQ_REQUEST_BATCH`), `priority` (0-9, taken when the batch first appears) and `metadata`.

- A valid request becomes a job `{batch_id}/{request_id}` waiting for a slot; the same request id again (a
  redelivery, or a producer that sent it twice) finds the job and creates nothing. Its result is the job's
  event on `genq:events`, which the stage downstream reads with its own consumer group, without polling genq.
- An invalid one is answered with one `genq.request.rejected` event carrying the field and the reason; a marker
  per stream entry, set in the same atomic step as the event, makes a redelivered entry answer nothing twice.
- The same request id with other content is rejected (`request_id`, "already names another request"): the
  id is the idempotency key, so it cannot also be a second job.
- No entry can stop the stage. Whatever an entry holds, handling it ends in a job or a rejection; a failure of
  ours while handling one entry answers that entry with `InternalError` and the rest of the read goes on. An
  entry delivered `MAX_DELIVERIES` times without an answer (it took its consumer down each time) is answered
  with `InternalError`, copied to the bounded dead-letter stream `genq:requests:dead`, and acknowledged.
- Back-pressure: while more than `max_waiting` accepted jobs wait for quota, the consumer reads nothing, so a
  flood of requests waits in the stream (where the producer can see it) instead of in genq.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog

from config.settings import Settings
from producer.batch import new_job
from workers import refs
from workers.admission import dispatch
from workers.errors import RequestInvalid
from workers.events import cloud_event
from workers.job import Next, Status
from workers.jobstore import JobStore, NewJob
from workers.jobstore.request_inbox import RequestInbox
from workers.quota.quota import Quota
from workers.requests import (
    Envelope,
    check_input_size,
    parse_json_int,
    shown,
    validate_envelope,
)

log = structlog.get_logger("genq.consume")

REQUEST_FIELD = "request"
#: Deliveries of one entry (reads and take-overs) before it is answered with `InternalError` and dead-lettered.
MAX_DELIVERIES = 5
#: Seconds the consumer waits after Redis or a bug of ours failed a whole round, before the next.
ROUND_FAILURE_BACKOFF_S = 2.0


@dataclass
class ConsumeReport:
    read: int = 0
    accepted: int = 0
    known: int = 0  # request ids that were already jobs
    rejected: int = 0
    reclaimed: int = 0
    held_back: bool = False  # nothing read: too many jobs wait for quota

    def add(self, other: ConsumeReport) -> None:
        for name in ("read", "accepted", "known", "rejected", "reclaimed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Parsed:
    entry_id: str
    job: NewJob | None = None
    rejected: tuple[str, str] | None = None  # (field, reason)
    request_id: str | None = None  # only when it is a valid id: it goes into events and logs


def _known_job(store: JobStore, text: str | None, default_batch: str) -> tuple[str | None, str | None]:
    """The request id an entry names (when it is a valid id) and the ref of its job, if that exists; read with
    nothing but `json.loads`, so it cannot fail the way the entry's full handling did."""
    try:
        raw = json.loads(text or "", parse_int=parse_json_int)
        request_id = raw.get("request_id") if isinstance(raw, dict) else None
        batch_id = raw.get("batch_id") or default_batch if isinstance(raw, dict) else default_batch
        if not (isinstance(request_id, str) and refs.is_id(request_id) and isinstance(batch_id, str)):
            return None, None
        ref = refs.job_ref(batch_id, request_id)
        return request_id, ref if refs.is_id(batch_id) and store.get(ref) is not None else None
    except (ValueError, RecursionError, TypeError):
        return None, None


def _internal(exc: BaseException) -> str:
    """The reason given for a failure of ours: the exception's type and message, clipped; no traceback."""
    return f"InternalError: {type(exc).__name__}: {shown(str(exc), 200)}"


class RequestConsumer:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        send: Callable[[Next | None], None],
        *,
        inbox: RequestInbox,
        quota: Quota,
        consumer: str,
        count: int = 100,
        block_ms: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.settings, self.send = store, settings, send
        self.inbox, self.quota = inbox, quota
        self.stream, self.group = inbox.stream, inbox.group
        self.consumer, self.count, self.block_ms, self.clock = consumer, count, block_ms, clock
        self._opened: set[str] = set()
        self._next_claim_at = 0.0

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; reading starts at the stream's beginning."""
        self.inbox.ensure_group()

    def step(self) -> ConsumeReport:
        """One round: take over what dead consumers left, then read and answer new entries."""
        report = ConsumeReport()
        if self.clock() >= self._next_claim_at:
            self._next_claim_at = self.clock() + self.settings.request_claim_idle_s / 2
            report.add(self._take_over())
        waiting = sum(self.store.waiting(self.settings.catalogue.names()).values())
        if waiting >= self.settings.request_max_waiting:
            report.held_back = True
            time.sleep(self.block_ms / 1000)
            return report
        entries = self.inbox.read(self.consumer, count=self.count, block_ms=self.block_ms)
        report.add(self._answer(entries))
        return report

    def run(
        self,
        stop: Callable[[], bool],
        on_report: Callable[[ConsumeReport], None] | None = None,
        on_round: Callable[[], None] | None = None,
    ) -> None:
        """Consume until `stop()`, calling `on_round()` as each round begins (a liveness signal). A round that
        fails as a whole (Redis away, a bug of ours outside the handling of one entry) is logged and tried again:
        its entries stay pending and are delivered again, and one that keeps failing is given up after
        `MAX_DELIVERIES`."""
        self.ensure_group()
        log.info("consuming requests", stream=self.stream, group=self.group, consumer=self.consumer)
        while not stop():
            if on_round is not None:
                on_round()
            try:
                report = self.step()
            except Exception:
                log.exception("request round failed; trying again", backoff_s=ROUND_FAILURE_BACKOFF_S)
                time.sleep(ROUND_FAILURE_BACKOFF_S)
                continue
            if on_report is not None and (report.read or report.held_back):
                on_report(report)

    # --- internals --------------------------------------------------------------------------------
    def _take_over(self) -> ConsumeReport:
        """Answer the entries dead consumers left, one at a time: an entry that takes its consumer down (the
        reason its read was left) then takes down only itself, never the innocent entries of the same read. An
        entry already delivered `MAX_DELIVERIES` times is given up (`_give_up`)."""
        report = ConsumeReport()
        cursor = "0-0"
        min_idle_ms = int(self.settings.request_claim_idle_s * 1000)
        for _ in range(self.count):
            cursor, entries, deleted = self.inbox.take_over(self.consumer, min_idle_ms=min_idle_ms, cursor=cursor)
            if deleted:  # trimmed from the stream while pending: nothing left to answer (acknowledged)
                log.warning("requests trimmed from the stream before they were answered", entries=deleted)
            for entry_id, fields in entries:
                report.reclaimed += 1
                log.warning("took over a request a dead consumer had left", entry=entry_id)
                if self.inbox.deliveries(entry_id) > MAX_DELIVERIES:
                    self._give_up(entry_id, fields)
                else:
                    report.add(self._answer([(entry_id, fields)]))
            if cursor == "0-0":
                break
        return report

    def _give_up(self, entry_id: str, fields: dict[str, str]) -> None:
        """An entry whose handling failed `MAX_DELIVERIES` times: if it became a job before that (its consumer
        died after creating it), the job is its answer; else it is answered with `InternalError` and copied,
        with its reason, to the bounded dead-letter stream. Either way it is acknowledged."""
        request_id, job = _known_job(self.store, fields.get(REQUEST_FIELD), self.settings.request_batch)
        if job:
            log.warning("request already a job after repeated failures; acknowledged", entry=entry_id, ref=job)
        else:
            reason = (
                f"InternalError: handling this entry failed {MAX_DELIVERIES} times; kept in {self.inbox.dead_letters}"
            )
            self.inbox.dead_letter(entry_id, reason, fields)
            self._reject(Parsed(entry_id, rejected=("request", reason), request_id=request_id))
            log.error("request dead-lettered after repeated failures", entry=entry_id)
        self.inbox.ack(entry_id)

    def _answer(self, entries: list[tuple[str, dict[str, str]]]) -> ConsumeReport:
        """Answer every entry of one read, then acknowledge them all. Only Redis failing can leave this early
        (the entries then stay pending and come again)."""
        report = ConsumeReport(read=len(entries))
        if not entries:
            return report
        parsed = [self._parse_safely(entry_id, fields) for entry_id, fields in entries]
        accepted = [p for p in parsed if p.job is not None]
        for p, existing in zip(accepted, self._create([p for p in accepted if p.job is not None]), strict=True):
            if isinstance(existing, Exception):
                p.rejected = ("request", _internal(existing))
            elif existing is None:
                report.accepted += 1
            elif p.job is not None and not self._same_request(p.job):
                p.rejected = ("request_id", "already names another request; send new content under a new id")
            else:
                report.known += 1
        for p in parsed:
            if p.rejected is not None:
                report.rejected += 1
                self._reject(p)
        for model in sorted({p.job.model for p in accepted if p.job is not None and p.rejected is None}):
            try:
                dispatch(self.store, self.quota, self.settings, model, self.send)
            except redis.RedisError:
                raise
            except Exception:  # the jobs wait in their queue; the next admission takes them
                log.exception("admission after consuming failed", model=model)
        self.inbox.ack(*(entry_id for entry_id, _ in entries))
        return report

    def _create(self, parsed: list[Parsed]) -> list[Status | Exception | None]:
        """Create the jobs in one round trip; if that fails other than by Redis being away, one by one, so a
        job that cannot be created is answered on its own."""
        jobs = [p.job for p in parsed if p.job is not None]
        if not jobs:
            return []
        try:
            return list(self.store.create_jobs(jobs))
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            log.exception("creating a read's jobs failed; creating them one by one")
        outcomes: list[Status | Exception | None] = []
        for job in jobs:
            try:
                outcomes.append(self.store.create_jobs([job])[0])
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception as exc:
                log.exception("creating a job from a request failed", ref=job.ref)
                outcomes.append(exc)
        return outcomes

    def _same_request(self, job: NewJob) -> bool:
        """Whether the existing job of this request id was made from the same request (a redelivery)."""
        existing = self.store.get(job.ref)
        # Compared as values, not as JSON text: a resend may list its metadata's keys in another order.
        return existing is None or existing.request.to_dict() == json.loads(job.record["request"])

    def _parse_safely(self, entry_id: str, fields: dict[str, str]) -> Parsed:
        try:
            return self._parse(entry_id, fields)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception as exc:  # a bug of ours: this entry is answered, the others go on
            log.exception("handling a request failed", entry=entry_id)
            return Parsed(entry_id, rejected=("request", _internal(exc)))

    def _parse(self, entry_id: str, fields: dict[str, str]) -> Parsed:
        text = fields.get(REQUEST_FIELD)
        if text is None:
            return Parsed(entry_id, rejected=(REQUEST_FIELD, f"the entry has no '{REQUEST_FIELD}' field"))
        try:
            check_input_size(REQUEST_FIELD, len(text.encode("utf-8", "replace")))
            raw = json.loads(text, parse_int=parse_json_int)
        except RequestInvalid as exc:
            return Parsed(entry_id, rejected=(exc.field, exc.reason))
        except (ValueError, RecursionError):
            return Parsed(entry_id, rejected=(REQUEST_FIELD, f"the entry's '{REQUEST_FIELD}' field is not JSON"))
        request_id = raw.get("request_id") if isinstance(raw, dict) else None
        parsed = Parsed(
            entry_id, request_id=request_id if isinstance(request_id, str) and refs.is_id(request_id) else None
        )
        try:
            envelope = validate_envelope(
                raw,
                catalogue=self.settings.catalogue,
                default_batch=self.settings.request_batch,
                default_model=self.settings.default_model,
            )
            self._open(envelope)
        except RequestInvalid as exc:
            parsed.rejected = (exc.field, exc.reason)
            return parsed
        parsed.job = new_job(refs.job_ref(envelope.batch_id, envelope.request_id), 0, envelope.request)
        return parsed

    def _open(self, envelope: Envelope) -> None:
        """Open the request's batch at its priority when it first appears."""
        if envelope.batch_id in self._opened:
            return
        if self.store.batch_summary(envelope.batch_id) is None:
            self.store.open_batch(envelope.batch_id, source=f"stream {self.stream}", priority=envelope.priority)
        self._opened.add(envelope.batch_id)

    def _reject(self, parsed: Parsed) -> None:
        field_name, reason = parsed.rejected or ("", "")
        event = cloud_event(
            "genq.request.rejected",
            parsed.request_id or parsed.entry_id,
            f"request/{parsed.entry_id}/rejected",
            {
                "request_id": parsed.request_id,
                "stream_entry": parsed.entry_id,
                "field": field_name,
                "reason": reason,
            },
            now=self.clock(),
        )
        if self.inbox.answer_once(parsed.entry_id, event):
            log.warning("request rejected", request_id=parsed.request_id, field=field_name, reason=reason)
