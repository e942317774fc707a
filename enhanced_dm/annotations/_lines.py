"""Read an annotation file into numbered text lines, the one place that knows about bytes.

Every parser in this package reads through :func:`read_lines`, so all of them share the same rules:

- the file may be gzip-compressed (recognised by its magic bytes, whatever its name);
- it must be UTF-8; a UTF-8 byte-order mark at the start is dropped;
- ``\\n``, ``\\r\\n`` and a lone ``\\r`` all end a line, and line numbers count every one of them
  (1-based, as an editor shows them), blank lines included;
- lines that are empty or only whitespace are skipped.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from enhanced_dm.errors import AnnotationFileError

__all__ = ["NO_DATA_MESSAGE", "NumberedLine", "preview", "read_lines", "refuse_repeat"]

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LINE_END = re.compile(r"\r\n|\r|\n")

NO_DATA_MESSAGE = "the file holds no data lines (it is empty or blank)"


@dataclass(frozen=True)
class NumberedLine:
    """One non-blank line of text and its 1-based line number in the file."""

    number: int
    text: str


def read_lines(path: str | os.PathLike[str]) -> list[NumberedLine]:
    """Return the non-blank lines of ``path``, decoded, with their line numbers.

    Raises :class:`AnnotationFileError` when the file cannot be read, is a broken gzip stream,
    is not UTF-8 (naming the line and column of the first bad byte), holds a NUL character (a
    binary file), or holds no data line at all.
    """
    data = _read_bytes(path)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    text = _decode(path, data)
    lines = [
        NumberedLine(number, line)
        for number, line in enumerate(_LINE_END.split(text), start=1)
        if line.strip()
    ]
    for line in lines:
        if "\x00" in line.text:
            column = line.text.index("\x00") + 1
            raise AnnotationFileError(
                path,
                f"NUL character at column {column}: this looks like a binary file, "
                "expected a text annotation file",
                line=line.number,
            )
    if not lines:
        raise AnnotationFileError(path, NO_DATA_MESSAGE)
    return lines


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's content, decompressed when it is gzip."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise AnnotationFileError(path, "file not found") from None
    except IsADirectoryError:
        raise AnnotationFileError(path, "is a directory, expected an annotation file") from None
    except OSError as error:
        raise AnnotationFileError(path, f"cannot read the file: {error.strerror}") from None
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise AnnotationFileError(
            path, f"not a valid gzip file (truncated or corrupt): {error}"
        ) from None


def _decode(path: str | os.PathLike[str], data: bytes) -> str:
    """Decode UTF-8, naming the line and the position of the first byte that is not UTF-8."""
    if data.startswith(_UTF16_BOMS):
        raise AnnotationFileError(
            path, "the file is UTF-16 encoded; save it as UTF-8 (plain text)", line=1
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        # Count line ends as `read_lines` does: `bytes.splitlines` splits on \n, \r\n and \r only.
        line = len((before + b"x").splitlines())
        line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        column = error.start - line_start + 1
        byte = data[error.start]
        raise AnnotationFileError(
            path,
            f"not valid UTF-8 (byte 0x{byte:02x} at byte {column} of the line); save the file as UTF-8",
            line=line,
        ) from None


def preview(text: str, limit: int = 60) -> str:
    """The start of a line, quoted, for error messages (a line can be megabytes long)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def refuse_repeat(
    path: str | os.PathLike[str],
    first_line_of: dict[Hashable, int],
    key: Hashable,
    what: str,
    line: int,
) -> None:
    """Record that ``key`` appears on ``line``; fail naming both lines if it appeared before."""
    if key in first_line_of:
        raise AnnotationFileError(
            path, f"duplicate {what} (first on line {first_line_of[key]})", line=line
        )
    first_line_of[key] = line
