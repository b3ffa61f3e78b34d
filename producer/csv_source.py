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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def read_rows(path: Path) -> Iterator[CsvRow]:
    """Yield the data rows of `path`. Raises `CsvFormatError` for a file that cannot be read as a whole."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_MAX_CHARS))
    line = 1
    try:
        with path.open(encoding="utf-8-sig", newline="", errors="strict") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CsvFormatError(f"{path}: the file is empty; it needs a header row with a 'prompt' column")
            columns = _columns(path, header)
            line = start = reader.line_num + 1
            for values in reader:
                line, start = start, reader.line_num + 1
                if not any(v.strip() for v in values):
                    continue  # blank line
                fields = dict(zip(columns, values, strict=False))
                if len(values) > len(columns):
                    fields["_extra_values"] = ",".join(values[len(columns) :])[:REJECTED_VALUE_CHARS]
                yield CsvRow(line, fields, sum(len(v.encode("utf-8", "replace")) for v in values))
                line = start
    except UnicodeDecodeError as exc:
        where = _first_undecodable_line(path)
        raise CsvFormatError(f"{path}: not UTF-8 text: {exc.reason} on line {where or line}") from exc
    except csv.Error as exc:
        raise CsvFormatError(
            f"{path}: line {line}: {exc} (a field over {FIELD_MAX_CHARS:,} characters: an unclosed quote?)"
            if "field larger" in str(exc)
            else f"{path}: line {line}: {exc}"
        ) from exc


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


def _columns(path: Path, header: list[str]) -> list[str]:
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
