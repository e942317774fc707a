"""Fixtures shared by the data tests."""

from __future__ import annotations

import anndata as ad
import pytest

from enhanced_dm.data.prepare import prepare_h5ad
from tests.helpers import shared_data


@pytest.fixture(scope="session")
def mouse_mappable(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The mouse file rewritten with contiguous arrays (the shared copy is gzip-chunked), so
    backed reads of it are direct positional reads."""
    target = tmp_path_factory.mktemp("prepared") / "mouse.h5ad"
    return str(prepare_h5ad(shared_data("singlecell/mouse_10k_subset_counts.h5ad"), target))


@pytest.fixture(scope="session")
def mouse_chunked(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The mouse file as anndata writes it by default: chunked, uncompressed (readable directly)."""
    target = tmp_path_factory.mktemp("chunked") / "mouse.h5ad"
    ad.read_h5ad(shared_data("singlecell/mouse_10k_subset_counts.h5ad")).write_h5ad(target)
    return str(target)
