"""One-symbol-a-line gene lists, such as the transcription-factor list."""

from __future__ import annotations

import pytest

from enhanced_dm.annotations import read_gene_list
from enhanced_dm.errors import AnnotationFileError
from tests.annotations.conftest import WriteFile
from tests.helpers import shared_data


def test_real_tf_list_has_the_manifest_count() -> None:
    genes = read_gene_list(shared_data("networks/tf_list_human_go0003700.txt"))
    assert len(genes) == 1413
    assert genes[:2] == ["ADNP", "ADNP2"]


def test_comments_blanks_whitespace_and_repeats(write_file: WriteFile) -> None:
    path = write_file("tfs.txt", "# TFs\r\n  TP53  # tumour suppressor\r\n\r\nMYC\r\nTP53\r\n#\r\n")
    assert read_gene_list(path) == ["TP53", "MYC"]


@pytest.mark.parametrize("line", ["TP53\tMYC", "TP53,MYC", "TP53 MYC"])
def test_more_than_one_word_on_a_line_fails(write_file: WriteFile, line: str) -> None:
    path = write_file("tfs.txt", f"GATA1\n{line}\n")
    with pytest.raises(AnnotationFileError, match=r"tfs\.txt:2: expected one gene symbol per line"):
        read_gene_list(path)


def test_only_comments_fails(write_file: WriteFile) -> None:
    path = write_file("tfs.txt", "# nothing here\n")
    with pytest.raises(AnnotationFileError, match="holds no gene symbols, only comments"):
        read_gene_list(path)
