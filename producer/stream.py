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
- Back-pressure: while more than `max_waiting` accepted jobs wait for quota, the consumer reads nothing, so a
  flood of requests waits in the stream (where the producer can see it) instead of in genq.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import structlog

from config.catalogue import CATALOGUE
from config.settings import Settings
from producer.batch import new_job
from workers import keys
from workers.admission import dispatch
from workers.errors import RequestInvalid
from workers.events import cloud_event
from workers.job import Next
from workers.quota.quota import Quota
from workers.requests import RequestInput, validate_request
from workers.store import JobStore, NewJob

log = structlog.get_logger("genq.consume")

REQUEST_FIELD = "request"
ANSWERED_TTL_S = 7 * 24 * 3600
_INPUT_FIELDS = ("prompt", "model", "negative_prompt", "size", "n", "seed", "prompt_extend", "watermark", "duration")

# KEYS: the entry's answered marker, the events stream. ARGV: TTL, stream maxlen, event JSON.
# Emits the rejected event once per entry, however often the entry is delivered.
_REJECT_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[3])
  return 1
end
return 0
"""


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
    request_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class RequestConsumer:
    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        send: Callable[[Next | None], None],
        *,
        consumer: str,
        count: int = 100,
        block_ms: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.settings, self.send = store, settings, send
        self.stream, self.group = settings.request_stream, settings.request_group
        self.consumer, self.count, self.block_ms, self.clock = consumer, count, block_ms, clock
        self.quota = Quota.redis(store.redis)
        self._reject_once = store.redis.register_script(_REJECT_ONCE)
        self._opened: set[str] = set()
        self._next_claim_at = 0.0

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; reading starts at the stream's beginning."""
        try:
            self.store.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self) -> ConsumeReport:
        """One round: take over what dead consumers left, then read and answer new entries."""
        report = ConsumeReport()
        if self.clock() >= self._next_claim_at:
            self._next_claim_at = self.clock() + self.settings.request_claim_idle_s / 2
            claimed = self._claim()
            report.reclaimed = len(claimed)
            report.add(self._answer(claimed))
        waiting = sum(self.store.waiting(sorted(CATALOGUE)).values())
        if waiting >= self.settings.request_max_waiting:
            report.held_back = True
            time.sleep(self.block_ms / 1000)
            return report
        answer = cast(
            list[Any],
            self.store.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.count, block=self.block_ms
            ),
        )
        entries = answer[0][1] if answer else []
        report.add(self._answer(cast(list[tuple[str, dict[str, str]]], entries)))
        return report

    def run(self, stop: Callable[[], bool], on_report: Callable[[ConsumeReport], None] | None = None) -> None:
        self.ensure_group()
        log.info("consuming requests", stream=self.stream, group=self.group, consumer=self.consumer)
        while not stop():
            report = self.step()
            if on_report is not None and (report.read or report.held_back):
                on_report(report)

    # --- internals --------------------------------------------------------------------------------
    def _claim(self) -> list[tuple[str, dict[str, str]]]:
        claimed: list[tuple[str, dict[str, str]]] = []
        cursor = "0-0"
        min_idle_ms = int(self.settings.request_claim_idle_s * 1000)
        while True:
            reply = self.store.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=cursor, count=self.count
            )
            cursor, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            claimed += [e for e in entries if e and e[1] is not None]
            if deleted:  # trimmed from the stream while pending: nothing left to answer
                self.store.redis.xack(self.stream, self.group, *deleted)
            if cursor == "0-0" or not entries:
                break
        if claimed:
            log.warning("took over requests a dead consumer had left", count=len(claimed))
        return claimed

    def _answer(self, entries: list[tuple[str, dict[str, str]]]) -> ConsumeReport:
        report = ConsumeReport(read=len(entries))
        if not entries:
            return report
        parsed = [self._parse(entry_id, fields) for entry_id, fields in entries]
        jobs = [p.job for p in parsed if p.job is not None]
        for existing in self.store.create_jobs(jobs) if jobs else []:
            if existing is None:
                report.accepted += 1
            else:
                report.known += 1
        for p in parsed:
            if p.rejected is not None:
                report.rejected += 1
                self._reject(p)
        for model in sorted({j.model for j in jobs}):
            dispatch(self.store, self.quota, self.settings, model, self.send)
        self.store.redis.xack(self.stream, self.group, *(entry_id for entry_id, _ in entries))
        return report

    def _parse(self, entry_id: str, fields: dict[str, str]) -> Parsed:
        try:
            raw = json.loads(fields.get(REQUEST_FIELD) or "")
        except ValueError:
            return Parsed(entry_id, rejected=(REQUEST_FIELD, f"the entry's '{REQUEST_FIELD}' field is not JSON"))
        if not isinstance(raw, dict):
            return Parsed(entry_id, rejected=(REQUEST_FIELD, "must be a JSON object"))
        request_id = raw.get("request_id")
        parsed = Parsed(entry_id, request_id=request_id if isinstance(request_id, str) else None, raw=raw)
        try:
            parsed.job = self._job(raw)
        except RequestInvalid as exc:
            parsed.rejected = (exc.field, exc.reason)
        return parsed

    def _job(self, raw: dict[str, Any]) -> NewJob:
        request_id, batch_id = raw.get("request_id"), raw.get("batch_id") or self.settings.request_batch
        for name, value in (("request_id", request_id), ("batch_id", batch_id)):
            if not isinstance(value, str) or not keys.ID_PATTERN.match(value):
                raise RequestInvalid(
                    name, "must be 1-64 of letters, digits, '.', '_' or '-', starting with a letter or digit"
                )
        unknown = set(raw) - {*_INPUT_FIELDS, "request_id", "batch_id", "priority", "metadata"}
        if unknown:
            raise RequestInvalid(
                sorted(unknown)[0],
                f"unknown field; known: {', '.join(_INPUT_FIELDS)}, request_id, batch_id, priority, metadata",
            )
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise RequestInvalid("metadata", "must be an object of strings")
        values = {name: raw.get(name) for name in _INPUT_FIELDS}
        request = validate_request(
            RequestInput(**values, metadata={str(k): str(v) for k, v in metadata.items()}),
            default_model=self.settings.default_model,
        )
        self._open(str(batch_id), raw.get("priority", 5))
        return new_job(keys.job_ref(str(batch_id), str(request_id)), 0, request)

    def _open(self, batch_id: str, priority: Any) -> None:
        if batch_id in self._opened:
            return
        if not isinstance(priority, int) or not 0 <= priority <= 9:
            raise RequestInvalid("priority", f"must be an integer 0-9, got {priority!r}")
        if self.store.batch_summary(batch_id) is None:
            self.store.open_batch(batch_id, source=f"stream {self.stream}", priority=priority)
        self._opened.add(batch_id)

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
        emitted = self._reject_once(
            keys=[keys.request_answered(parsed.entry_id), self.store.event_stream],
            args=[ANSWERED_TTL_S, self.store.event_stream_maxlen, json.dumps(event, ensure_ascii=False)],
        )
        if emitted:
            log.warning("request rejected", request_id=parsed.request_id, field=field_name, reason=reason)
