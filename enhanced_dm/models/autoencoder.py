"""A small MLP autoencoder that reconstructs the normalized expression ``x_ng``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from enhanced_dm.models.base import ReferenceModule, mlp
from enhanced_dm.models.features import CONTEXT_SUFFIXES

__all__ = ["ExpressionAutoencoder"]


class ExpressionAutoencoder(ReferenceModule):
    """Encode ``[x_ng | context]`` to ``latent_dim`` numbers and decode ``x_ng`` back (mean squared error).

    .. math::

        z_{nd} = f([x_{ng} \\mid c_n]), \\qquad
        \\mathcal{L} = \\frac{1}{NG}\\sum_{n,g} (\\hat x_{ng} - x_{ng})^2

    The decoder's width is ``x_ng``'s, taken from the DataModule's ``n_genes`` in ``setup`` unless
    ``n_genes`` is given. Logs ``train/loss``, ``val/loss``, ``test/loss``; ``predict_step`` returns
    ``cell_index_n`` and the embedding ``z_nd``.
    """

    def __init__(
        self,
        n_genes: int | None = None,
        latent_dim: int = 16,
        hidden_dims: Sequence[int] = (256,),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        input_dim: int | None = None,
        input_key: str = "x_ng",
        context_suffixes: Sequence[str] = CONTEXT_SUFFIXES,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hidden_dims = [int(width) for width in hidden_dims]
        self.encoder = mlp(input_dim, self.hidden_dims, latent_dim, dropout)
        self.decoder: nn.Sequential | None = None
        if n_genes is not None:
            self._build_decoder(int(n_genes))

    def _build_decoder(self, n_genes: int) -> None:
        self.hparams["n_genes"] = n_genes
        self.decoder = mlp(
            self.hparams["latent_dim"], self.hidden_dims[::-1], n_genes, self.hparams["dropout"]
        )

    def setup(self, stage: str) -> None:
        """Size the decoder from the DataModule's ``n_genes`` when it was not given, then the
        lazy encoder layer under DDP (there is no trainer yet in ``__init__``)."""
        if self.decoder is None:
            datamodule = getattr(self._trainer, "datamodule", None)
            n_genes = getattr(datamodule, "n_genes", None)
            if n_genes is None:
                raise ValueError("ExpressionAutoencoder needs n_genes or a DataModule with n_genes")
            self._build_decoder(int(n_genes))
        self.size_lazy_layers_for_ddp()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_nd, reconstruction_ng)``."""
        z_nd = self.encoder(self.features(batch))
        assert self.decoder is not None, "call setup() or give n_genes"
        return z_nd, self.decoder(z_nd)

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _, reconstruction_ng = self(batch)
        return nn.functional.mse_loss(reconstruction_ng, batch[self.hparams["input_key"]].float())

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log(
            "train/loss", loss, prog_bar=True, batch_size=batch[self.hparams["input_key"]].shape[0]
        )
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        n_cells = batch[self.hparams["input_key"]].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=n_cells, sync_dist=True)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log(
            "test/loss", loss, batch_size=batch[self.hparams["input_key"]].shape[0], sync_dist=True
        )

    def predict_step(
        self, batch: Mapping[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        z_nd, _ = self(batch)
        return self.with_cell_index({"z_nd": z_nd}, batch)
