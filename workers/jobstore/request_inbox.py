"""The request stream's Redis side: the consumer group, reads, take-overs of dead consumers' entries,
acknowledgements, the dead-letter stream, and the once-only rejection event.

`producer/stream.py` decides what each entry means and how it is answered; this module only moves entries.
Entries whose bytes are not UTF-8 (a producer may XADD any bytes) are read with surrogate escapes, which
validation refuses as not valid text, so such an entry is rejected like any other instead of failing every
read (and every take-over) of the stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import redis

from workers.jobstore import keys
from workers.jobstore.tolerant import tolerant_client

Entry = tuple[str, dict[str, str]]

#: Entries kept in the dead-letter stream (Redis runs `noeviction`: nothing may grow without bound).
DEAD_LETTER_MAXLEN = 10_000
#: How long an entry's "already answered" mark is kept (a redelivery within it is not answered twice).
ANSWERED_TTL_S = 7 * 24 * 3600
#: Where entries given up after repeated failures are kept, with their reason.
DEAD_LETTERS = keys.REQUESTS_DEAD

# KEYS: the entry's answered marker, the events stream. ARGV[1]: JSON {ttl_s, maxlen, event}.
# Emits the rejected event once per entry, however often the entry is delivered.
_ANSWER_ONCE = """
local a = cjson.decode(ARGV[1])
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', a.ttl_s) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', a.maxlen, '*', 'event', a.event)
  return 1
end
return 0
"""


class RequestInbox:
    def __init__(
        self, client: redis.Redis, *, stream: str, group: str, event_stream: str, event_stream_maxlen: int
    ) -> None:
        self.stream, self.group = stream, group
        self.dead_letters = DEAD_LETTERS  # where entries given up are kept (named in their answer)
        self._client = client
        self._reader = tolerant_client(client)
        self._event_stream, self._maxlen = event_stream, event_stream_maxlen
        self._answer_once = client.register_script(_ANSWER_ONCE)

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; reading starts at the stream's beginning."""
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
        """New entries for `consumer` (waiting up to `block_ms` for one)."""
        answer = cast(
            list[Any],
            self._reader.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms),
        )
        return cast(list[Entry], answer[0][1]) if answer else []

    def take_over(self, consumer: str, *, min_idle_ms: int, cursor: str) -> tuple[str, list[Entry], list[str]]:
        """One entry left pending longer than `min_idle_ms` by another consumer, now `consumer`'s: (the next
        cursor, "0-0" at the end; the entries; those trimmed from the stream while pending, acknowledged here)."""
        reply = self._reader.xautoclaim(self.stream, self.group, consumer, min_idle_ms, start_id=cursor, count=1)
        entries = [e for e in reply[1] if e and e[1] is not None]
        deleted = list(reply[2]) if len(reply) > 2 else []
        if deleted:
            self.ack(*deleted)
        return reply[0], entries, deleted

    def deliveries(self, entry_id: str) -> int:
        """How often the entry has been delivered (reads and take-overs)."""
        pending = self._reader.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    def ack(self, *entry_ids: str) -> None:
        if entry_ids:
            self._client.xack(self.stream, self.group, *entry_ids)

    def dead_letter(self, entry_id: str, reason: str, fields: Mapping[str, str]) -> None:
        """Keep the entry, with its reason, in the bounded dead-letter stream."""
        record = {"entry": entry_id, "reason": reason, **{f"field:{k}": v for k, v in fields.items()}}
        self._reader.xadd(DEAD_LETTERS, cast(Any, record), maxlen=DEAD_LETTER_MAXLEN, approximate=True)

    def answer_once(self, entry_id: str, event: Mapping[str, Any]) -> bool:
        """Append the entry's answer event unless it was already answered; True when this call appended it."""
        arguments = {
            "ttl_s": str(ANSWERED_TTL_S),
            "maxlen": str(self._maxlen),
            "event": json.dumps(event, ensure_ascii=False),
        }
        emitted = self._answer_once(
            keys=[keys.request_answered(entry_id), self._event_stream],
            args=[json.dumps(arguments, ensure_ascii=False)],
        )
        return bool(emitted)
