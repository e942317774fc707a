"""What the reference models share: the MLP builder, feature assembly and the optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from enhanced_dm.models.features import input_features

__all__ = ["ReferenceModule", "mlp"]


class ReferenceModule(L.LightningModule):
    """Base of the reference models: reads ``[x_ng | context]`` and trains with AdamW.

    Subclasses call ``save_hyperparameters()`` with ``learning_rate``, ``weight_decay``,
    ``input_key`` and ``context_suffixes`` among their arguments.
    """

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model input: ``x_ng`` and the context features, concatenated."""
        return input_features(
            batch, self.hparams["input_key"], tuple(self.hparams["context_suffixes"])
        )

    @staticmethod
    def with_cell_index(
        out: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``out`` plus the batch's ``cell_index_n``, so predictions can be matched to obs."""
        if "cell_index_n" in batch:
            out["cell_index_n"] = batch["cell_index_n"]
        return out

    def size_lazy_layers_for_ddp(self) -> None:
        """Size ``nn.LazyLinear`` layers from one batch when running under DDP.

        DDP cannot wrap parameters whose shape is not known yet, so in ``setup`` every rank runs one
        batch of the DataModule's ``predict_dataloader`` (no shuffling, no sampler state) through
        its transfer hook and the model; the DataModule's monitors count that batch. On one device
        nothing happens here: the first training batch sizes the layers.
        """
        trainer = self._trainer
        lazy = any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.parameters())
        if trainer is None or trainer.world_size == 1 or not lazy:
            return
        datamodule: Any = getattr(trainer, "datamodule", None)
        batch = datamodule.normalize(next(iter(datamodule.predict_dataloader())))
        with torch.no_grad():
            self(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(),
            lr=self.hparams["learning_rate"],
            weight_decay=self.hparams["weight_decay"],
        )


def mlp(
    input_dim: int | None, hidden_dims: Sequence[int], output_dim: int, dropout: float
) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Dropout blocks, then a final Linear.

    ``input_dim=None`` makes the first layer an ``nn.LazyLinear``: its width is taken from the first
    batch (``x_ng`` plus whatever context features the DataModule adds).
    """
    layers: list[nn.Module] = []
    in_dim = input_dim
    for index, width in enumerate([*hidden_dims, output_dim]):
        if in_dim is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Lazy modules are a new feature")
                layers.append(nn.LazyLinear(width))
        else:
            layers.append(nn.Linear(in_dim, width))
        if index < len(hidden_dims):
            layers += [nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
        in_dim = width
    return nn.Sequential(*layers)
