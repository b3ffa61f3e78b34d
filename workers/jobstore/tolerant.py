"""A Redis client that reads stream entries whose bytes are not UTF-8.

Anyone may XADD any bytes to a stream genq reads (its events, its requests). With the store's client such an
entry fails every read, and every take-over, for good. Read through this client it decodes with surrogate
escapes instead (and is written back byte for byte): the webhook outbox dead-letters it as malformed, and the
request inbox hands it to validation, which refuses it as not valid text.
"""

from __future__ import annotations

import redis


def tolerant_client(client: redis.Redis) -> redis.Redis:
    """A client like `client` (same server and settings) whose replies decode with surrogate escapes."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "encoding_errors": "surrogateescape"}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
