"""The results bucket: a thin layer over the MinIO SDK that speaks genq's terms and errors.

Objects live under `{batch_id}/{job_id}/{index}.{png|mp4}` beside `{batch_id}/{job_id}/manifest.json`;
each object carries its sha256 in the `x-amz-meta-sha256` header.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from config.settings import Settings
from workers.errors import StorageError

PART_SIZE = 5 * 1024 * 1024  # multipart parts, the S3 minimum: the SDK holds a part (and copies of it) in memory


def make_minio(settings: Settings) -> Minio:
    if settings.s3_access_key is None or settings.s3_secret_key is None:
        raise StorageError("no S3 credentials: set GENQ_S3_ACCESS_KEY and GENQ_S3_SECRET_KEY")
    # Short timeouts and few retries: a down S3 server should surface as StorageError quickly, and
    # the task decides when to try again.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        retries=urllib3.Retry(total=2, backoff_factor=0.2),
        maxsize=8,
    )
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=http,
    )


class ResultBucket:
    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def close(self) -> None:
        """Let go of the client's connections. The MinIO SDK has no close of its own: its urllib3 pool (`_http`)
        is what holds the sockets (a bucket from `other` shares them)."""
        pool = getattr(self.client, "_http", None)
        if pool is not None:
            pool.clear()

    def other(self, bucket: str) -> ResultBucket:
        """Another bucket of the same server (a scheduled run's input folder)."""
        return ResultBucket(self.client, bucket)

    def ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise StorageError(f"bucket {self.bucket}: {exc}") from exc

    def sha256_of(self, key: str, *, task_id: str | None = None) -> str | None:
        """The stored object's sha256 (from its metadata), or None when there is no such object, or (given
        `task_id`) when the object was stored from another task: a retried job's earlier task, whose bytes are not
        the new task's (billed, and to be fetched)."""
        try:
            stat = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}:
                return None
            if exc.code == "NoSuchBucket":  # a fresh server, or one wiped: create it, nothing is stored yet
                self.ensure_bucket()
                return None
            raise StorageError(f"stat {key}: {exc}") from exc
        except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise StorageError(f"stat {key}: {exc}") from exc
        metadata = {name.lower(): str(value) for name, value in (stat.metadata or {}).items()}
        if task_id is not None and metadata.get("x-amz-meta-task-id") != task_id:
            return None
        return metadata.get("x-amz-meta-sha256", "")

    def put_file(
        self, key: str, data: BinaryIO, size: int, *, content_type: str, sha256: str, task_id: str = ""
    ) -> None:
        """Store a result with its sha256 and the upstream task it came from in the object's metadata."""
        try:
            self.client.put_object(
                self.bucket,
                key,
                data,
                size,
                content_type=content_type,
                metadata={"sha256": sha256, "task-id": task_id},
                part_size=PART_SIZE,
            )
        except (MinioException, OSError, urllib3.exceptions.HTTPError, ValueError) as exc:
            raise StorageError(f"put {key}: {exc}") from exc

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        # A file name that is not UTF-8 (a scheduled input's, say) is kept as a `\udcXX` escape, not a crash.
        raw = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8", "backslashreplace")
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(raw), len(raw), content_type="application/json")
        except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise StorageError(f"put {key}: {exc}") from exc

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                return None
            raise StorageError(f"get {key}: {exc}") from exc
        except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise StorageError(f"get {key}: {exc}") from exc
        try:
            document: dict[str, Any] = json.loads(response.read())
            return document
        finally:
            response.close()
            response.release_conn()

    def download(self, key: str, path: str) -> None:
        try:
            self.client.fget_object(self.bucket, key, path)
        except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise StorageError(f"download {key}: {exc}") from exc

    def keys(self, prefix: str) -> Iterator[str]:
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name:
                    yield obj.object_name
        except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise StorageError(f"list {prefix}: {exc}") from exc


class Bucket(Protocol):
    """Where results go: `ResultBucket` (S3, the fleet's) and `MemoryBucket` (one process: the stage tests)."""

    bucket: str

    def other(self, bucket: str) -> Bucket:
        """Another bucket of the same server (a scheduled run's input folder)."""

    def ensure_bucket(self) -> None: ...

    def sha256_of(self, key: str, *, task_id: str | None = None) -> str | None: ...

    def put_file(
        self, key: str, data: BinaryIO, size: int, *, content_type: str, sha256: str, task_id: str = ""
    ) -> None: ...

    def put_json(self, key: str, document: dict[str, Any]) -> None: ...

    def get_json(self, key: str) -> dict[str, Any] | None: ...

    def download(self, key: str, path: str) -> None: ...

    def keys(self, prefix: str) -> Iterator[str]: ...


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    metadata: dict[str, str]


class MemoryBucket:
    """`Bucket` in one process's memory, with the same answers as `ResultBucket` (sha256 and task id kept as
    metadata). `failing` makes every call raise `StorageError`, as an S3 server that is down would."""

    def __init__(self, bucket: str = "genq-results") -> None:
        self.bucket = bucket
        self.objects: dict[str, StoredObject] = {}
        self.failing = False
        self._others: dict[str, MemoryBucket] = {bucket: self}

    def other(self, bucket: str) -> MemoryBucket:
        if bucket not in self._others:
            sibling = self._others[bucket] = MemoryBucket(bucket)
            sibling._others = self._others
        return self._others[bucket]

    def _check(self, what: str) -> None:
        if self.failing:
            raise StorageError(f"{what}: the bucket is unreachable")

    def ensure_bucket(self) -> None:
        self._check(f"bucket {self.bucket}")

    def sha256_of(self, key: str, *, task_id: str | None = None) -> str | None:
        self._check(f"stat {key}")
        stored = self.objects.get(key)
        if stored is None or (task_id is not None and stored.metadata.get("task-id") != task_id):
            return None
        return stored.metadata.get("sha256", "")

    def put_file(
        self, key: str, data: BinaryIO, size: int, *, content_type: str, sha256: str, task_id: str = ""
    ) -> None:
        self._check(f"put {key}")
        body = data.read(size)
        if len(body) != size:
            raise StorageError(f"put {key}: {len(body)} bytes read of the {size} announced")
        self.objects[key] = StoredObject(body, content_type, {"sha256": sha256, "task-id": task_id})

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        self._check(f"put {key}")
        raw = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8", "backslashreplace")
        self.objects[key] = StoredObject(raw, "application/json", {})

    def get_json(self, key: str) -> dict[str, Any] | None:
        self._check(f"get {key}")
        stored = self.objects.get(key)
        return json.loads(stored.data) if stored is not None else None

    def download(self, key: str, path: str) -> None:
        self._check(f"download {key}")
        if key not in self.objects:
            raise StorageError(f"download {key}: no such object")
        with open(path, "wb") as out:
            out.write(self.objects[key].data)

    def keys(self, prefix: str) -> Iterator[str]:
        self._check(f"list {prefix}")
        yield from sorted(k for k in self.objects if k.startswith(prefix))
