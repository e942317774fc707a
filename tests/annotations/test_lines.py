"""The byte-level rules every parser shares: encodings, line endings, gzip, unreadable files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from enhanced_dm.annotations._lines import read_lines
from enhanced_dm.errors import AnnotationFileError
from tests.annotations.conftest import WriteFile


def numbered(path: Path) -> list[tuple[int, str]]:
    return [(line.number, line.text) for line in read_lines(path)]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_line_endings_are_all_accepted_and_blank_lines_still_counted(
    write_file: WriteFile, ending: str
) -> None:
    path = write_file("a.txt", ending.join(["one", "", "  \t ", "four", ""]))
    assert numbered(path) == [(1, "one"), (4, "four")]


def test_mixed_line_endings_count_each_ending_once(write_file: WriteFile) -> None:
    path = write_file("a.txt", "one\r\ntwo\rthree\nfour")
    assert [number for number, _ in numbered(path)] == [1, 2, 3, 4]


def test_utf8_byte_order_mark_is_dropped(write_file: WriteFile) -> None:
    path = write_file("a.txt", b"\xef\xbb\xbfGENE\n")
    assert numbered(path) == [(1, "GENE")]


def test_gzip_is_recognised_by_content_not_name(write_file: WriteFile) -> None:
    path = write_file("plain_name.txt", gzip.compress(b"\xef\xbb\xbfA\r\nB\n"))
    assert numbered(path) == [(1, "A"), (2, "B")]


def test_non_utf8_byte_is_reported_with_line_and_position(write_file: WriteFile) -> None:
    path = write_file("a.txt", b"ok\r\nfine\nab\xffc\n")
    with pytest.raises(
        AnnotationFileError, match=r"a\.txt:3: not valid UTF-8 \(byte 0xff at byte 3"
    ):
        read_lines(path)


def test_non_utf8_line_counts_lone_carriage_returns(write_file: WriteFile) -> None:
    path = write_file("a.txt", b"one\rtwo\r\xe9")
    with pytest.raises(AnnotationFileError) as error:
        read_lines(path)
    assert error.value.line == 3


def test_utf16_file_is_named_as_such(write_file: WriteFile) -> None:
    path = write_file("a.txt", "GENE\n".encode("utf-16"))
    with pytest.raises(AnnotationFileError, match="UTF-16 encoded; save it as UTF-8"):
        read_lines(path)


def test_nul_character_means_a_binary_file(write_file: WriteFile) -> None:
    path = write_file("a.txt", b"GENE\nAB\x00C\n")
    with pytest.raises(AnnotationFileError, match=r":2: NUL character at column 3"):
        read_lines(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.gmt"
    with pytest.raises(AnnotationFileError, match=r"nowhere\.gmt: file not found") as error:
        read_lines(path)
    assert error.value.path == str(path)
    assert error.value.line is None


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AnnotationFileError, match="is a directory"):
        read_lines(tmp_path)


def test_truncated_gzip_is_refused(write_file: WriteFile) -> None:
    path = write_file("a.gz", gzip.compress(b"A\tB\n" * 100)[:-12])
    with pytest.raises(AnnotationFileError, match="not a valid gzip file"):
        read_lines(path)


@pytest.mark.parametrize("content", [b"", b"\n\r\n  \t\n", b"\xef\xbb\xbf"])
def test_empty_or_blank_file_is_refused(write_file: WriteFile, content: bytes) -> None:
    path = write_file("a.txt", content)
    with pytest.raises(AnnotationFileError, match="holds no data lines"):
        read_lines(path)
