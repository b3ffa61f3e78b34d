"""genq's exceptions: one root, translated from third-party errors at the boundary.

    GenqError
    ├── RequestInvalid                 a request breaks a catalogue rule (field + reason)
    ├── RemoteError                    DashScope answered with an error, or could not be reached
    │   ├── Throttled                  429 / Throttling*: come back later, not a failure
    │   ├── TransientRemoteError       5xx, timeouts, dropped connections, malformed bodies: retry, bounded
    │   │   └── CreateOutcomeUnknown   a create whose task may or may not exist (timeout after sending)
    │   └── PermanentRemoteError       the request itself is refused: fail the job with the code
    │       └── AccountError           the account is refused (key, arrears, access): pause the scope
    ├── ResultRejected                 a result URL we refuse to fetch (host, scheme, size, content type)
    └── StorageError                   the S3 server failed

Control flow is not an error: "not ready yet, poll again in 7 s" is a value (`workers.dashscope.TaskState`).
"""

from __future__ import annotations


class GenqError(Exception):
    """Root of every error genq raises."""


class RequestInvalid(GenqError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RemoteError(GenqError):
    """An error answer (or no answer) from DashScope. `code` is DashScope's, or our own for transport faults."""

    def __init__(
        self, code: str, message: str, *, http_status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {http_status})" if http_status else ""))
        self.code = code
        self.message = message
        self.http_status = http_status
        self.request_id = request_id


class Throttled(RemoteError):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(code, message, http_status=http_status, request_id=request_id)
        self.retry_after_s = retry_after_s


class TransientRemoteError(RemoteError):
    pass


class CreateOutcomeUnknown(TransientRemoteError):
    """The create request may have reached the service: reconcile before sending it again."""


class PermanentRemoteError(RemoteError):
    pass


class AccountError(PermanentRemoteError):
    pass


class ResultRejected(GenqError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StorageError(GenqError):
    pass
