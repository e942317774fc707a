"""Gene -> compartment tables (TSV/CSV, with or without header) and compartment GMT files."""

from __future__ import annotations

import pandas as pd
import pytest

from enhanced_dm.annotations import read_gene_compartments
from enhanced_dm.errors import AnnotationFileError
from tests.annotations.conftest import WriteFile
from tests.helpers import shared_data


def pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    assert list(frame.columns) == ["gene", "compartment"]
    return list(frame.itertuples(index=False, name=None))


def test_real_table_has_18_compartments_and_genes_in_several() -> None:
    frame = read_gene_compartments(shared_data("genesets/go_cc_compartments_human.tsv"))
    assert frame["compartment"].nunique() == 18
    assert len(frame) == 44076  # every data line; no (gene, compartment) pair repeats
    assert set(frame.loc[frame["gene"] == "A1BG", "compartment"]) == {
        "cytoplasmic_vesicle",
        "extracellular_region",
        "extracellular_space",
    }


def test_real_table_non_iea_only_equals_the_real_gmt() -> None:
    table = read_gene_compartments(
        shared_data("genesets/go_cc_compartments_human.tsv"), non_iea_only=True
    )
    gmt = read_gene_compartments(shared_data("genesets/go_cc_compartments_human.gmt"))
    assert len(table) == 37435
    assert table["compartment"].nunique() == gmt["compartment"].nunique() == 18
    assert set(pairs(table)) == set(pairs(gmt))


def test_headerless_tsv_uses_the_first_two_columns(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "G1\tnucleus\textra\nG1\tcytosol\nG2\tnucleus\nG1\tnucleus\n")
    assert pairs(read_gene_compartments(path)) == [
        ("G1", "nucleus"),
        ("G1", "cytosol"),
        ("G2", "nucleus"),
    ]


def test_csv_with_header_in_any_order_quotes_and_spaces(write_file: WriteFile) -> None:
    path = write_file("c.csv", 'Compartment, Gene\r\n"plasma_membrane", "G1"\r\nnucleus,G2\r\n')
    assert pairs(read_gene_compartments(path)) == [("G1", "plasma_membrane"), ("G2", "nucleus")]


def test_named_columns_for_an_unknown_header(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "id\thgnc\tloc\n1\tG1\tnucleus\n")
    frame = read_gene_compartments(path, gene_column="HGNC", compartment_column="loc")
    assert pairs(frame) == [("G1", "nucleus")]


def test_missing_named_column_fails_on_the_header_line(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "\nid\thgnc\tloc\n1\tG1\tnucleus\n")
    with pytest.raises(AnnotationFileError, match=r"c\.tsv:2: header has no gene column 'symbol'"):
        read_gene_compartments(path, gene_column="symbol", compartment_column="loc")


def test_header_with_only_a_gene_column_fails(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "gene\twhere\nG1\tnucleus\n")
    with pytest.raises(
        AnnotationFileError, match=r":1: the header \['gene', 'where'\] names no compartment column"
    ):
        read_gene_compartments(path)


def test_non_iea_only_without_the_column_fails(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "gene\tcompartment\nG1\tnucleus\n")
    with pytest.raises(AnnotationFileError, match=r":1: header has no evidence column 'non_iea'"):
        read_gene_compartments(path, non_iea_only=True)


def test_non_iea_values_must_be_booleans(write_file: WriteFile) -> None:
    path = write_file(
        "c.tsv", "gene\tcompartment\tnon_iea\nG1\tnucleus\tTRUE\nG2\tcytosol\tmaybe\n"
    )
    with pytest.raises(AnnotationFileError, match=r":3: non_iea value 'maybe' is not a boolean"):
        read_gene_compartments(path, non_iea_only=True)


def test_non_iea_only_keeping_nothing_fails(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "gene\tcompartment\tnon_iea\nG1\tnucleus\tFalse\n")
    with pytest.raises(AnnotationFileError, match="holds no gene-compartment rows with non_iea"):
        read_gene_compartments(path, non_iea_only=True)


def test_header_only_fails(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "symbol\tcompartment\n")
    with pytest.raises(AnnotationFileError, match="holds no gene-compartment rows"):
        read_gene_compartments(path)


def test_short_row_fails_with_line_number_and_delimiter_hint(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "G1\tnucleus\nG2,cytosol\n")
    with pytest.raises(AnnotationFileError) as error:
        read_gene_compartments(path)
    assert error.value.line == 2
    assert (
        "expected a gene and its compartment (2 columns separated by a tab), found 1 column; "
        "the first line is split by a tab but this one holds a comma"
    ) in str(error.value)


def test_single_column_file_fails(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "G1 nucleus\n")
    with pytest.raises(AnnotationFileError, match=r":1: expected at least two columns"):
        read_gene_compartments(path)


def test_empty_compartment_fails(write_file: WriteFile) -> None:
    path = write_file("c.tsv", "G1\tnucleus\nG2\t \n")
    with pytest.raises(AnnotationFileError, match=r":2: empty compartment in column 2"):
        read_gene_compartments(path)


def test_unbalanced_quote_fails_with_line_number(write_file: WriteFile) -> None:
    path = write_file("c.csv", 'G1,nucleus\nG2,"cytosol\nG3,nucleus\n')
    with pytest.raises(AnnotationFileError, match=r":2: malformed quoting"):
        read_gene_compartments(path)


def test_gmt_file_by_name_or_by_option(write_file: WriteFile) -> None:
    content = "nucleus\tdesc\tG1\tG2\ncytosol\tdesc\tG1\n"
    expected = [("G1", "nucleus"), ("G2", "nucleus"), ("G1", "cytosol")]
    assert pairs(read_gene_compartments(write_file("c.gmt", content))) == expected
    assert (
        pairs(read_gene_compartments(write_file("c.txt", content), file_format="gmt")) == expected
    )


def test_gmt_refuses_table_options(write_file: WriteFile) -> None:
    path = write_file("c.gmt", "nucleus\tdesc\tG1\n")
    with pytest.raises(AnnotationFileError, match="a GMT file has no columns"):
        read_gene_compartments(path, non_iea_only=True)
