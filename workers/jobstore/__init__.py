"""The job store, closed: every Redis key of genq's jobs is built and touched in this package alone.

Laid out like `workers/quota/`: `protocol.py` says what the store does (`JobStore`), `redis_store.py` keeps it
in Redis with one Lua script per change (`lua/`), `memory_store.py` keeps it in one process, `moves.py`
plans each transition once for both. Beside them, Redis-only mechanisms of the same keyspace: the webhook
outbox (`webhook_outbox.py`) and the request stream's inbox (`request_inbox.py`).
"""

from workers.jobstore.memory_store import MemoryJobStore
from workers.jobstore.protocol import Applied, BatchSummary, Gauges, JobStore, NewJob, Purged
from workers.jobstore.redis_store import RedisJobStore

__all__ = ["Applied", "BatchSummary", "Gauges", "JobStore", "MemoryJobStore", "NewJob", "Purged", "RedisJobStore"]
