"""Seed-compatible collate-style loaders apply the same fitted pipeline as the DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from enhanced_dm import BaseEnhancedDataModule, BaseEnhancedLoader, ConfigError, DataFileError
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def test_collate_loader_matches_the_datamodule() -> None:
    options = dict(
        data=shared_data(PBMC), cell_type_key="cell_type", val_fraction=0.0, progress=False
    )
    loader = BaseEnhancedLoader(
        cfg=None,
        normalization_type="z_score",
        per_gene_normalization=True,
        per_cell_normalization=True,
        robust_normalization=False,
        quantile_normalization=False,
        **options,
    )
    dm = BaseEnhancedDataModule(**options)
    dm.setup("predict")
    expected = torch.cat([dm.normalize(b)["x_ng"] for b in dm.predict_dataloader()])

    batches = list(DataLoader(loader.dataset(), batch_size=100, collate_fn=loader))
    collected = torch.cat([batch["x_ng"] for batch in batches])
    assert torch.allclose(collected, expected, atol=1e-6)
    assert batches[0]["cell_type_n"].dtype == torch.int64

    # raw count vectors with labels are accepted too
    row = dm.store.read([4])["counts_ng"].to_dense()[0]
    label = dm.categories["cell_type"][int(dm.store.read([4])["cell_type_n"])]
    single = loader([{"counts": row.numpy(), "cell_type": label}])
    assert torch.allclose(single["x_ng"][0], expected[4], atol=1e-5)

    stats = loader.get_normalization_stats()
    assert stats["z_score"]["cells_seen"] == 701
    loader.reset_normalization_stats()
    assert loader.get_normalization_stats() == {}


def test_collate_loader_refuses_wrong_gene_count_and_missing_data() -> None:
    loader = BaseEnhancedLoader(data=shared_data(PBMC), progress=False)
    with pytest.raises(ConfigError, match="genes"):
        loader([np.zeros(3)])
    with pytest.raises(DataFileError, match="item 0"):
        loader([np.full(len(loader.var_names), 0.5)])  # the data are counts: fractions refused
    with pytest.raises(DataFileError, match="negative"):
        loader([-np.ones(len(loader.var_names))])
    with pytest.raises(ConfigError, match="needs data="):
        BaseEnhancedLoader(cfg={})
