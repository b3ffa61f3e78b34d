"""The webhook outbox: every event bound for a webhook, copied out of `genq:events` before the stream's trimming
can take it, with its own retry schedule; and the dead-letter stream for what is never delivered.

The promise: every event of `genq:events` that has a webhook target is either delivered (a 2xx answer) or in
`genq:webhook:dead` with its reason. Nothing is dropped without a record.

**Collecting** (`Outbox.collect`, run every 2 s by `genq.webhook_tick` on the `events` queue, one collector at a
time under a lock). It reads the stream with the consumer group `genq-webhook` and, for each new entry, in one
MULTI with the entry's XACK:

- an event with a target (its batch's own webhook, else `GENQ_WEBHOOK_URL`): copied to `genq:webhook:out:{entry}`
  and scheduled now in `genq:webhook:due`; from here on trimming the stream cannot lose it;
- no target: acknowledged, nothing to send;
- an entry that is not an event (no `event` field, not UTF-8, not JSON, not an object with a string `id`):
  dead-lettered as `malformed: ...`;
- the outbox already holds `webhook_outbox_max` events (a long outage): dead-lettered as `outbox full`, event
  included, so memory stays bounded (Redis runs `noeviction`).

The stream is trimmed to about `event_stream_maxlen` entries whatever the webhook does, so two losses remain
possible, and each is recorded as `trimmed before delivery`:

- entries read by a collector that died before its MULTI stay pending in the group; they are taken over after
  30 s (XAUTOCLAIM), and any the stream no longer holds (XAUTOCLAIM reports them deleted) are dead-lettered by
  entry id;
- entries trimmed before any collector read them (the collector did not run while more than the cap was
  appended): detected as a gap, the group's last-delivered id older than the stream's first entry, sized from
  the group's lag (XINFO GROUPS); one dead letter names how many, and the entry ids they lay between. Their
  bodies are gone.

**Delivering** (`claim` / `delivered` / `retry` / `dead`, used by `workers/webhook.py` on the `webhooks` queue):
a claim takes due events and moves their due time to the end of a lease (a try that dies is tried again after
it) and counts the try; the outcome removes the event, reschedules it, or dead-letters it.

Dead letters (`genq:webhook:dead`, trimmed to about `webhook_dead_maxlen`) carry `reason`, `entry` (the id in
`genq:events`), and as known `event` (the raw entry), `error`, `attempts`, `url_host`, `missing`, `after`,
`before`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import structlog

from config.settings import Settings
from workers import refs
from workers.jobstore import keys
from workers.jobstore.tolerant import tolerant_client

log = structlog.get_logger("genq.webhook")


TRIMMED = "trimmed before delivery"
OUTBOX_FULL = "outbox full"

#: Pending entries older than this belong to a collector that died between its read and its MULTI.
STALE_PENDING_MS = 30_000
COLLECT_LOCK_MS = 30_000
READ_COUNT = 500

# Claim up to ARGV[3] due events: each gets its due time moved to the end of the lease and its try counted.
# KEYS: due set. ARGV: now, lease end, count, outbox key prefix. Returns [entry, event, event_id, attempts,
# first_at] per event. (Keys built here: genq runs on one Redis primary, never a cluster.)
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[4] .. id
  local f = redis.call('HMGET', key, 'event', 'event_id', 'first_at')
  if f[1] then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    table.insert(out, {id, f[1], f[2] or '', attempts, f[3] or ARGV[1]})
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Schedule the next try of an event still in the outbox. KEYS: due set, outbox record. ARGV: entry, next try
# time, last error.
_RETRY = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'error', ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# Move an event from the outbox to the dead letters, once. KEYS: due set, outbox record, dead stream. ARGV:
# entry, dead stream maxlen, then field/value pairs of the dead letter.
_DEAD = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return 1
"""

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


@dataclass
class CollectReport:
    copied: int = 0  # into the outbox
    skipped: int = 0  # no webhook target
    dead: int = 0  # dead-lettered: malformed, trimmed while pending, outbox full
    trimmed_unread: int = 0  # counted in a gap record (bodies gone)
    busy: bool = False  # another collector held the lock


@dataclass(frozen=True)
class ClaimedEvent:
    entry: str
    event: str
    event_id: str
    attempts: int
    first_at: float


@dataclass
class _Batch:
    """What one MULTI writes for a group of stream entries."""

    entries: list[str] = field(default_factory=list)
    copies: list[tuple[str, str, str]] = field(default_factory=list)  # entry, raw event, event id
    dead: list[dict[str, str]] = field(default_factory=list)


def _entry_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _id_before(text: str) -> str:
    """The largest possible stream id below `text`."""
    ms, seq = _entry_id(text)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-18446744073709551615"


