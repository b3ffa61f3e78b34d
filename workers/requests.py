"""A generation request, and its validation against the model catalogue before anything is sent.

Every producer (CSV, request stream, schedule) maps its format onto a `RequestInput` of raw values, then calls
`validate_request` (the stream: `validate_envelope`), which either returns a canonical `GenerationRequest` or
raises `RequestInvalid` naming the field, the expected form and what came. This module owns every rule of what
a request may be, its limits included; the entrances own only their format. Validation is total: any value
of any type gives a request or a `RequestInvalid`, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from config.catalogue import SEED_MAX, SEED_MIN, Catalogue, Kind, ModelSpec, parse_size
from workers import refs
from workers.errors import RequestInvalid

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_INTEGER = re.compile(r"[+-]?[0-9]+")

#: What a request may carry (docs/csv.md, docs/requests.md). They bound memory and what every stage reloads.
INPUT_MAX_BYTES = 64 * 1024  # one CSV row or one stream entry's request, as read
TEXT_MAX_CHARS = 10_000  # any text field, before the model's own (smaller) prompt limit
METADATA_MAX_KEYS = 64
METADATA_KEY_MAX_CHARS = 64
METADATA_MAX_BYTES = 16 * 1024  # UTF-8 of every key and value together
INTEGER_MAX_DIGITS = 20
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
#: The fields of a request besides its prompt, in the order they are documented.
INPUT_FIELDS = ("prompt", "model", "negative_prompt", "size", "n", "seed", "prompt_extend", "watermark", "duration")
#: The keys of a request object on the stream.
ENVELOPE_FIELDS = (*INPUT_FIELDS, "request_id", "batch_id", "priority", "metadata")
ID_RULE = "must be 1-64 of letters, digits, '.', '_' or '-', starting with a letter or digit"
# Control characters other than tab and line ends are never meant (a NUL from a broken export, an ANSI escape).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class OversizedNumber:
    """A JSON number too long to be a value of any field, kept as its digit count (it is never converted:
    Python refuses to turn more than 4,300 digits into an int, and nothing here needs more than 20)."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("+-"))

    def __repr__(self) -> str:
        return f"a number of {self.digits:,} digits"


def parse_json_int(text: str) -> int | OversizedNumber:
    """`json.loads(..., parse_int=parse_json_int)`: a JSON integer, unless it is too long to be one of ours."""
    return int(text) if len(text) <= INTEGER_MAX_DIGITS + 1 else OversizedNumber(text)


def shown(value: object, limit: int = 60) -> str:
    """`value` as a reason quotes it: the JSON type for what is not text, text as a clipped Python literal
    (which escapes control characters and lone surrogates, so a reason is always printable and encodable)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, OversizedNumber):
        return repr(value)
    if isinstance(value, int):
        return f"the number {value}" if value.bit_length() < 200 else "a number of over 60 digits"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class GenerationRequest:
    """A request that passed validation, with every default filled in (n is always explicit: it is billed)."""

    model: str
    prompt: str
    negative_prompt: str = ""
    size: str = ""
    n: int = 1
    seed: int | None = None
    prompt_extend: bool = True
    watermark: bool = False
    duration_s: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def canonical_json(self) -> str:
        """The request as stable JSON: equal requests give equal strings (used for idempotency keys)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        return cls(**data)


@dataclass
class RequestInput:
    """Raw fields as a producer read them, of any type (text from a CSV, any JSON value from the stream);
    `None` or blank text means "not given, use the default". Nothing here is trusted until validated."""

    prompt: object = None
    model: object = None
    negative_prompt: object = None
    size: object = None
    n: object = None
    seed: object = None
    prompt_extend: object = None
    watermark: object = None
    duration: object = None
    metadata: object = None


