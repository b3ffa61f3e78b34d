"""What a person sees: live progress of a batch, and the summary at the end.

Text that comes from users (prompts, file names, CSV cells) or from upstream (error messages) is shown as text,
never as something the terminal acts on: genq's consoles read no Rich markup (`PlainConsole`), and every
control character (ESC of an ANSI or OSC 8 hyperlink sequence, BEL, a carriage return) is shown escaped
(`printable`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from config.catalogue import Kind
from config.settings import Settings
from workers.job import TERMINAL, Status
from workers.jobstore import BatchSummary, JobStore
from workers.quota.quota import Quota, Scope
from workers.quota.spend import Ledger

_ORDER = [s.value for s in Status]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    r"""`value` as text with every control character shown as an escape (`\x1b`) and any lone surrogate (a
    file name that is not UTF-8) as `\udcXX`: user and upstream text reaches a terminal as text only."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


class PlainConsole(Console):
    """A console for genq's output: no Rich markup and no emoji codes read in what it prints, and every string
    it is given made `printable` (genq's own styles are `Text` objects, made of printable parts)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text with genq's own styles: plain strings as they are, `(text, style)` pairs styled; both printable."""
    return Text.assemble(*(printable(p) if isinstance(p, str) else (printable(p[0]), p[1]) for p in parts))


def cells(*values: object) -> list[Text]:
    """Table cells that show their values as text (no markup, no control characters)."""
    return [Text(printable(v)) for v in values]


def _in_flight(summary: BatchSummary) -> str:
    parts = [f"{summary.counts[s]} {s}" for s in _ORDER if s in summary.counts and Status(s) not in TERMINAL]
    return ", ".join(parts) or "-"


def wait_for_batch(
    store: JobStore,
    batch_id: str,
    console: Console,
    *,
    timeout_s: float | None = None,
    interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    eta: Callable[[BatchSummary], str] | None = None,
    eta_every_s: float = 10.0,
    stalled: Callable[[], str | None] | None = None,
) -> BatchSummary:
    """Show progress until every job of the batch is terminal (or `timeout_s` passes, or `stalled` names why
    the batch cannot go on by itself, which is then printed); return the summary. `eta` describes the time
    left; it is asked every `eta_every_s`."""
    started = clock()
    eta_text, eta_at = "", float("-inf")
    summary = store.batch_summary(batch_id) or BatchSummary(batch_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"batch {batch_id}", total=max(summary.total, 1), detail="")
        while True:
            summary = store.batch_summary(batch_id) or summary
            if summary.done:
                eta_text = ""
            elif eta is not None and clock() - eta_at >= eta_every_s:
                eta_text, eta_at = eta(summary), clock()
            detail = _in_flight(summary) + (f"  {eta_text}" if eta_text else "")
            progress.update(bar, total=max(summary.total, 1), completed=summary.terminal, detail=detail)
            if summary.done:
                return summary
            if timeout_s is not None and clock() - started > timeout_s:
                return summary
            why = stalled() if stalled is not None else None
            if why is not None:
                progress.console.print(styled(("stopped waiting: ", "yellow"), why))
                return summary
            time.sleep(interval_s)


def summary_table(summary: BatchSummary) -> Table:
    table = Table(title=f"batch {summary.batch_id}", show_header=True)
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for status in _ORDER:
        if summary.counts.get(status):
            table.add_row(status, str(summary.counts[status]))
    if summary.rejected:
        table.add_row("rejected rows", str(summary.rejected))
    table.add_row(Text("total accepted", style="bold"), Text(str(summary.total), style="bold"))
    return table


def money(units: float, model: str, settings: Settings) -> str:
    """The cost of `units` of `model` at the configured price, with its currency; "no price" without one."""
    price = settings.prices.get(model)
    if price is None:
        return "no price"
    return f"{units * price:.2f}" + (f" {settings.price_currency}" if settings.price_currency else "")


def amount(units: float, model: str, settings: Settings) -> str:
    """Billed units of `model` in words: `14 images`, `1 image`, `10 s of video`."""
    spec = settings.catalogue.get(model)
    if spec is not None and spec.kind is Kind.VIDEO:
        return f"{units:g} s of video"
    return f"{units:g} image" + ("" if units == 1 else "s")


