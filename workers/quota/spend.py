"""Spending ledgers: what a batch, or an account on one UTC day, has committed to pay, against its cap.

A job is admitted only with a reservation of its largest possible bill (`workers/billing.py`:
`largest_bill`) in every ledger it counts in: its batch's, and its account's for the day of its admission.
The reservation is taken in one atomic step across those ledgers, and refused (nothing taken) when it would
carry any of them past its cap, in units (images, or seconds of video) or in money (at the configured
prices). So concurrent admissions on any number of workers can never together overshoot a cap: each sees the
others' reservations. When the job's bill is known (its task succeeded), the reservation becomes that bill;
when it ends without one, the reservation is given back; when its outcome cannot be known (a synchronous call
whose answer was lost, a task the service forgot), it stays, counted as spent.

`committed` is billed plus reserved. A ledger's first refusal appends one `genq.budget.cap_reached` event, in
the same step; raising the cap (`set_cap`) arms it again.

Redis: one hash per ledger (`genq:spend:batch:{batch_id}`, `genq:spend:day:{day}:{account}`, kept 40 days):
`committed_u`, `committed_m`, `cap_u`, `cap_m`, `reached`, and `j:{ref}` = "units money" per reservation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis

from workers.jobstore import keys

#: Ledgers outlive the days and batches they count (a month's caps can be read back).
LEDGER_TTL_S = 40 * 86400
#: Rounding slack: amounts are sums of floats (money), a cap is never crossed by more than this.
EPSILON = 1e-9
#: `money` of a job whose model has no price: it cannot be admitted under a money cap.
NO_PRICE = -1.0


def batch_ledger(batch_id: str) -> str:
    """The key of a batch's ledger."""
    return keys.spend_batch(batch_id)


def day_ledger(day: str, account: str) -> str:
    """The key of an account's ledger for the UTC day `day` (`YYYY-MM-DD`)."""
    return keys.spend_day(day, account)


@dataclass(frozen=True)
class Cap:
    """A ledger's cap in units and in money (None: none of that kind)."""

    units: float | None = None
    money: float | None = None

    @property
    def any(self) -> bool:
        return self.units is not None or self.money is not None


@dataclass(frozen=True)
class LedgerSpec:
    """A ledger an admission reserves in: its key, its cap (None: the cap stored in the ledger, set with
    `set_cap`), and how an event names it."""

    key: str
    cap: Cap | None
    label: dict[str, Any]


@dataclass(frozen=True)
class Refusal:
    """Why a reservation was refused: the ledger (index into those given), what it has committed, its cap."""

    index: int
    committed_units: float
    committed_money: float
    cap: Cap
    no_price: bool  # refused under a money cap because the job's model has no price


@dataclass(frozen=True)
class Reserved:
    """A reservation taken: `new` are the ledgers (indexes into those given) it was newly taken in (a ledger
    already holding one of the job kept it: a second admission reserves once, and gives back only its own)."""

    new: tuple[int, ...]


@dataclass(frozen=True)
class Ledger:
    committed_units: float = 0.0
    committed_money: float = 0.0
    reserved: int = 0  # jobs holding a reservation
    cap: Cap = Cap()
    reached: bool = False
    no_price: bool = False  # a job was kept out of a money cap because its model has no price


# KEYS: the ledgers, then the event stream. ARGV[1]: JSON {ref, units, money (text; money "-1": no price),
# caps = [[u, m] | null per ledger] (text, or null: leave it), events = [event JSON per ledger], maxlen, ttl_s}.
# A cap given is stored in its ledger (a changed one arms its event again); one not given is left as stored.
# Returns JSON {ok = true, new = [indexes of the ledgers newly reserved in]} or {ok = false, index (1-based),
# committed_u, committed_m, cap_u, cap_m, no_price}.
_RESERVE = """
local a = cjson.decode(ARGV[1])
local n = #KEYS - 1
local units, money = tonumber(a.units), tonumber(a.money)
local function num(v) if v == nil or v == false then return nil end return tonumber(v) end
for i = 1, n do
  local cap = a.caps[i]
  if type(cap) == 'table' then
    for k, name in ipairs({'cap_u', 'cap_m'}) do
      if cap[k] ~= cjson.null and redis.call('HGET', KEYS[i], name) ~= cap[k] then
        redis.call('HSET', KEYS[i], name, cap[k])
        redis.call('HDEL', KEYS[i], 'reached', 'no_price')
      end
    end
  end
  redis.call('EXPIRE', KEYS[i], a.ttl_s)
end
for i = 1, n do
  if redis.call('HEXISTS', KEYS[i], 'j:' .. a.ref) == 0 then
    local h = redis.call('HMGET', KEYS[i], 'committed_u', 'committed_m', 'cap_u', 'cap_m')
    local cu, cm = num(h[1]) or 0, num(h[2]) or 0
    local capu, capm = num(h[3]), num(h[4])
    local no_price = capm ~= nil and money < 0
    if no_price or (capu ~= nil and cu + units > capu + 1e-9) or (capm ~= nil and cm + money > capm + 1e-9) then
      if no_price then redis.call('HSET', KEYS[i], 'no_price', '1') end
      if redis.call('HSETNX', KEYS[i], 'reached', '1') == 1 then
        redis.call('XADD', KEYS[n + 1], 'MAXLEN', '~', a.maxlen, '*', 'event', a.events[i])
      end
      return cjson.encode({ok = false, index = i, committed_u = cu, committed_m = cm, cap_u = h[3] or '',
                           cap_m = h[4] or '', no_price = no_price})
    end
  end
end
local new = {}
local kept = money < 0 and '0' or a.money
for i = 1, n do
  if redis.call('HEXISTS', KEYS[i], 'j:' .. a.ref) == 0 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'committed_u', a.units)
    redis.call('HINCRBYFLOAT', KEYS[i], 'committed_m', kept)
    redis.call('HSET', KEYS[i], 'j:' .. a.ref, a.units .. ' ' .. kept)
    new[#new + 1] = i - 1
  end
  redis.call('EXPIRE', KEYS[i], a.ttl_s)
end
return cjson.encode({ok = true, new = new})
"""

