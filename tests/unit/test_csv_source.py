"""Reading the prompts CSV: encodings, line ends, multi-line fields, line numbers, bad headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from producer.batch import RowChecker
from producer.csv_source import CsvFormatError, CsvRow, read_rows
from workers.errors import RequestInvalid


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    return path


def test_bom_crlf_and_multiline_fields_keep_true_line_numbers(tmp_path: Path) -> None:
    """A BOM is skipped, CRLF is fine, and a row's line is the physical line it starts on."""
    path = write(tmp_path, '\ufeffprompt,Size\r\n"two\r\nlines",1024*1024\r\none,\r\n\r\nthree,x\r\n'.encode())
    rows = list(read_rows(path))
    assert [(r.line, r.fields["prompt"]) for r in rows] == [(2, "two\r\nlines"), (4, "one"), (6, "three")]
    assert rows[0].fields["size"] == "1024*1024"  # header names are case-folded


def test_unknown_columns_become_metadata(tmp_path: Path) -> None:
    """Columns genq does not know are kept as user metadata on the request."""
    rows = list(read_rows(write(tmp_path, b"prompt,campaign,owner\na cat,spring,\n")))
    assert rows[0].to_input().metadata == {"campaign": "spring"}


def test_header_without_prompt_column_is_an_error(tmp_path: Path) -> None:
    """A file without a 'prompt' column is refused as a whole, naming the columns it has."""
    with pytest.raises(CsvFormatError, match=r"no 'prompt' column.*text, size"):
        list(read_rows(write(tmp_path, b"text,size\na,b\n")))


def test_empty_and_non_utf8_files_are_errors(tmp_path: Path) -> None:
    """An empty file and a Latin-1 file each get a clear error."""
    with pytest.raises(CsvFormatError, match="empty"):
        list(read_rows(write(tmp_path, b"")))
    with pytest.raises(CsvFormatError, match="not UTF-8"):
        list(read_rows(write(tmp_path, "prompt\ncaf\xe9\n".encode("latin-1"))))


def test_row_with_too_many_values_is_flagged(tmp_path: Path) -> None:
    """A row with more values than header columns is marked so the batch can reject it."""
    rows = list(read_rows(write(tmp_path, b"prompt,n,_extra_values\na cat,1,,extra\n")))
    assert rows[0].extra_values == 1 and rows[0].fields["_extra_values"] == ""  # a column of that name is no flag


def test_batch_defaults_fill_only_what_a_row_leaves_empty() -> None:
    """Defaults given on the command line (n, size, prompt_extend) apply to rows that leave the column empty;
    a row's own value wins, and a default that breaks a rule is reported on the rows it reaches."""
    checker = RowChecker(Settings(), {"n": "2", "size": "1024*1024", "prompt_extend": "false"})
    _, plain = checker.check(CsvRow(2, {"prompt": "a cat", "n": ""}))
    _, own = checker.check(CsvRow(3, {"prompt": "a dog", "n": "1", "size": "1280*1280", "prompt_extend": "true"}))
    assert (plain.n, plain.size, plain.prompt_extend) == (2, "1024*1024", False)
    assert (own.n, own.size, own.prompt_extend) == (1, "1280*1280", True)
    bad = RowChecker(Settings(), {"n": "9"})
    with pytest.raises(RequestInvalid, match="1-4"):
        bad.check(CsvRow(2, {"prompt": "a cat"}))
