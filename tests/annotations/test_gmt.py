"""GMT parsing: the real GO files, and each documented rule on small synthetic files."""

from __future__ import annotations

import gzip

import pytest

from enhanced_dm.annotations import GeneSet, read_gmt
from enhanced_dm.errors import AnnotationFileError
from tests.annotations.conftest import WriteFile
from tests.helpers import shared_data


@pytest.mark.parametrize(
    ("relative", "n_sets"),
    [
        ("genesets/go_bp_human.gmt", 4463),
        ("genesets/go_cc_human.gmt", 553),
        ("genesets/go_mf_human.gmt", 861),
        ("genesets/go_cc_compartments_human.gmt", 18),
        ("genesets/blood_transcription_modules_li2014.gmt", 346),
    ],
)
def test_real_files_have_the_manifest_counts(relative: str, n_sets: int) -> None:
    gene_sets = read_gmt(shared_data(relative))
    assert len(gene_sets) == n_sets
    assert len({gene_set.name for gene_set in gene_sets}) == n_sets


def test_go_bp_first_set_is_read_field_by_field() -> None:
    first = read_gmt(shared_data("genesets/go_bp_human.gmt"))[0]
    assert first.name == "GOBP_MITOCHONDRIAL_GENOME_MAINTENANCE"
    assert first.description == "GO:0000002"
    assert first.genes[:3] == ("AKT3", "DNA2", "ENDOG")
    assert first.line == 1
    # The MANIFEST says the GO sets were filtered to 15-500 genes.
    sizes = [len(gene_set.genes) for gene_set in read_gmt(shared_data("genesets/go_bp_human.gmt"))]
    assert min(sizes) >= 15 and max(sizes) <= 500


def test_fields_are_stripped_empty_genes_ignored_and_repeats_kept_once(
    write_file: WriteFile,
) -> None:
    path = write_file("sets.gmt", " SET_A \thttp://x\tG1\t G2 \t\tG1\tG3\t\t\n")
    assert read_gmt(path) == [GeneSet("SET_A", "http://x", ("G1", "G2", "G3"), 1)]


def test_empty_description_is_accepted(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", "SET_A\t\tG1\tG2\n")
    assert read_gmt(path)[0].description == ""


def test_missing_description_with_one_gene_fails_with_line_number(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", "SET_A\tdesc\tG1\nSET_B\tG2\n")
    with pytest.raises(AnnotationFileError) as error:
        read_gmt(path)
    assert error.value.line == 2
    assert str(error.value).startswith(f"{path}:2: expected name<TAB>description<TAB>gene...")
    assert "found 2 fields" in str(error.value)


def test_missing_description_with_several_genes_reads_the_first_gene_as_description(
    write_file: WriteFile,
) -> None:
    # Documented limitation: nothing in the line says the description was left out.
    path = write_file("sets.gmt", "SET_A\tG1\tG2\tG3\n")
    assert read_gmt(path) == [GeneSet("SET_A", "G1", ("G2", "G3"), 1)]


def test_empty_lines_are_skipped_and_line_numbers_still_count_them(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", "\nSET_A\td\tG1\n\n\nSET_B\td\tG2\n\n")
    assert [(gene_set.name, gene_set.line) for gene_set in read_gmt(path)] == [
        ("SET_A", 2),
        ("SET_B", 5),
    ]


def test_duplicate_set_names_fail_naming_both_lines(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", "SET_A\td\tG1\nSET_B\td\tG2\n\nSET_A\td\tG3\n")
    with pytest.raises(
        AnnotationFileError,
        match=r"sets\.gmt:4: duplicate gene set name 'SET_A' \(first on line 1\)",
    ):
        read_gmt(path)


def test_windows_line_endings_parse_the_same(write_file: WriteFile) -> None:
    unix = write_file("unix.gmt", "SET_A\td\tG1\tG2\nSET_B\td\tG3\n")
    windows = write_file("windows.gmt", "SET_A\td\tG1\tG2\r\nSET_B\td\tG3\r\n")
    assert read_gmt(windows) == read_gmt(unix)
    assert read_gmt(windows)[0].genes == ("G1", "G2")


def test_gzip_with_bom_and_crlf(write_file: WriteFile) -> None:
    path = write_file("sets.gmt.gz", gzip.compress(b"\xef\xbb\xbfSET_A\td\tG1\r\n"))
    assert read_gmt(path) == [GeneSet("SET_A", "d", ("G1",), 1)]


def test_space_separated_line_says_it_has_no_tab(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", "SET_A d G1 G2\n")
    with pytest.raises(AnnotationFileError, match=r":1: expected .*found 1 field .*holds no tab"):
        read_gmt(path)


def test_set_without_genes_fails(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", "SET_A\td\tG1\nSET_B\td\t\t \n")
    with pytest.raises(AnnotationFileError, match=r":2: gene set 'SET_B' lists no genes"):
        read_gmt(path)


def test_empty_set_name_fails(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", " \td\tG1\n")
    with pytest.raises(AnnotationFileError, match=r":1: empty gene set name"):
        read_gmt(path)


def test_non_utf8_gene_fails_with_line_number(write_file: WriteFile) -> None:
    path = write_file("sets.gmt", b"SET_A\td\tG1\nSET_B\td\tG\xe92\n")
    with pytest.raises(AnnotationFileError, match=r"sets\.gmt:2: not valid UTF-8"):
        read_gmt(path)