# KEYS: the ledgers. ARGV: ref, units, money (negative: keep what was reserved). Turns the job's reservation
# into what it cost (or gives it back: 0). Returns how many ledgers held a reservation of the job.
_SETTLE = """
local settled = 0
for i = 1, #KEYS do
  local held = redis.call('HGET', KEYS[i], 'j:' .. ARGV[1])
  if held then
    local space = string.find(held, ' ')
    local ru, rm = tonumber(string.sub(held, 1, space - 1)), tonumber(string.sub(held, space + 1))
    local u, m = tonumber(ARGV[2]), tonumber(ARGV[3])
    if u < 0 then u = ru end
    if m < 0 then m = rm end
    redis.call('HINCRBYFLOAT', KEYS[i], 'committed_u', u - ru)
    redis.call('HINCRBYFLOAT', KEYS[i], 'committed_m', m - rm)
    redis.call('HDEL', KEYS[i], 'j:' .. ARGV[1])
    settled = settled + 1
  end
end
return settled
"""


class Spend(Protocol):
    def reserve(
        self,
        ledgers: Sequence[LedgerSpec],
        ref: str,
        *,
        units: float,
        money: float,
        events: Sequence[str],
        event_stream: str,
        maxlen: int,
    ) -> Refusal | Reserved:
        """Reserve `units` and `money` (`NO_PRICE`: unknown) for `ref` in every ledger, or in none: the refusal
        (and, the first time a ledger refuses, its event appended). A ledger already holding a reservation of
        `ref` keeps it as it is (a repeated admission reserves once)."""

    def settle(self, keys: Sequence[str], ref: str, *, units: float, money: float) -> int:
        """Replace `ref`'s reservations by what it cost (0: nothing; negative: keep the reservation as spent);
        how many ledgers held one."""

    def set_cap(self, key: str, cap: Cap) -> None:
        """Set the kinds of cap given (None: leave that kind as it is), and arm the cap-reached event again."""

    def clear_cap(self, key: str) -> None:
        """Remove the ledger's caps (both kinds), and arm the cap-reached event again."""

    def read(self, key: str) -> Ledger: ...

    def reservations(self, key: str) -> list[str]:
        """The refs holding a reservation in the ledger (the audit's view)."""


def _ledger(h: Mapping[str, str]) -> Ledger:
    def number(name: str) -> float | None:
        return float(h[name]) if h.get(name) not in (None, "") else None

    return Ledger(
        committed_units=number("committed_u") or 0.0,
        committed_money=number("committed_m") or 0.0,
        reserved=sum(1 for k in h if k.startswith("j:")),
        cap=Cap(number("cap_u"), number("cap_m")),
        reached=h.get("reached") == "1",
        no_price=h.get("no_price") == "1",
    )


def _caps(ledgers: Sequence[LedgerSpec]) -> list[list[str | None] | None]:
    """Each ledger's cap as the script takes it: strings (Redis keeps what it is given), None for none."""

    def text(value: float | None) -> str | None:
        return None if value is None else repr(float(value))

    return [None if spec.cap is None else [text(spec.cap.units), text(spec.cap.money)] for spec in ledgers]


