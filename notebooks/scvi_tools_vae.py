"""scvi-tools' ``VAE`` module trained on enhanced-dm batches with ``trainer.fit(..., datamodule=...)``.

A real client beside enhanced-dm's own models (docs/clients.md): scvi-tools' VAE (Lopez et al.
2018) reads raw counts and the batch code, so the DataModule runs with no normalization and a thin
LightningModule renames the batch keys to scvi-tools' ``REGISTRY_KEYS``. Needs the optional
dependency (``pip install -e ".[scvi]"``); run from the repository root::

    python notebooks/scvi_tools_vae.py
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata
import lightning as L
import numpy as np
import scanpy as sc
import torch
from scvi import REGISTRY_KEYS
from scvi.module import VAE

from enhanced_dm import BaseEnhancedDataModule
from enhanced_dm.datasets import pbmc68k

__all__ = ["ScviVAEModule", "pbmc_datamodule", "scvi_tensors", "train"]

BATCH_KEY = "phase"
"""The bundled PBMCs have no batch column; their cell-cycle phase (G1, S, G2M) stands in."""


def highly_variable_genes(adata: anndata.AnnData, n_top_genes: int) -> list[str]:
    """The ``n_top_genes`` most variable genes of raw counts (scanpy's ``seurat_v3``), in var order."""
    table = sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_top_genes, inplace=False
    )
    return list(adata.var_names[table["highly_variable"].to_numpy()])


def pbmc_datamodule(
    n_top_genes: int = 300, batch_size: int = 128, seed: int = 0
) -> BaseEnhancedDataModule:
    """The bundled PBMC counts on their most variable genes, set up, without any normalization.

    ``normalization_type="none"`` with ``per_cell_normalization=False`` fits nothing; the VAE
    reads ``counts_ng`` (dense integer counts) and ``batch_n`` (codes of ``obs["phase"]``).
    """
    adata = pbmc68k()
    datamodule = BaseEnhancedDataModule(
        data=adata,
        genes=highly_variable_genes(adata, n_top_genes),
        normalization_type="none",
        per_cell_normalization=False,
        batch_key=BATCH_KEY,
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    datamodule.setup("fit")  # the number of batch codes sizes the VAE
    return datamodule


def scvi_tensors(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An enhanced-dm batch as the ``tensors`` dict scvi-tools modules read.

    ``X`` is ``counts_ng`` as float (densified if the DataModule left it CSR), ``batch`` is
    ``batch_n`` as an ``(n, 1)`` column; ``labels`` are zeros, as scvi-tools registers when no
    labels key is set up (``VAE`` reads them only for ``dispersion="gene-label"``).
    """
    counts = batch["counts_ng"]
    if counts.layout != torch.strided:
        counts = counts.to_dense()
    batch_codes = batch["batch_n"].long().unsqueeze(-1)
    return {
        REGISTRY_KEYS.X_KEY: counts.float(),
        REGISTRY_KEYS.BATCH_KEY: batch_codes,
        REGISTRY_KEYS.LABELS_KEY: torch.zeros_like(batch_codes),
    }


class ScviVAEModule(L.LightningModule):
    """Lightning wrapper of ``scvi.module.VAE``: the step loss is scvi-tools' ELBO loss.

    The KL weight is constant (scvi-tools' own TrainingPlan warms it up over epochs); the optimizer
    is scvi-tools' default (Adam, ``eps=0.01``, ``weight_decay=1e-6``). ``step_losses`` records
    every training step's loss.
    """

    def __init__(
        self, n_genes: int, n_batch: int, lr: float = 1e-3, kl_weight: float = 1.0, **vae: Any
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.module = VAE(n_input=n_genes, n_batch=n_batch, **vae)
        self.step_losses: list[float] = []

    def _elbo(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """scvi-tools' loss of the batch's raw counts, logged as ``<stage>_loss``."""
        _, _, output = self.module(
            scvi_tensors(batch), loss_kwargs={"kl_weight": self.hparams["kl_weight"]}
        )
        loss = output.loss
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=len(batch["batch_n"]))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._elbo(batch, "train")
        self.step_losses.append(loss.detach().item())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._elbo(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams["lr"], eps=0.01, weight_decay=1e-6
        )


def train(
    max_steps: int = 60,
    seed: int = 0,
    accelerator: str = "auto",
    root_dir: str | Path | None = None,
    **vae: Any,
) -> ScviVAEModule:
    """Seed everything, build the DataModule and the VAE, and fit for ``max_steps`` steps."""
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = pbmc_datamodule(seed=seed)
    model = ScviVAEModule(
        n_genes=datamodule.n_genes, n_batch=len(datamodule.categories["batch"]), **vae
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root_dir,
    )
    trainer.fit(model, datamodule=datamodule)
    return model


def main() -> None:
    """Train, then print the mean loss of the first and the last ten steps and the val loss."""
    model = train()
    losses = np.asarray(model.step_losses)
    print(
        f"scvi-tools VAE, {len(losses)} steps: mean train loss of the first 10 steps "
        f"{losses[:10].mean():.1f}, of the last 10 {losses[-10:].mean():.1f}; "
        f"val loss {float(model.trainer.callback_metrics['val_loss']):.1f}"
    )


if __name__ == "__main__":
    main()