class Outbox:
    def __init__(self, client: redis.Redis, settings: Settings, *, stale_pending_ms: int = STALE_PENDING_MS) -> None:
        self.client, self.settings = client, settings
        self.stale_pending_ms = stale_pending_ms
        self.stream = settings.event_stream
        self.reader = tolerant_client(client)
        self._claim = client.register_script(_CLAIM)
        self._retry = client.register_script(_RETRY)
        self._dead = self.reader.register_script(_DEAD)
        self._release = client.register_script(_RELEASE)

    # --- targets --------------------------------------------------------------------------------------

    def target(self, event: dict[str, Any], known: dict[str, str | None] | None = None) -> str | None:
        """Where an event goes: its batch's own webhook (`genq batch --webhook`), else GENQ_WEBHOOK_URL.
        `known`: batch id -> its own webhook, filled as batches are looked up (one lookup per batch)."""
        data = event.get("data")
        batch_id = data.get("batch_id") if isinstance(data, dict) else None
        if isinstance(batch_id, str) and refs.is_id(batch_id):
            known = {} if known is None else known
            if batch_id not in known:
                known[batch_id] = cast(str | None, self.client.hget(keys.batch(batch_id), keys.BATCH_WEBHOOK_FIELD))
            own = known[batch_id]
            if own:
                return own
        return self.settings.webhook_url

    # --- collecting -----------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the group at the stream's start, telling Redis how many entries were trimmed before it existed
        (ENTRIESREAD), so its lag counts only what is added from now on and a later gap can be sized."""
        try:
            info: dict[str, Any] = self.reader.xinfo_stream(self.stream)
            trimmed = int(info["entries-added"]) - int(info["length"])
        except redis.ResponseError:  # no stream yet
            trimmed = 0
        try:
            self.client.xgroup_create(self.stream, keys.WEBHOOK_GROUP, id="0", mkstream=True, entries_read=trimmed)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def collect(self, *, now: float, consumer: str, limit: int = 5000) -> CollectReport:
        """Copy new events into the outbox (see the module docstring); at most `limit` entries per call."""
        report = CollectReport()
        token = secrets.token_hex(8)
        if not self.client.set(keys.WEBHOOK_COLLECT_LOCK, token, nx=True, px=COLLECT_LOCK_MS):
            report.busy = True
            return report
        try:
            self.ensure_group()
            self._record_gap(report)
            self._take_over_stale(report, now=now, consumer=consumer)
            read = 0
            while read < limit:
                fresh = cast(
                    list[Any],
                    self.reader.xreadgroup(keys.WEBHOOK_GROUP, consumer, {self.stream: ">"}, count=READ_COUNT) or [],
                )
                entries = [entry for _, batch in fresh for entry in batch]
                if not entries:
                    break
                self._file(entries, report, now=now)
                read += len(entries)
        finally:
            self._release(keys=[keys.WEBHOOK_COLLECT_LOCK], args=[token])
        return report

    def _record_gap(self, report: CollectReport) -> None:
        """Entries trimmed before the group read them: one dead letter saying how many and where, and the group
        moved to just before the stream's first entry so the same gap is never counted twice."""
        group = next(
            (g for g in self.client.xinfo_groups(self.stream) if g["name"] == keys.WEBHOOK_GROUP),
            None,
        )
        if group is None:
            return
        last = str(group["last-delivered-id"])
        info: dict[str, Any] = self.reader.xinfo_stream(self.stream)
        first = info.get("first-entry")
        length, lag = int(info["length"]), group.get("lag")
        if first is not None and _entry_id(str(first[0])) <= _entry_id(last):
            return  # the next entry to read is still in the stream
        if lag is None and _entry_id(last) == (0, 0):
            return  # a group of unknown history that never read: nothing to compare with
        missing = (int(lag) - length) if lag is not None else None
        if missing is not None and missing <= 0:
            return
        before = str(first[0]) if first is not None else "+"
        record = {"reason": TRIMMED, "missing": "unknown" if missing is None else str(missing), "after": last}
        record["before"] = before
        pipe = self.reader.pipeline(transaction=True)
        pipe.xadd(keys.WEBHOOK_DEAD, cast(Any, record), maxlen=self.settings.webhook_dead_maxlen, approximate=True)
        if first is not None:
            pipe.xgroup_setid(
                self.stream,
                keys.WEBHOOK_GROUP,
                _id_before(str(first[0])),
                entries_read=int(info["entries-added"]) - length,
            )
        else:
            pipe.xgroup_setid(
                self.stream, keys.WEBHOOK_GROUP, str(info["last-generated-id"]), entries_read=int(info["entries-added"])
            )
        pipe.execute()
        report.trimmed_unread += missing or 0
        log.error("webhook events trimmed before they were read", missing=record["missing"], after=last, before=before)

    def _take_over_stale(self, report: CollectReport, *, now: float, consumer: str) -> None:
        """Entries a dead collector read but never filed: file them now; those already trimmed are dead letters."""
        start = "0-0"
        for _ in range(20):
            reply: list[Any] = self.reader.xautoclaim(
                self.stream,
                keys.WEBHOOK_GROUP,
                consumer,
                min_idle_time=self.stale_pending_ms,
                start_id=start,
                count=READ_COUNT,
            )
            claimed = [(entry_id, fields) for entry_id, fields in reply[1]]
            deleted = [str(entry_id) for entry_id in (reply[2] if len(reply) > 2 else [])]
            claimed += [(entry_id, None) for entry_id in deleted]  # gone from the stream and from the group
            if claimed:
                self._file(claimed, report, now=now)
            start = str(reply[0])
            if start == "0-0":
                return

    def _file(self, entries: list[tuple[str, dict[str, str] | None]], report: CollectReport, *, now: float) -> None:
        batch = _Batch()
        room = self.settings.webhook_outbox_max - int(self.client.zcard(keys.WEBHOOK_DUE))
        known: dict[str, str | None] = {}
        for entry_id, fields in entries:
            batch.entries.append(entry_id)
            raw, event, problem = _event_of(fields)
            if problem is not None or raw is None or event is None:
                batch.dead.append({"reason": problem or TRIMMED, "entry": entry_id, **({"event": raw} if raw else {})})
            elif self.target(event, known) is None:
                report.skipped += 1
            elif room <= 0:
                batch.dead.append({"reason": OUTBOX_FULL, "entry": entry_id, "event": raw})
            else:
                batch.copies.append((entry_id, raw, event["id"]))
                room -= 1
        pipe = self.reader.pipeline(transaction=True)
        for entry_id, raw, event_id in batch.copies:
            key = keys.webhook_outbox(entry_id)
            pipe.hsetnx(key, "event", raw)
            pipe.hsetnx(key, "event_id", event_id)
            pipe.hsetnx(key, "first_at", repr(now))
            pipe.zadd(keys.WEBHOOK_DUE, {entry_id: now}, nx=True)
        for record in batch.dead:
            pipe.xadd(keys.WEBHOOK_DEAD, cast(Any, record), maxlen=self.settings.webhook_dead_maxlen, approximate=True)
        pipe.xack(self.stream, keys.WEBHOOK_GROUP, *batch.entries)
        pipe.execute()
        report.copied += len(batch.copies)
        report.dead += len(batch.dead)
        for record in batch.dead:
            log.error("webhook event dead-lettered", reason=record["reason"], entry=record["entry"])

    # --- delivering -----------------------------------------------------------------------------------

    def has_due(self, now: float) -> bool:
        return bool(self.client.zrangebyscore(keys.WEBHOOK_DUE, "-inf", now, start=0, num=1))

    def waiting(self) -> int:
        return int(self.client.zcard(keys.WEBHOOK_DUE))

    def oldest_due(self) -> float | None:
        """When the event waiting longest for delivery was due; None when none waits."""
        oldest = cast(list[tuple[str, float]], self.client.zrange(keys.WEBHOOK_DUE, 0, 0, withscores=True))
        return oldest[0][1] if oldest else None

    def backlog(self) -> int:
        """Events not yet settled: unread by the collector, read but not filed, or waiting for delivery."""
        groups = self.client.xinfo_groups(self.stream) if self.client.exists(self.stream) else []
        unread = sum(int(g.get("lag") or 0) + int(g["pending"]) for g in groups if g["name"] == keys.WEBHOOK_GROUP)
        return unread + self.waiting()

    def forget_waiting(self) -> None:
        """Drop every event waiting for delivery (a benchmark's reset between rounds; never in production)."""
        for key in self.client.scan_iter(keys.webhook_outbox("*")):
            self.client.delete(key)
        self.client.delete(keys.WEBHOOK_DUE)

    def claim(self, *, now: float, lease_s: float, count: int) -> list[ClaimedEvent]:
        rows = cast(
            list[list[Any]],
            self._claim(keys=[keys.WEBHOOK_DUE], args=[now, now + lease_s, count, keys.webhook_outbox("")]),
        )
        return [ClaimedEvent(str(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4])) for r in rows]

    def delivered(self, entry: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(keys.WEBHOOK_DUE, entry)
        pipe.delete(keys.webhook_outbox(entry))
        pipe.execute()

    def retry(self, entry: str, *, at: float, error: str) -> None:
        self._retry(keys=[keys.WEBHOOK_DUE, keys.webhook_outbox(entry)], args=[entry, at, error])

    def dead(self, item: ClaimedEvent, *, reason: str, **fields: str) -> bool:
        """Move a claimed event to the dead letters; False if it had already left the outbox."""
        record = {"reason": reason, "entry": item.entry, "event": item.event, "attempts": str(item.attempts), **fields}
        pairs = [part for pair in record.items() for part in pair]
        return bool(
            self._dead(
                keys=[keys.WEBHOOK_DUE, keys.webhook_outbox(item.entry), keys.WEBHOOK_DEAD],
                args=[item.entry, self.settings.webhook_dead_maxlen, *pairs],
            )
        )


def _event_of(fields: dict[str, str] | None) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """A stream entry's raw event, the event, and why it cannot be delivered (None when it can)."""
    if not fields:
        return None, None, TRIMMED
    raw = fields.get("event")
    if raw is None:
        return None, None, "malformed: no event field"
    try:
        raw.encode()
    except UnicodeEncodeError:
        return raw, None, "malformed: not UTF-8"
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return raw, None, "malformed: not JSON"
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        return raw, None, "malformed: not a CloudEvent with an id"
    return raw, event, None