class RedisSpend:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def reserve(
        self,
        ledgers: Sequence[LedgerSpec],
        ref: str,
        *,
        units: float,
        money: float,
        events: Sequence[str],
        event_stream: str,
        maxlen: int,
    ) -> Refusal | Reserved:
        arguments = {
            "ref": ref,
            "units": repr(float(units)),
            "money": repr(float(money)),
            "caps": _caps(ledgers),
            "events": list(events),
            "maxlen": str(maxlen),
            "ttl_s": LEDGER_TTL_S,
        }
        keys = [spec.key for spec in ledgers] + [event_stream]
        answer = json.loads(self._reserve(keys=keys, args=[json.dumps(arguments)]))
        if answer["ok"]:
            return Reserved(tuple(int(i) for i in (answer["new"] or [])))
        return Refusal(
            index=int(answer["index"]) - 1,
            committed_units=float(answer["committed_u"]),
            committed_money=float(answer["committed_m"]),
            cap=Cap(_maybe(answer["cap_u"]), _maybe(answer["cap_m"])),
            no_price=bool(answer["no_price"]),
        )

    def settle(self, keys: Sequence[str], ref: str, *, units: float, money: float) -> int:
        return int(self._settle(keys=list(keys), args=[ref, repr(float(units)), repr(float(money))]))

    def set_cap(self, key: str, cap: Cap) -> None:
        pipe = self._redis.pipeline()
        for name, value in (("cap_u", cap.units), ("cap_m", cap.money)):
            if value is not None:
                pipe.hset(key, name, repr(float(value)))
        pipe.hdel(key, "reached", "no_price")
        pipe.expire(key, LEDGER_TTL_S)
        pipe.execute()

    def clear_cap(self, key: str) -> None:
        self._redis.hdel(key, "cap_u", "cap_m", "reached", "no_price")

    def read(self, key: str) -> Ledger:
        return _ledger(cast(dict[str, str], self._redis.hgetall(key)))

    def reservations(self, key: str) -> list[str]:
        return [k[2:] for k in cast(list[str], self._redis.hkeys(key)) if k.startswith("j:")]


def _maybe(value: Any) -> float | None:
    return float(value) if value not in (None, "", False) else None


class MemorySpend:
    """The same ledgers in one process (the stage tests; a single-process embedding)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[str, dict[str, float | str]] = {}
        self.events: list[str] = []  # events appended (no stream here)

    def reserve(
        self,
        ledgers: Sequence[LedgerSpec],
        ref: str,
        *,
        units: float,
        money: float,
        events: Sequence[str],
        event_stream: str,
        maxlen: int,
    ) -> Refusal | Reserved:
        del event_stream, maxlen
        with self._lock:
            hashes = [self._ledgers.setdefault(spec.key, {}) for spec in ledgers]
            for spec, h in zip(ledgers, hashes, strict=True):
                if spec.cap is not None:
                    _store_cap(h, spec.cap)
            for i, h in enumerate(hashes):
                if f"j:{ref}" in h:
                    continue
                cap = Cap(_maybe(h.get("cap_u")), _maybe(h.get("cap_m")))
                cu, cm = float(h.get("committed_u", 0.0)), float(h.get("committed_m", 0.0))
                no_price = cap.money is not None and money < 0
                over_u = cap.units is not None and cu + units > cap.units + EPSILON
                over_m = cap.money is not None and cm + money > cap.money + EPSILON
                if no_price or over_u or over_m:
                    if no_price:
                        h["no_price"] = "1"
                    if h.get("reached") != "1":
                        h["reached"] = "1"
                        self.events.append(events[i])
                    return Refusal(i, cu, cm, cap, no_price)
            new = []
            kept = max(float(money), 0.0)
            for i, h in enumerate(hashes):
                if f"j:{ref}" not in h:
                    h["committed_u"] = float(h.get("committed_u", 0.0)) + units
                    h["committed_m"] = float(h.get("committed_m", 0.0)) + kept
                    h[f"j:{ref}"] = f"{float(units)!r} {kept!r}"
                    new.append(i)
            return Reserved(tuple(new))

    def settle(self, keys: Sequence[str], ref: str, *, units: float, money: float) -> int:
        settled = 0
        with self._lock:
            for key in keys:
                h = self._ledgers.get(key, {})
                held = h.pop(f"j:{ref}", None)
                if held is None:
                    continue
                ru, rm = (float(x) for x in str(held).split(" "))
                h["committed_u"] = float(h.get("committed_u", 0.0)) + (ru if units < 0 else units) - ru
                h["committed_m"] = float(h.get("committed_m", 0.0)) + (rm if money < 0 else money) - rm
                settled += 1
        return settled

    def set_cap(self, key: str, cap: Cap) -> None:
        with self._lock:
            h = self._ledgers.setdefault(key, {})
            _store_cap(h, cap)
            h.pop("reached", None)
            h.pop("no_price", None)

    def clear_cap(self, key: str) -> None:
        with self._lock:
            h = self._ledgers.setdefault(key, {})
            for name in ("cap_u", "cap_m", "reached", "no_price"):
                h.pop(name, None)

    def read(self, key: str) -> Ledger:
        with self._lock:
            return _ledger({k: str(v) for k, v in self._ledgers.get(key, {}).items()})

    def reservations(self, key: str) -> list[str]:
        with self._lock:
            return [k[2:] for k in self._ledgers.get(key, {}) if k.startswith("j:")]


def _store_cap(h: dict[str, float | str], cap: Cap) -> None:
    """The kinds of cap given, stored (a changed one arms the cap-reached event again); the others left."""
    for name, value in (("cap_u", cap.units), ("cap_m", cap.money)):
        if value is not None and h.get(name) != float(value):
            h[name] = float(value)
            h.pop("reached", None)
            h.pop("no_price", None)
