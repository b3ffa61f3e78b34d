"""Account-level trouble (a refused key, arrears, access denied, free quota used up) pauses the account for
every worker at once: submits wait instead of failing one by one, until an operator resumes it
(`genq resume ACCOUNT`). The pause is logged, shown by `genq status`, and emitted once as an event."""

from __future__ import annotations

from typing import Any

import structlog

from workers.events import cloud_event
from workers.jobstore import JobStore

log = structlog.get_logger("genq.accounts")


def pause(store: JobStore, account: str, *, code: str, message: str, now: float) -> bool:
    """Pause `account`; True when this call paused it (and emitted the event, in the same atomic step), False
    if it already was."""
    event = cloud_event(
        "genq.account.paused",
        account,
        f"account/{account}/paused/{now}",
        {"account": account, "code": code, "message": message},
        now=now,
    )
    if not store.pause_account(account, {"code": code, "message": message, "at": now}, event):
        return False
    log.error("account paused: submits wait until `genq resume` is run", account=account, code=code, reason=message)
    return True


def paused(store: JobStore, account: str) -> dict[str, Any] | None:
    return store.paused_accounts().get(account)


def all_paused(store: JobStore) -> dict[str, dict[str, Any]]:
    return store.paused_accounts()


def resume(store: JobStore, account: str) -> bool:
    """Lift the pause; True when the account was paused."""
    resumed = store.resume_account(account)
    if resumed:
        log.warning("account resumed", account=account)
    return resumed
