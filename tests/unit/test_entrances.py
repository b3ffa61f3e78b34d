"""Every way work enters is total: any value, any bytes in, a request or a rejection naming the field out.

Examples for each hostile input the review found, then property-based tests (Hypothesis) that throw arbitrary
JSON values at every request field and arbitrary bytes and rows at the CSV reader.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.catalogue import shipped_catalogue
from config.celery_app import create_app
from config.settings import ConfigInvalid, Settings, load_settings
from producer.batch import check_rows
from producer.csv_source import HEADER_MAX_COLUMNS, CsvFormatError, read_rows
from producer.scheduled_runs import batch_id_for
from workers import refs
from workers.errors import RequestInvalid
from workers.requests import (
    ENVELOPE_FIELDS,
    INPUT_FIELDS,
    INPUT_MAX_BYTES,
    METADATA_MAX_BYTES,
    METADATA_MAX_KEYS,
    GenerationRequest,
    RequestInput,
    parse_json_int,
    validate_envelope,
    validate_request,
)

MODEL = "wan2.5-t2i-preview"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def envelope(**fields: Any) -> GenerationRequest:
    raw = {"request_id": "r1", "prompt": "a cat", **fields}
    return validate_envelope(raw, catalogue=shipped_catalogue(), default_batch="requests", default_model=MODEL).request


def refused_envelope(**fields: Any) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        envelope(**fields)
    return info.value


# --- examples: what the review found -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"n": 1.5}, "n", "1.5"),
        ({"n": "1.5"}, "n", "'1.5'"),
        ({"n": [2]}, "n", "a list"),
        ({"prompt": 5}, "prompt", "the number 5"),
        ({"model": 7}, "model", "the number 7"),
        ({"size": 1280}, "size", "the number 1280"),
        ({"prompt_extend": 1}, "prompt_extend", "the number 1"),
        ({"watermark": None, "seed": {"a": 1}}, "seed", "an object"),
        ({"n": "9" * 5000}, "n", "5,000"),
        ({"metadata": "x"}, "metadata", "'x'"),
        ({"metadata": {"k": {"nested": 1}}}, "metadata.k", "an object"),
        ({"priority": 2.5}, "priority", "2.5"),
        ({"priority": True}, "priority", "true"),
        ({"request_id": "abc\n"}, "request_id", "'abc\\n'"),
        ({"batch_id": "b\n"}, "batch_id", "'b\\n'"),
        ({"promt": "typo"}, "promt", "unknown field"),
        ({"prompt": "a\x00cat"}, "prompt", "control character"),
        ({"prompt": "a\ud800cat"}, "prompt", "surrogate"),
    ],
)
def test_a_wrong_type_or_value_is_a_rejection_naming_the_field_and_what_came(
    fields: dict[str, Any], field: str, says: str
) -> None:
    """A value of the wrong JSON type, size or form is refused with the field and a reason quoting what came."""
    error = refused_envelope(**fields)
    assert error.field == field
    assert says in error.reason


def test_an_integer_of_5000_digits_in_json_is_refused_not_a_crash() -> None:
    """A JSON number of 5,000 digits (past Python's int conversion limit) is read and refused as too long."""
    raw = json.loads('{"request_id": "r", "prompt": "x", "n": ' + "9" * 5000 + "}", parse_int=parse_json_int)
    with pytest.raises(RequestInvalid) as info:
        validate_envelope(raw, catalogue=shipped_catalogue(), default_batch="requests", default_model=MODEL)
    assert info.value.field == "n" and "5,000 digits" in info.value.reason


def test_a_float_without_fraction_is_the_integer_json_schema_says_it_is() -> None:
    """`"n": 2.0` asks for two images, as JSON Schema's integer type reads it."""
    assert envelope(n=2.0).n == 2


@pytest.mark.parametrize("size", ["١٢٨٠*١٢٨٠", "01280*1280", "1280*01280", "1280*1280*2", " 1280 * 1280"])
def test_sizes_are_ascii_digits_without_leading_zeros(size: str) -> None:
    """Unicode digits, leading zeros and anything inside or beyond `W*H` are refused: a size is sent as written."""
    assert refused_envelope(size=size).field == "size"


def test_an_id_with_a_trailing_newline_is_refused_everywhere() -> None:
    """Ids match as a whole: `refs.is_id` refuses a trailing newline that `$` would have let through."""
    assert refs.is_id("abc") and not refs.is_id("abc\n") and not refs.is_id("a" * 65)


def test_metadata_is_bounded_in_entries_and_bytes() -> None:
    """64 entries pass and 65 are refused; so is metadata over 16 KiB in all; numbers are kept as JSON text."""
    assert envelope(metadata={f"k{i}": "v" for i in range(METADATA_MAX_KEYS)}).metadata["k0"] == "v"
    assert refused_envelope(metadata={f"k{i}": "v" for i in range(METADATA_MAX_KEYS + 1)}).field == "metadata"
    assert refused_envelope(metadata={"a": "x" * 9000, "b": "y" * 9000}).field == "metadata"
    assert METADATA_MAX_BYTES == 16 * 1024
    assert envelope(metadata={"order": 1842, "rush": True}).metadata == {"order": "1842", "rush": "true"}


def write(tmp_path: Path, data: bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_csv_row_over_the_input_limit_is_rejected_and_the_rest_goes_on(tmp_path: Path) -> None:
    """A 200 KB prompt (over the csv module's own 128 KiB field limit) rejects its row, naming the limit; the
    rows after it are read."""
    path = write(tmp_path, b'prompt,n\n"' + b"x" * 200_000 + b'",1\na cat,1\n')
    report = check_rows(Settings(), read_rows(path))
    assert report.valid == 1
    assert [(r["line"], r["field"]) for r in report.rejected] == [(2, "row")]
    assert f"{INPUT_MAX_BYTES:,}" in str(report.rejected[0]["reason"])


def test_a_csv_with_a_bad_byte_late_is_unreadable_as_a_whole(tmp_path: Path) -> None:
    """A bad UTF-8 byte after row 1,000 makes the check pass fail with the line, before anything is enqueued."""
    rows = b"".join(f"prompt {i}\n".encode() for i in range(1000))
    path = write(tmp_path, b"prompt\n" + rows + b"caf\xe9\n")
    with pytest.raises(CsvFormatError, match=r"not UTF-8.* on line 1002$"):
        check_rows(Settings(), read_rows(path))


def test_a_csv_header_with_too_many_or_repeated_columns_is_refused(tmp_path: Path) -> None:
    """2,000 columns, or a column named twice, is refused with the count or the name, not read row by row; a
    header of 300,000 columns is refused before it is even split, as a line over 1 MiB."""
    wide = b"prompt," + b",".join(b"c%d" % i for i in range(1999)) + b"\na cat\n"
    with pytest.raises(CsvFormatError, match=f"2,000 columns; at most {HEADER_MAX_COLUMNS}"):
        list(read_rows(write(tmp_path, wide)))
    wider = b"prompt," + b",".join(b"c%d" % i for i in range(300_000)) + b"\na cat\n"
    with pytest.raises(CsvFormatError, match="physical line 1 is over 1,048,576 characters"):
        list(read_rows(write(tmp_path, wider, "wider.csv")))
    with pytest.raises(CsvFormatError, match=r"names 'prompt' twice \(columns 1 and 3\)"):
        list(read_rows(write(tmp_path, b"prompt,n,Prompt\na,1,b\n", "twice.csv")))


def test_a_rejected_rows_record_is_clipped(tmp_path: Path) -> None:
    """The record kept for a rejected row holds at most 16 fields of at most 200 characters each."""
    header = "prompt," + ",".join(f"m{i}" for i in range(100))
    path = write(tmp_path, f"{header}\n{'p' * 5000},{','.join('v' * 300 for _ in range(100))}\n".encode())
    (row,) = list(read_rows(path))
    clipped = row.clipped_fields()
    assert len(clipped) == 16 and max(len(v) for v in clipped.values()) == 200


# --- properties ------------------------------------------------------------------------------------------------

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=30)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**19, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
# Two levels of nesting, written out (st.recursive warns, at random, that its extend cannot recurse).
nested = scalars | st.lists(scalars, max_size=3) | st.dictionaries(any_text, scalars, max_size=3)
json_values = nested | st.lists(nested, max_size=3) | st.dictionaries(any_text, nested, max_size=3)
plausible = st.sampled_from(
    ["1", "4", "2", " 3 ", "0", "1280*1280", "1328*1328", "١٢٨٠*١٢٨٠", "768*2700", MODEL, "qwen-image", "true", "no"]
)
field_values = plausible | json_values | st.integers(min_value=-3, max_value=6)


def assert_answered(outcome: GenerationRequest | RequestInvalid) -> None:
    """A request whose rules hold, or a rejection with a field and a reason that can be stored and printed."""
    if isinstance(outcome, RequestInvalid):
        assert outcome.field and outcome.reason
        (outcome.field + outcome.reason).encode("utf-8")  # it goes into Redis and onto a terminal
        return
    assert 1 <= outcome.n <= 4 and outcome.prompt
    assert outcome.size.isascii() and not outcome.size.startswith("0")
    outcome.canonical_json().encode("utf-8")


@FUZZ
@given(st.fixed_dictionaries({}, optional={name: field_values for name in INPUT_FIELDS}), json_values)
def test_any_values_in_any_field_give_a_request_or_a_rejection(fields: dict[str, Any], metadata: Any) -> None:
    """For arbitrary JSON values in every request field and as metadata, validation returns a request or
    raises `RequestInvalid` with a non-empty field and reason, never another exception."""
    try:
        outcome: GenerationRequest | RequestInvalid = validate_request(
            RequestInput(**fields, metadata=metadata), catalogue=shipped_catalogue(), default_model=MODEL
        )
    except RequestInvalid as exc:
        outcome = exc
    assert_answered(outcome)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={name: field_values for name in ENVELOPE_FIELDS}
        | {"request_id": st.sampled_from(["r1", "abc\n", "", "-x"]) | json_values},
    )
    | json_values
)
def test_any_stream_request_object_gives_an_envelope_or_a_rejection(raw: Any) -> None:
    """For any JSON value as a stream request, `validate_envelope` answers with a request or a rejection."""
    try:
        outcome: GenerationRequest | RequestInvalid = validate_envelope(
            raw, catalogue=shipped_catalogue(), default_batch="requests", default_model=MODEL
        ).request
    except RequestInvalid as exc:
        outcome = exc
    assert_answered(outcome)


