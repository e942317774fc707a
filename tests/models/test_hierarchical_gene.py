"""HierarchicalGeneModel: trains through trainer.fit on a HierarchicalDataModule (loss falls)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from enhanced_dm import ConfigError, HierarchicalDataModule, datasets
from enhanced_dm.models import HierarchicalGeneModel


def test_trains_on_pathway_and_compartment_tokens(tmp_path) -> None:
    L.seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = HierarchicalDataModule(
            datasets.pbmc68k(), cell_type_key="cell_type", batch_size=64, progress=False
        )
        dm.setup("fit")
    model = HierarchicalGeneModel(
        token_dim=32, d_model=32, nhead=4, d_hid=64, nlayers=1, output_dim=16, dropout=0.0,
        pathway_info=dm.pathway_membership_pg, compartment_info=dm.compartment_membership_kg,
        n_classes=len(dm.categories["cell_type"]), learning_rate=1e-2,
    )  # fmt: skip
    batch = dm.normalize(next(iter(dm.val_dataloader())))
    with torch.no_grad():
        before = float(model._loss(batch))
    trainer = L.Trainer(
        max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    model.eval()
    with torch.no_grad():
        assert float(model._loss(batch)) < 0.8 * before
        out = model.predict_step(batch, 0)
    assert out["z_nd"].shape == (len(batch["cell_index_n"]), 16)


def test_memberships_must_span_the_genes() -> None:
    with pytest.raises(ConfigError, match="compartment_info must be units x genes"):
        HierarchicalGeneModel(8, 8, 2, 16, 1, 4, torch.ones(3, 10), torch.ones(2, 9))
