"""Read a prompts CSV as a stream of rows, each with the line number it starts on.

UTF-8 with or without a BOM, LF or CRLF line ends, quoted fields spanning lines. Known columns map to
request fields; any other column is kept as user metadata. Memory is constant in the file's length.

This module owns the file's format only; what a row may hold is `workers/requests.py`'s to say. Whatever the
bytes, reading either yields rows or raises `CsvFormatError` naming the line and the reason: a file that is
not UTF-8, has no usable header, or a field so large that its row cannot be told from the next (an unclosed
quote, usually) is unreadable as a whole; a row that is merely too long is yielded and rejected by its rules.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from workers.errors import GenqError
from workers.requests import INPUT_MAX_BYTES, METADATA_MAX_KEYS, RequestInput

KNOWN_COLUMNS = (
    "id",
    "prompt",
    "negative_prompt",
    "model",
    "size",
    "n",
    "seed",
    "prompt_extend",
    "watermark",
    "duration",
)


#: The csv module's own cap on one field (128 KiB by default), raised so that an over-long row is rejected
#: as a row (`INPUT_MAX_BYTES`) rather than ending the file; past this, the file is unreadable.
FIELD_MAX_CHARS = 16 * INPUT_MAX_BYTES
#: Columns a header may name: the known ones, the metadata a row may carry, and room for empty ones.
HEADER_MAX_COLUMNS = 4 * (len(KNOWN_COLUMNS) + METADATA_MAX_KEYS)
#: Fields of a rejected row kept on its record, each clipped: enough to find the row, bounded in Redis.
REJECTED_FIELDS_KEPT, REJECTED_VALUE_CHARS = 16, 200


class CsvFormatError(GenqError):
    """The file as a whole cannot be read (no header, no prompt column, not UTF-8, a runaway field)."""


@dataclass(frozen=True)
class CsvRow:
    line: int  # the physical line the record starts on (the header is line 1)
    fields: dict[str, str]
    size_bytes: int = 0  # of its values, as UTF-8
    extra_values: int = 0  # values past the header's columns (a stray comma, an unquoted field)
    problem: tuple[str, str] | None = None  # (field, reason) found before validation: a value of the wrong type

    def clipped_fields(self) -> dict[str, str]:
        """The row's first fields, each clipped, for the record of a rejected row."""
        kept = list(self.fields.items())[:REJECTED_FIELDS_KEPT]
        return {k[:REJECTED_VALUE_CHARS]: v[:REJECTED_VALUE_CHARS] for k, v in kept}

    @property
    def client_id(self) -> str:
        return self.fields.get("id", "").strip()

    def to_input(self, defaults: dict[str, str] | None = None) -> RequestInput:
        """The row as raw request fields; a column the row leaves empty takes the batch's default, if any."""
        f = {**(defaults or {}), **{k: v for k, v in self.fields.items() if v.strip()}}
        return RequestInput(
            prompt=f.get("prompt"),
            model=f.get("model"),
            negative_prompt=f.get("negative_prompt"),
            size=f.get("size"),
            n=f.get("n"),
            seed=f.get("seed"),
            prompt_extend=f.get("prompt_extend"),
            watermark=f.get("watermark"),
            duration=f.get("duration"),
            metadata={k: v for k, v in f.items() if k not in KNOWN_COLUMNS and v},
        )


@contextmanager
def stable_copy(path: Path) -> Iterator[Path]:
    """A private copy of `path` for the length of the block, so that the check pass and the enqueue pass read the
    same bytes: a pipe (`/dev/stdin`) can be read only once, and a file can change or vanish between the two."""
    with tempfile.TemporaryDirectory(prefix="genq-input-") as tmp:
        copy = Path(tmp) / "input.csv"
        with path.open("rb") as source, copy.open("wb") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        yield copy


def read_rows(path: Path, *, name: str | None = None) -> Iterator[CsvRow]:
    """Yield the data rows of `path` (called `name` in errors, if given). Raises `CsvFormatError` for a file that
    cannot be read as a whole. Memory is bounded per row: no physical line is read past `FIELD_MAX_CHARS`."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_MAX_CHARS))
    shown = name or str(path)
    line = 1
    try:
        with path.open(encoding="utf-8-sig", newline="", errors="strict") as handle:
            reader = csv.reader(_bounded_lines(handle, shown))
            header = next(reader, None)
            if header is None:
                raise CsvFormatError(f"{shown}: the file is empty; it needs a header row with a 'prompt' column")
            columns = _columns(shown, header)
            line = start = reader.line_num + 1
            for values in reader:
                line, start = start, reader.line_num + 1
                if not any(v.strip() for v in values):
                    continue  # blank line
                fields = dict(zip(columns, values, strict=False))
                extra = len(values) - len(columns) if len(values) > len(columns) else 0
                yield CsvRow(line, fields, sum(len(v.encode("utf-8", "replace")) for v in values), extra)
                line = start
    except UnicodeDecodeError as exc:
        where = _first_undecodable_line(path)
        raise CsvFormatError(f"{shown}: not UTF-8 text: {exc.reason} on line {where or line}") from exc
    except csv.Error as exc:
        raise CsvFormatError(
            f"{shown}: line {line}: {exc} (a field over {FIELD_MAX_CHARS:,} characters: an unclosed quote?)"
            if "field larger" in str(exc)
            else f"{shown}: line {line}: {exc}"
        ) from exc


def _bounded_lines(handle: TextIO, shown: str) -> Iterator[str]:
    """The file's physical lines, refusing one over `FIELD_MAX_CHARS` before it is read whole (a line of 30
    million commas would otherwise become a row of 30 million values in memory)."""
    number = 0
    while True:
        text = handle.readline(FIELD_MAX_CHARS + 1)
        if not text:
            return
        number += 1
        if len(text) > FIELD_MAX_CHARS:
            raise CsvFormatError(f"{shown}: physical line {number} is over {FIELD_MAX_CHARS:,} characters")
        yield text


def _first_undecodable_line(path: Path) -> int | None:
    """The physical line of the file's first byte that is not UTF-8 (the text reader decodes ahead in chunks,
    so where it fails says little)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _columns(path: str, header: list[str]) -> list[str]:
    """The header's column names, lower-cased; refuses a header genq could not map back to its rows."""
    if len(header) > HEADER_MAX_COLUMNS:
        raise CsvFormatError(
            f"{path}: the header has {len(header):,} columns; at most {HEADER_MAX_COLUMNS} "
            f"({len(KNOWN_COLUMNS)} known ones and up to {METADATA_MAX_KEYS} of metadata per row)"
        )
    columns = [name.strip().lower() for name in header]
    if "prompt" not in columns:
        found = ", ".join(c[:40] for c in columns[:20])
        raise CsvFormatError(f"{path}: the header has no 'prompt' column (found: {found})")
    seen: dict[str, int] = {}
    for number, name in enumerate(columns, start=1):
        if name and name in seen:
            raise CsvFormatError(f"{path}: the header names {name[:40]!r} twice (columns {seen[name]} and {number})")
        seen[name] = number
    return columns
