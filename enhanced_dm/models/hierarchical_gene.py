"""A transformer over pathway and compartment tokens, with the reference's enhanced-model signature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from enhanced_dm.errors import ConfigError

__all__ = ["HierarchicalGeneModel"]


def _row_normalized(membership: torch.Tensor, n_genes: int, what: str) -> torch.Tensor:
    """Dense float32 units x genes membership, each row divided by its gene count."""
    dense = (membership.to_dense() if membership.is_sparse else membership).to(torch.float32)
    if dense.ndim != 2 or dense.shape[1] != n_genes:
        raise ConfigError(
            f"{what} must be units x genes ({n_genes} genes), got {tuple(dense.shape)}"
        )
    return dense / dense.sum(1, keepdim=True).clamp_min(1.0)


class HierarchicalGeneModel(L.LightningModule):
    r"""Cells as sequences of pathway and compartment tokens, through a transformer encoder.

    Each gene :math:`g` has a learned embedding :math:`e_g` (``token_dim``). Token :math:`u` of
    cell :math:`c` is the expression-weighted mean of its genes' embeddings,
    :math:`\frac{1}{|u|}\sum_{g \in u} x_{cg}\, e_g`, for every pathway (``pathway_info``:
    pathways x genes membership, e.g. ``dm.pathway_membership_pg``) and compartment
    (``compartment_info``: compartments x genes, e.g. ``dm.compartment_membership_kg``). Tokens are
    projected to ``d_model``, get a learned pathway / compartment type embedding, pass
    ``nlayers`` encoder layers (``nhead`` heads, feed-forward ``d_hid``) and are mean-pooled into
    the cell embedding (``output_dim``), which ``forward`` returns. With ``n_classes`` a linear
    head on the embedding is trained with cross-entropy on ``batch[label_key]`` (code -1: no
    loss), so ``trainer.fit(model, datamodule=HierarchicalDataModule(...))`` trains it;
    ``predict_step`` returns the embedding ``z_nd`` and ``cell_index_n``.
    Cost: one (units x genes) @ (genes x token_dim) product per cell; meant for hundreds to a few
    thousand genes (e.g. highly variable genes).
    """

    def __init__(
        self,
        token_dim: int,
        d_model: int,
        nhead: int,
        d_hid: int,
        nlayers: int,
        output_dim: int,
        pathway_info: torch.Tensor,
        compartment_info: torch.Tensor | None = None,
        dropout: float = 0.1,
        n_classes: int | None = None,
        label_key: str = "cell_type_n",
        input_key: str = "x_ng",
        learning_rate: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["pathway_info", "compartment_info"])
        n_genes = int(pathway_info.shape[1])
        units = [_row_normalized(pathway_info, n_genes, "pathway_info")]
        if compartment_info is not None:
            units.append(_row_normalized(compartment_info, n_genes, "compartment_info"))
        self.membership_ug: torch.Tensor
        self.register_buffer("membership_ug", torch.cat(units))
        types = [torch.full((len(part),), index) for index, part in enumerate(units)]
        self.register_buffer("unit_type_u", torch.cat(types))
        self.gene_embedding = nn.Parameter(torch.randn(n_genes, token_dim) * token_dim**-0.5)
        self.project = nn.Linear(token_dim, d_model)
        self.type_embedding = nn.Embedding(len(units), d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, d_hid, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.output = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, output_dim))
        self.head = None if n_classes is None else nn.Linear(output_dim, int(n_classes))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The cell embeddings (cells x ``output_dim``)."""
        x_ng = batch[self.hparams["input_key"]].to(self.gene_embedding.dtype)
        scaled_ngd = x_ng[:, :, None] * self.gene_embedding  # cells x genes x token_dim
        tokens = self.project(self.membership_ug @ scaled_ngd)
        tokens = tokens + self.type_embedding(self.unit_type_u)
        return self.output(self.encoder(tokens).mean(1))

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.head is None:
            raise ConfigError("HierarchicalGeneModel trains a classification head: pass n_classes")
        logits = self.head(self(batch))
        return nn.functional.cross_entropy(
            logits, batch[self.hparams["label_key"]], ignore_index=-1
        )

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["cell_index_n"]))
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> None:
        self.log("val/loss", self._loss(batch), batch_size=len(batch["cell_index_n"]))

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> dict[str, Any]:
        """The embedding as ``z_nd`` (the key the predictions table reads) and ``cell_index_n``."""
        return {"z_nd": self(batch), "cell_index_n": batch["cell_index_n"]}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams["learning_rate"])