def check_file(path: Path) -> None:
    """Reading then checking `path` either refuses the whole file with a reason or answers every row."""
    try:
        rows = list(read_rows(path))
        report = check_rows(Settings(), iter(rows))
    except CsvFormatError as exc:
        assert str(exc)
        return
    assert report.valid + len(report.rejected) == len(rows)
    assert all(r["field"] and r["reason"] for r in report.rejected)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from([b"", b"prompt,n,size\n", b"\xef\xbb\xbfPROMPT;x\r\n", b'"prompt\n']))
def test_any_bytes_as_a_csv_are_read_or_refused_as_a_whole(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, header: bytes
) -> None:
    """Arbitrary bytes (NULs, bad UTF-8, stray quotes), with or without a usable header, as a CSV give rows that
    are each answered, or one `CsvFormatError`; never another exception."""
    check_file(write(tmp_path_factory.mktemp("csv"), header + data))


column_names = st.sampled_from(["prompt", "n", "size", "model", "id", "seed", "m1", "", "Prompt"]) | any_text
cells = any_text | plausible | st.integers(min_value=0, max_value=150_000).map(lambda n: "x" * n)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(
        st.sampled_from(["prompt", "n", "size", "model", "id", "seed", "m1", "", "Prompt"]) | any_text, max_size=6
    ),
    st.lists(st.lists(cells, max_size=7), max_size=5),
    st.booleans(),
    st.sampled_from(["\n", "\r\n"]),
)
def test_any_rows_with_any_header_are_answered_row_by_row(
    tmp_path_factory: pytest.TempPathFactory, header: list[str], rows: list[list[str]], bom: bool, newline: str
) -> None:
    """Arbitrary headers and rows (quotes, huge fields, NULs, CRLF, a BOM, too many values) written as a real
    CSV are answered row by row, or the file is refused as a whole with a reason."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(["prompt", *header])
    writer.writerows(rows)
    try:
        data = ("\ufeff" if bom else "").encode() + buffer.getvalue().encode("utf-8")
    except UnicodeEncodeError:
        data = buffer.getvalue().encode("utf-8", "surrogatepass")  # bytes that are not UTF-8
    check_file(write(tmp_path_factory.mktemp("csv"), data))


# --- the config file ---------------------------------------------------------------------------------------------

toml_scalars = st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.floats() | any_text
setting_names = st.sampled_from(sorted(Settings.model_fields)) | st.sampled_from(["accounts", "schedules", "prices"])


def toml_value(value: Any) -> str:
    """A TOML literal for a generated value (JSON's string and number forms are TOML's, NaN aside)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@FUZZ
