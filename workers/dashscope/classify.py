"""Error classification, as the table in `dashscope-api.md` ("Errors"): by `code` first, HTTP status second.

Some deployments send throttling codes with HTTP 400, so the code always wins when it is known.
"""

from __future__ import annotations

from workers.errors import (
    AccountError,
    PermanentRemoteError,
    RemoteError,
    Throttled,
    TransientRemoteError,
)

_ACCOUNT_CODES = {"InvalidApiKey", "Arrearage", "CommodityNotPurchased"}
_PERMANENT_CODES = {
    "InvalidParameter",
    "DataInspectionFailed",
    "IPInfringementSuspect",
    "ModelNotFound",
    "UnsupportedOperation",
}
_TRANSIENT_CODES = {
    "InternalError",
    "InternalError.Algo",
    "InternalError.Timeout",
    "SystemError",
    "ModelServiceFailed",
    "ModelServingError",
    "ModelUnavailable",
}
FREE_QUOTA_EXHAUSTED = "free allocated quota exceeded"
#: An `AccessDenied` whose message names a mistake in the request's shape, not the key or the account: the
#: create sent without (or a synchronous call sent with) `X-DashScope-Async` (003:386). It fails that job only;
#: pausing the account for it would stop every other job for a fault of one request.
REQUEST_SHAPE_REFUSALS = ("does not support synchronous calls", "does not support asynchronous calls")


def error_class(code: str, http_status: int | None, message: str = "") -> type[RemoteError]:
    """The exception class a DashScope error belongs to."""
    if code.startswith("Throttling"):
        if code == "Throttling.AllocationQuota" and FREE_QUOTA_EXHAUSTED in message.lower():
            return AccountError
        return Throttled
    if code.startswith("AccessDenied") and any(shape in message.lower() for shape in REQUEST_SHAPE_REFUSALS):
        return PermanentRemoteError
    if code in _ACCOUNT_CODES or code.startswith("AccessDenied") or code.endswith("BillOverdue"):
        return AccountError
    if code in _PERMANENT_CODES or code.startswith("InvalidParameter"):
        return PermanentRemoteError
    if code in _TRANSIENT_CODES or code.startswith("InternalError"):
        return TransientRemoteError
    # An unknown code: fall back to the HTTP status.
    if http_status == 429:
        return Throttled
    if http_status in (401, 403):
        return AccountError
    if http_status is not None and 400 <= http_status < 500:
        return PermanentRemoteError
    return TransientRemoteError


def is_transient_task_failure(code: str | None) -> bool:
    """A FAILED task whose code says that resubmitting the same request may succeed."""
    return bool(code) and error_class(code or "", None) is TransientRemoteError
