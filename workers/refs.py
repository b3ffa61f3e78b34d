"""Names of batches and jobs: ids, and the *ref* `{batch_id}/{job_id}` that names a job everywhere.

Both parts match `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, so a ref is also the job's prefix in the bucket.
"""

from __future__ import annotations

import re

#: Matched with `fullmatch` only (`is_id`): `$` would let a trailing newline through into keys and paths.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_id(text: str) -> bool:
    """Whether `text` is a whole batch or job id."""
    return ID_PATTERN.fullmatch(text) is not None


def job_ref(batch_id: str, job_id: str) -> str:
    return f"{batch_id}/{job_id}"


def split_ref(ref: str) -> tuple[str, str]:
    batch_id, _, job_id = ref.partition("/")
    return batch_id, job_id