def budget_lines(ledger: Ledger, held: int, settings: Settings, *, whose: str, then: str) -> list[Text]:
    """A spending ledger against its cap, in words: what is committed (billed, plus the largest bills of
    jobs under way), the cap, and what waits for it; nothing when there is no cap and nothing waits."""
    if not ledger.cap.any and not held:
        return []
    currency = f" {settings.price_currency}" if settings.price_currency else ""
    caps = []
    if ledger.cap.units is not None:
        caps.append(f"{ledger.committed_units:g} of {ledger.cap.units:g} units")
    if ledger.cap.money is not None:
        caps.append(f"{ledger.committed_money:.2f} of {ledger.cap.money:.2f}{currency}")
    line = [
        styled(f"{whose}: committed (billed, and the largest bills of jobs under way) ", "; ".join(caps) or "no cap")
    ]
    if ledger.no_price:
        line.append(
            styled(
                ("  no price", "yellow"),
                ": a job's model has no price (`prices`), so it cannot be admitted "
                "under a money cap; add its price, or cap in units",
            )
        )
    if ledger.reached:
        line.append(styled(("  cap reached", "yellow"), f": {held} job(s) wait; {then}" if held else f"; {then}"))
    return line


def billed_words(billed: dict[str, float], settings: Settings) -> str:
    """Model -> units billed, in words with their cost: `14 images of wan2.5-t2i-preview (no price)`."""
    return "; ".join(
        f"{amount(units, model, settings)} of {model} ({money(units, model, settings)})"
        for model, units in sorted(billed.items())
    )


def billed_table(billed: dict[str, float], settings: Settings, *, title: str) -> Table | None:
    """Model -> units billed, with the cost beside them at the configured prices; None when nothing was billed."""
    if not billed:
        return None
    table = Table("model", "billed", "cost", title=title)
    for model, units in sorted(billed.items()):
        table.add_row(*cells(model, amount(units, model, settings), money(units, model, settings)))
    return table


def rejected_table(records: list[dict[str, object]]) -> Table:
    table = Table(title="rejected rows (nothing was sent for these)", show_header=True)
    table.add_column("line", justify="right")
    table.add_column("field")
    table.add_column("reason")
    for record in records:
        table.add_row(*cells(record["line"], record["field"], record["reason"]))
    return table


def failed_table(store: JobStore, batch_id: str, limit: int = 20) -> Table | None:
    table = Table(title="jobs that did not succeed", show_header=True)
    for column in ("line", "job", "status", "code", "message"):
        table.add_column(column)
    shown = 0
    for job in store.jobs(batch_id):
        if job.terminal and job.status not in {Status.SUCCEEDED}:
            table.add_row(
                *cells(job.line, job.job_id, job.status.value, job.error_code or "", (job.error_message or "")[:120])
            )
            shown += 1
            if shown >= limit:
                break
    return table if shown else None


def quota_table(settings: Settings, store: JobStore, quota: Quota, *, now: float) -> Table | None:
    """Per account and model in use: jobs waiting for a slot, slots held of the limit, the submit-rate factor
    (below 1 after 429s) and any pause. None when nothing waits and no slot is held."""
    waiting = store.waiting(settings.catalogue.names())
    table = Table("account", "model", "waiting", "slots held", "rate factor", "paused for", title="Quota")
    rows = 0
    for account in settings.resolved_accounts():
        for model in settings.catalogue.names():
            scope = Scope(account.name, model)
            held = len(quota.slot_holders(scope, now))
            if not held and not waiting.get(model):
                continue
            cooling = quota.cooldown(scope, now)
            table.add_row(
                *cells(
                    account.name,
                    model,
                    waiting.get(model, 0),
                    f"{held} of {settings.limits(account.name, model).slot_limit}",
                    f"{cooling.factor:.2f}",
                    f"{cooling.wait_s:.1f} s" if cooling.wait_s else "-",
                )
            )
            rows += 1
    return table if rows else None
