"""TileDB-SOMA experiments read like h5ad files: the same batches, obs filters that select what a
pandas query selects, soma_joinid_n, typed errors, DDP. The experiment is built here from the real
PBMC h5ad with tiledbsoma.io.from_h5ad (what the README tells users to do)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
import torch

from enhanced_dm import BaseEnhancedDataModule, ConfigError, DataFileError, HierarchicalDataModule
from enhanced_dm.data import SomaSource
from enhanced_dm.data import soma_source as soma_module
from tests.helpers import shared_data
from tests.test_ddp import assert_ranks_fit_like_one_process

soma = pytest.importorskip("tiledbsoma", reason="tiledbsoma: pip install -e '.[soma]'")

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
OPTIONS: dict[str, Any] = dict(
    batch_size=64, val_fraction=0.2, seed=1, progress=False, cell_type_key="cell_type"
)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> str:
    import tiledbsoma.io

    uri = str(tmp_path_factory.mktemp("soma") / "pbmc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiledbsoma.io.from_h5ad(uri, str(shared_data(PBMC)), "RNA", X_layer_name="raw")
    return uri


def batches(dm: BaseEnhancedDataModule) -> list[dict[str, torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm.setup("fit")
    return [dm.normalize(batch) for batch in dm.train_dataloader()]


@pytest.mark.parametrize("backed", [False, True])
@pytest.mark.parametrize("cls", [BaseEnhancedDataModule, HierarchicalDataModule])
def test_an_experiment_gives_the_batches_of_its_h5ad(
    experiment: str, backed: bool, cls: type
) -> None:
    ours = batches(cls(SomaSource(experiment), backed=backed, **OPTIONS))
    theirs = batches(cls(str(shared_data(PBMC)), backed=backed, **OPTIONS))
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert set(mine) == {*reference, "soma_joinid_n"}
        for key, value in reference.items():
            torch.testing.assert_close(mine[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(mine["soma_joinid_n"], reference["cell_index_n"])


def test_filters_select_what_a_pandas_query_selects(experiment: str) -> None:
    adata = ad.read_h5ad(shared_data(PBMC))
    query = "cell_type == 'CD14+ Monocyte' and S_score > 0"
    genes = list(adata.var_names[[3, 10, 500]])
    spec = SomaSource(experiment, obs_filter=query, var_filter=f"var_id in {genes}")
    dm = BaseEnhancedDataModule(spec, backed=True, **OPTIONS)
    dm.setup("fit")
    expected = adata[adata.obs.query(query).index, genes]
    assert dm.var_names == genes
    (source,) = dm.store.sources
    assert source.obs.index.tolist() == expected.obs_names.tolist()
    batch = dm.store.read(np.arange(dm.store.n_obs))
    np.testing.assert_array_equal(batch["counts_ng"].to_dense().numpy(), expected.X.toarray())
    positions = np.flatnonzero(adata.obs_names.isin(expected.obs_names))
    np.testing.assert_array_equal(batch["soma_joinid_n"].numpy(), positions)


def test_errors_name_the_experiment_and_the_filter(
    experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def setup(spec: SomaSource) -> None:
        BaseEnhancedDataModule(spec, **OPTIONS).setup("fit")

    with pytest.raises(DataFileError, match="not a readable TileDB-SOMA experiment"):
        setup(SomaSource(str(tmp_path / "absent")))
    with pytest.raises(
        DataFileError, match=r"measurement 'ATAC' is missing \(measurements: \['RNA'\]\)"
    ):
        setup(SomaSource(experiment, measurement="ATAC"))
    with pytest.raises(
        DataFileError, match=r"X layer 'normalized' is missing \(layers: \['raw'\]\)"
    ):
        setup(SomaSource(experiment, layer="normalized"))
    with pytest.raises(ConfigError, match="the filter \"cell_type == 'T'\" selects no cells"):
        setup(SomaSource(experiment, obs_filter="cell_type == 'T'"))
    with pytest.raises(ConfigError, match="the filter cannot be applied"):
        setup(SomaSource(experiment, obs_filter="no_such_column > 1"))

    def absent(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(soma_module.importlib, "import_module", absent)
    with pytest.raises(ConfigError, match=r'pip install "enhanced-dm\[soma\]"'):
        setup(SomaSource(experiment))


def test_the_experiment_is_never_written(experiment: str) -> None:
    files = [file for file in Path(experiment).rglob("*") if file.is_file()]
    before = {file: file.stat().st_mtime_ns for file in files}
    for backed in (False, True):
        batches(BaseEnhancedDataModule(SomaSource(experiment), backed=backed, **OPTIONS))
    after = {
        file: file.stat().st_mtime_ns for file in Path(experiment).rglob("*") if file.is_file()
    }
    assert after == before


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_on_an_experiment_fit_what_one_process_fits(
    experiment: str, tmp_path: Path
) -> None:
    source = SomaSource(experiment)
    factory = functools.partial(HierarchicalDataModule, source, backed=True, **OPTIONS)
    assert_ranks_fit_like_one_process(factory, tmp_path)


def test_entries_are_put_in_row_then_column_order() -> None:
    """TileDB's usual runs (columns sorted within each row) take the stable sort; any other
    order takes the two-key sort; both give rows, then columns, ascending."""
    from enhanced_dm.data.soma_source import _row_major

    position = np.array([1, 1, 0, 0, 2])
    for column in (np.array([0, 4, 1, 3, 2]), np.array([4, 0, 3, 1, 2])):
        order = _row_major(position, column)
        rows, columns = position[order], column[order]
        assert rows.tolist() == [0, 0, 1, 1, 2]
        assert columns.tolist() == [1, 3, 0, 4, 2]