@dataclass(frozen=True)
class Envelope:
    """A stream request that passed validation: who asked (its id), where it goes, and what it asks for."""

    request_id: str
    batch_id: str
    priority: int
    request: GenerationRequest


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def _text(name: str, value: object, *, max_chars: int = TEXT_MAX_CHARS) -> str:
    """A text field, stripped; refuses other JSON types, over-long text, control characters, lone surrogates."""
    if not isinstance(value, str):
        raise RequestInvalid(name, f"must be text, got {shown(value)}")
    if len(value) > max_chars:
        raise RequestInvalid(name, f"{len(value):,} characters is over the limit of {max_chars:,}")
    bad = _CONTROL.search(value)
    if bad:
        raise RequestInvalid(name, f"contains the control character {bad[0]!r} at position {bad.start()}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestInvalid(name, f"is not valid Unicode text (a lone surrogate at position {exc.start})") from None
    return value.strip()


def _as_int(name: str, value: object) -> int:
    """An integer from a JSON integer (or a float with no fraction, as JSON Schema counts it) or its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        digits = value.strip().lstrip("+-")
        if len(digits) > INTEGER_MAX_DIGITS:
            raise RequestInvalid(
                name, f"must be an integer of at most {INTEGER_MAX_DIGITS} digits; got {len(digits):,}"
            )
        number = int(value.strip())
    else:
        raise RequestInvalid(name, f"must be an integer, got {shown(value)}")
    if abs(number) >= 10**INTEGER_MAX_DIGITS:
        raise RequestInvalid(name, f"must be an integer of at most {INTEGER_MAX_DIGITS} digits; got {shown(value)}")
    return number


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise RequestInvalid(name, f"must be true or false, got {shown(value)}")


def check_id(name: str, value: object) -> str:
    """An id that names a job or a batch (and so a prefix in the bucket): the whole text must match."""
    if not isinstance(value, str) or not refs.is_id(value):
        raise RequestInvalid(name, f"{ID_RULE}; got {shown(value)}")
    return value


def check_priority(value: object) -> int:
    if value is None:
        return PRIORITY_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise RequestInvalid("priority", f"must be an integer {PRIORITY_MIN}-{PRIORITY_MAX}, got {shown(value)}")
    return value


def check_metadata(value: object) -> dict[str, str]:
    """User metadata: an object of at most 64 named text values (JSON numbers and booleans are kept as their
    JSON text), at most 16 KiB in all."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestInvalid("metadata", f"must be an object of text values, got {shown(value)}")
    if len(value) > METADATA_MAX_KEYS:
        raise RequestInvalid("metadata", f"{len(value):,} entries is over the limit of {METADATA_MAX_KEYS}")
    metadata: dict[str, str] = {}
    size = 0
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise RequestInvalid("metadata", f"every entry needs a name; got {shown(key)}")
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise RequestInvalid("metadata", f"the name {shown(key, 40)} is over {METADATA_KEY_MAX_CHARS} characters")
        name = _text("metadata", key, max_chars=METADATA_KEY_MAX_CHARS)
        if name in metadata:
            raise RequestInvalid("metadata", f"two entries are named {shown(name, 40)} (names are trimmed)")
        if isinstance(item, bool | int | float) and not isinstance(item, OversizedNumber):
            text = json.dumps(item)
        elif isinstance(item, str):
            text = _text(f"metadata.{name}", item, max_chars=METADATA_MAX_BYTES)
        else:
            raise RequestInvalid(f"metadata.{name}", f"must be text, a number or a boolean, got {shown(item)}")
        size += len(name.encode()) + len(text.encode())
        if size > METADATA_MAX_BYTES:
            raise RequestInvalid("metadata", f"is over the limit of {METADATA_MAX_BYTES:,} bytes in all")
        metadata[name] = text
    return metadata


def check_input_size(name: str, size_bytes: int) -> None:
    """A whole input (a CSV row, a stream entry) is bounded before its fields are looked at."""
    if size_bytes > INPUT_MAX_BYTES:
        raise RequestInvalid(name, f"{size_bytes:,} bytes is over the limit of {INPUT_MAX_BYTES:,}")


def check_size(spec: ModelSpec, size: str) -> None:
    """Raise `RequestInvalid` unless `size` is `W*H` and fits the model's size rule."""
    dimensions = parse_size(size)
    if dimensions is None:
        hint = " (use '*' between width and height, not 'x')" if "x" in size.lower() else ""
        raise RequestInvalid(
            "size", f"must be W*H in digits 0-9 without leading zeros, such as 1280*1280; got {shown(size)}{hint}"
        )
    problem = spec.sizes.problem(spec.name, size, *dimensions)
    if problem:
        raise RequestInvalid("size", problem)


def validate_request(raw: RequestInput, *, catalogue: Catalogue, default_model: str) -> GenerationRequest:
    """The canonical request against the models in force, or `RequestInvalid` naming the first field that breaks
    a rule. Total: whatever the types and sizes of `raw`'s values, it returns or raises `RequestInvalid`,
    nothing else."""
    model = _text("model", raw.model, max_chars=200) if _given(raw.model) else default_model
    spec = catalogue.get(model)
    if spec is None:
        raise RequestInvalid("model", f"unknown model {shown(model)}; known models: {', '.join(catalogue)}")

    prompt = _text("prompt", raw.prompt) if raw.prompt is not None else ""
    if not prompt:
        raise RequestInvalid("prompt", "is required and must not be empty")
    if len(prompt) > spec.prompt_max_chars:
        raise RequestInvalid(
            "prompt", f"{len(prompt):,} characters is over {spec.name}'s limit of {spec.prompt_max_chars}"
        )
    negative = _text("negative_prompt", raw.negative_prompt) if raw.negative_prompt is not None else ""
    if negative and not spec.negative_prompt:
        raise RequestInvalid("negative_prompt", f"{spec.name} does not take a negative prompt")
    # Refused, not sent: the service would cut it at the limit without a word (003:129), and what was cut is
    # what the image was meant not to show. A billed image that ignores half its constraints is worse than a
    # rejection that names the limit.
    if len(negative) > spec.negative_prompt_max_chars:
        raise RequestInvalid(
            "negative_prompt",
            f"{len(negative):,} characters is over {spec.name}'s limit of {spec.negative_prompt_max_chars} (the "
            "service would silently cut the rest)",
        )

    size = _text("size", raw.size, max_chars=200) if _given(raw.size) else spec.default_size
    check_size(spec, size)

    n = _as_int("n", raw.n) if _given(raw.n) else spec.n_min
    if not spec.n_min <= n <= spec.max_n:
        limit = f"{spec.n_min}-{spec.max_n}" if spec.n_min < spec.max_n else f"{spec.n_min}"
        raise RequestInvalid("n", f"must be {limit} for {spec.name}; got {n}")

    seed = _as_int("seed", raw.seed) if _given(raw.seed) else None
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise RequestInvalid("seed", f"must be {SEED_MIN}-{SEED_MAX}; got {seed}")

    duration: int | None = None
    if spec.kind is Kind.VIDEO:
        duration = _as_int("duration", raw.duration) if _given(raw.duration) else spec.default_duration_s
        if duration not in spec.durations_s:
            allowed = ", ".join(str(d) for d in spec.durations_s)
            raise RequestInvalid("duration", f"{spec.name} accepts {allowed} seconds; got {duration}")
    elif _given(raw.duration):
        raise RequestInvalid("duration", f"applies to video models only; {spec.name} makes images")

    return GenerationRequest(
        model=spec.name,
        prompt=prompt,
        negative_prompt=negative,
        size=size,
        n=n,
        seed=seed,
        prompt_extend=_as_bool("prompt_extend", raw.prompt_extend) if _given(raw.prompt_extend) else True,
        watermark=_as_bool("watermark", raw.watermark) if _given(raw.watermark) else False,
        duration_s=duration,
        metadata=check_metadata(raw.metadata),
    )


def validate_envelope(raw: object, *, catalogue: Catalogue, default_batch: str, default_model: str) -> Envelope:
    """A stream request object (docs/requests.md), or `RequestInvalid` naming the first field at fault."""
    if not isinstance(raw, dict):
        raise RequestInvalid("request", f"must be a JSON object, got {shown(raw)}")
    unknown = sorted(str(k) for k in raw if k not in ENVELOPE_FIELDS)
    if unknown:
        name = repr(unknown[0])[1:-1][:40]  # escaped, so any key can be named in an event and on a terminal
        raise RequestInvalid(
            name or "request", f"unknown field {shown(unknown[0], 40)}; known: {', '.join(ENVELOPE_FIELDS)}"
        )
    request_id = check_id("request_id", raw.get("request_id"))
    batch_id = check_id("batch_id", raw["batch_id"]) if raw.get("batch_id") is not None else default_batch
    priority = check_priority(raw.get("priority"))
    request = validate_request(
        RequestInput(**{name: raw.get(name) for name in INPUT_FIELDS}, metadata=raw.get("metadata")),
        catalogue=catalogue,
        default_model=default_model,
    )
    return Envelope(request_id, batch_id, priority, request)
