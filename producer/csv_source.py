"""Read a prompts CSV as a stream of rows, each with the line number it starts on.

UTF-8 with or without a BOM, LF or CRLF line ends, quoted fields spanning lines. Known columns map to
request fields; any other column is kept as user metadata. Memory is constant in the file's length.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.errors import GenqError
from workers.requests import RequestInput

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


class CsvFormatError(GenqError):
    """The file as a whole cannot be read (no header, no prompt column, not UTF-8)."""


@dataclass(frozen=True)
class CsvRow:
    line: int  # the physical line the record starts on (the header is line 1)
    fields: dict[str, str]

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
    """Yield the data rows of `path`. Raises `CsvFormatError` for a file that has no usable header."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CsvFormatError(f"{path}: the file is empty; it needs a header row with a 'prompt' column")
            columns = [name.strip().lower() for name in header]
            if "prompt" not in columns:
                raise CsvFormatError(f"{path}: the header has no 'prompt' column (found: {', '.join(columns)})")
            start = reader.line_num + 1
            for values in reader:
                line, start = start, reader.line_num + 1
                if not any(v.strip() for v in values):
                    continue  # blank line
                fields = dict(zip(columns, values, strict=False))
                if len(values) > len(columns):
                    fields["_extra_values"] = ",".join(values[len(columns) :])
                yield CsvRow(line, fields)
    except UnicodeDecodeError as exc:
        raise CsvFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