@given(
    st.dictionaries(
        setting_names,
        toml_scalars | st.lists(toml_scalars, max_size=3) | st.dictionaries(any_text, toml_scalars, max_size=3),
        max_size=4,
    )
    | st.text(max_size=80).map(lambda text: {"": text})
)
def test_any_config_file_gives_settings_or_one_clear_error(
    tmp_path_factory: pytest.TempPathFactory, document: dict[str, Any]
) -> None:
    """A config file of arbitrary settings and values (or arbitrary text) gives settings or `ConfigInvalid`
    naming the problem; never a traceback of another kind."""
    text = document[""] if set(document) == {""} else "\n".join(f"{k} = {toml_value(v)}" for k, v in document.items())
    path = tmp_path_factory.mktemp("config") / "genq.toml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("GENQ_") or n == "DASHSCOPE_API_KEY"]:
            env.delenv(name)
        try:
            load_settings(path).resolved_accounts()
        except ConfigInvalid as exc:
            assert str(exc)


# --- scheduled inputs ----------------------------------------------------------------------------------------------

file_names = st.text(alphabet=st.characters(exclude_categories=()), min_size=1, max_size=90).map(lambda s: s + ".csv")


@FUZZ
@given(st.lists(file_names, min_size=2, max_size=6, unique=True), st.sampled_from(["/data/inbox/", "s3://b/p/"]))
def test_any_input_names_give_valid_distinct_batch_ids(names: list[str], prefix: str) -> None:
    """Arbitrary file names (spaces, slashes, Unicode, surrogates, 90 characters) of one day's inputs give
    valid batch ids of at most 64 characters, one per input, stable from tick to tick."""
    ids = [batch_id_for("nightly", "20261201", prefix + name) for name in names]
    assert all(refs.is_id(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == [batch_id_for("nightly", "20261201", prefix + name) for name in names]


def test_names_that_slug_alike_get_their_own_batches() -> None:
    """`b c.csv` and `b-c.csv`, one name under two prefixes, and two long stems alike in their first 64
    characters each get a batch of their own."""
    sources = ["/in/b c.csv", "/in/b-c.csv", "s3://b/x/a.csv", "s3://b/y/a.csv", "/in/" + "s" * 80 + "1.csv"]
    sources.append("/in/" + "s" * 80 + "2.csv")
    assert len({batch_id_for("nightly", "20261201", source) for source in sources}) == len(sources)


env_names = st.sampled_from(sorted(f"GENQ_{name.upper()}" for name in Settings.model_fields)) | st.just("GENQ_CONFIG")
env_values = (
    st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
    | st.sampled_from(["[]", "{}", '[{"name": "a", "cron": "0 25 * * *", "source": "/x"}]', "1e999", "-1", "true"])
    | st.sampled_from(['[{"name": "a", "cron": "x x x x x", "source": "/x"}]', '{"m": "x"}', "Mars/Base", "mars"])
)


@FUZZ
@given(st.dictionaries(env_names, env_values, max_size=4))
def test_any_environment_gives_settings_and_an_app_or_one_clear_error(variables: dict[str, str]) -> None:
    """Arbitrary `GENQ_*` environment variables give settings from which the Celery app (beat's crontabs
    included) and every account's base URL are built, or `ConfigInvalid` naming the problem; nothing else."""
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("GENQ_") or n == "DASHSCOPE_API_KEY"]:
            env.delenv(name)
        for name, value in variables.items():
            env.setenv(name, value)
        try:
            settings_ = load_settings()
        except ConfigInvalid as exc:
            assert str(exc)
            return
        create_app(settings_)
        for account in settings_.resolved_accounts():
            _ = account.resolved_base_url
