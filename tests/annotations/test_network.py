"""Edge lists: the real PathwayCommons and PROGENy files, and each rule on synthetic files."""

from __future__ import annotations

import numpy as np
import pytest

from enhanced_dm.annotations import read_network
from enhanced_dm.errors import AnnotationFileError
from tests.annotations.conftest import WriteFile
from tests.helpers import shared_data


def test_pathwaycommons_has_the_manifest_counts_and_unit_weights() -> None:
    network = read_network(shared_data("networks/pathwaycommons_controls_expression_of.tsv.gz"))
    assert list(network.columns) == ["source", "target", "weight"]
    assert len(network) == 122785
    assert network["source"].nunique() == 1513
    assert network["weight"].dtype == np.float64
    assert (network["weight"] == 1.0).all()
    assert tuple(network.iloc[0]) == ("MEF2B", "SMHC", 1.0)


@pytest.mark.parametrize("species", ["human", "mouse"])
def test_progeny_reads_pathway_to_gene_signed_weights(species: str) -> None:
    network = read_network(
        shared_data(f"networks/progeny_{species}_top500.tsv"),
        source_column="pathway",
        target_column="gene",
    )
    assert len(network) == 14 * 500
    assert network["source"].nunique() == 14
    assert (network.groupby("source").size() == 500).all()
    assert (network["weight"] < 0).any() and (network["weight"] > 0).any()
    if species == "human":
        assert tuple(network.iloc[0]) == ("NFkB", "TNFAIP3", pytest.approx(28.3738))


def test_sign_column_multiplies_weight_and_other_columns_are_ignored(
    write_file: WriteFile,
) -> None:
    path = write_file(
        "n.csv", "Target,Source,sign,confidence,Weight\nT1,R1,-,A,2.5\nT2,R1,+1,B,1\n"
    )
    network = read_network(path)
    assert network.values.tolist() == [["R1", "T1", -2.5], ["R1", "T2", 1.0]]


def test_explicit_weight_column_must_exist(write_file: WriteFile) -> None:
    path = write_file("n.tsv", "source\ttarget\nR1\tT1\n")
    with pytest.raises(AnnotationFileError, match=r"n\.tsv:1: header has no weight column 'mor'"):
        read_network(path, weight_column="mor")


def test_missing_source_column_lists_the_header(write_file: WriteFile) -> None:
    path = write_file("n.tsv", "gene\tregulator\tweight\nG1\tP1\t1\n")
    with pytest.raises(
        AnnotationFileError,
        match=r":1: header has no source column 'source'; its columns are \['gene', 'regulator'",
    ):
        read_network(path)


def test_progeny_layout_reads_pathway_to_gene(write_file: WriteFile) -> None:
    path = write_file("p.tsv", "gene\tpathway\tweight\tp.value\nG1\tP1\t-2.5\t0.01\n")
    assert read_network(path).to_dict("list") == {
        "source": ["P1"],
        "target": ["G1"],
        "weight": [-2.5],
    }


@pytest.mark.parametrize("weight", ["high", "nan", "inf", ""])
def test_weight_must_be_a_finite_number(write_file: WriteFile, weight: str) -> None:
    path = write_file("n.tsv", f"source\ttarget\tweight\nR1\tT1\t1\r\nR1\tT2\t{weight}\r\n")
    with pytest.raises(AnnotationFileError, match=rf":3: weight '{weight}' is not a finite number"):
        read_network(path)


def test_unknown_sign_fails(write_file: WriteFile) -> None:
    path = write_file("n.tsv", "source\ttarget\tsign\nR1\tT1\tactivates\n")
    with pytest.raises(AnnotationFileError, match=r":2: sign 'activates' is not one of"):
        read_network(path)


def test_duplicate_edge_fails_naming_both_lines(write_file: WriteFile) -> None:
    path = write_file("n.tsv", "source\ttarget\nR1\tT1\nR1\tT2\n\nR1\tT1\n")
    with pytest.raises(
        AnnotationFileError, match=r":5: duplicate edge 'R1' -> 'T1' \(first on line 2\)"
    ):
        read_network(path)


def test_short_row_and_empty_target_fail_with_line_numbers(write_file: WriteFile) -> None:
    short = write_file("short.tsv", "source\ttarget\nR1\tT1\nR2\n")
    with pytest.raises(AnnotationFileError, match=r"short\.tsv:3: expected an edge \(2 columns"):
        read_network(short)
    empty = write_file("empty.tsv", "source\ttarget\nR1\t\n")
    with pytest.raises(AnnotationFileError, match=r"empty\.tsv:2: empty target"):
        read_network(empty)


def test_header_only_fails(write_file: WriteFile) -> None:
    path = write_file("n.tsv", "source\ttarget\n\n")
    with pytest.raises(AnnotationFileError, match="holds no edges, only a header"):
        read_network(path)
