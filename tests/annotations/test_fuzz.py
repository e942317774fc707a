"""Fuzzing every parser: any input either parses or raises AnnotationFileError, never anything else.

A bad line must carry its line number; only whole-file problems (empty file, header without
rows, broken gzip stream) may leave it out. Examples are bounded so the file runs in seconds.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enhanced_dm.annotations import (
    read_gene_compartments,
    read_gene_list,
    read_gmt,
    read_network,
)
from enhanced_dm.errors import AnnotationFileError

FILE_LEVEL_FRAGMENTS = ("holds no", "not a valid gzip file")

PARSERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "gmt": ("sets.gmt", read_gmt),
    "compartments": ("compartments.tsv", read_gene_compartments),
    "compartments_non_iea": (
        "compartments.tsv",
        lambda path: read_gene_compartments(path, non_iea_only=True),
    ),
    "compartments_gmt": ("compartments.gmt", read_gene_compartments),
    "network": ("network.tsv", read_network),
    "network_progeny": (
        "network.tsv",
        lambda path: read_network(path, source_column="pathway", target_column="gene"),
    ),
    "gene_list": ("genes.txt", read_gene_list),
}

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_words = st.sampled_from(
    [
        "source", "target", "weight", "sign", "gene", "symbol", "pathway", "compartment",
        "non_iea", "True", "false", "1", "-1", "+", "nan", "inf", "1e400", "TP53", "GO:0001",
        "#", '"', '""', '"a\tb"',
    ]
)  # fmt: skip
_characters = st.sampled_from(list('aZ09 "#,;+-.\t\x00\xe9\u2028\ufeff'))
_fields = _words | st.text(alphabet=_characters, max_size=8)
_lines = st.builds(
    lambda fields, separator: separator.join(fields),
    st.lists(_fields, max_size=6),
    st.sampled_from(["\t", ",", " ", ";", "\t\t"]),
)


@st.composite
def text_files(draw: st.DrawFn) -> bytes:
    """Files that look almost right: plausible words, any delimiter, line ending and encoding."""
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = ending.join(draw(st.lists(_lines, max_size=8)))
    if draw(st.booleans()):
        text += ending
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def check(parser_name: str, tmp_path: Path, data: bytes, compress: bool = False) -> None:
    name, parser = PARSERS[parser_name]
    path = tmp_path / (name + ".gz" if compress else name)
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        parser(path)
    except AnnotationFileError as error:
        assert error.path == str(path)
        if error.line is None:
            assert any(fragment in str(error) for fragment in FILE_LEVEL_FRAGMENTS), str(error)
        else:
            assert 1 <= error.line <= data.count(b"\n") + data.count(b"\r") + 1
            assert str(error).startswith(f"{path}:{error.line}: ")


@pytest.mark.parametrize("parser_name", PARSERS)
@FUZZ_SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(parser_name: str, tmp_path: Path, data: bytes) -> None:
    check(parser_name, tmp_path, data)


@pytest.mark.parametrize("parser_name", PARSERS)
@FUZZ_SETTINGS
@given(data=text_files(), compress=st.booleans())
def test_near_miss_text(parser_name: str, tmp_path: Path, data: bytes, compress: bool) -> None:
    check(parser_name, tmp_path, data, compress)


@pytest.mark.parametrize("parser_name", PARSERS)
@FUZZ_SETTINGS
@given(data=st.binary(min_size=10, max_size=400), cut=st.integers(2, 40))
def test_broken_gzip_streams(parser_name: str, tmp_path: Path, data: bytes, cut: int) -> None:
    compressed = gzip.compress(data)
    path = tmp_path / "broken.gz"
    path.write_bytes(compressed[: max(2, len(compressed) - cut)])  # keep the magic bytes
    with pytest.raises(AnnotationFileError, match="not a valid gzip file"):
        PARSERS[parser_name][1](path)


@pytest.mark.parametrize("parser_name", PARSERS)
def test_huge_lines(parser_name: str, tmp_path: Path) -> None:
    genes = "\t".join(f"G{index}" for index in range(200_000))
    header = "symbol\tcompartment\tsource\ttarget\tgene\tpathway\tnon_iea"
    data = f"{header}\nSET\tdesc\t{genes}\n{'x' * 1_000_000}\n".encode()
    check(parser_name, tmp_path, data)
