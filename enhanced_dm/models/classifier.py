"""A small MLP that predicts each cell's type from ``x_ng`` and any context features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from enhanced_dm.errors import ConfigError
from enhanced_dm.models.base import ReferenceModule, mlp
from enhanced_dm.models.features import CONTEXT_SUFFIXES

__all__ = ["CellTypeClassifier"]

# Cells whose label is missing carry the code -1 (pandas' code for NaN); they add no loss.
IGNORE_INDEX = -1


class CellTypeClassifier(ReferenceModule):
    """Cross-entropy MLP over ``[x_ng | *_np | *_nk | *_nr | *_nd]`` predicting ``batch[label_key]``.

    ``n_classes=None`` takes the number of classes (and their names) from the DataModule's frozen
    category map in ``setup``; ``input_dim=None`` sizes the first layer from the first batch
    (``nn.LazyLinear``), so the same model runs on any DataModule whatever context it adds (under
    DDP, one batch sizes it in ``setup``).

    Logs ``train/loss``, ``val/loss``, ``val/acc`` (micro accuracy), ``val/balanced_acc`` (macro
    recall) and the same under ``test/``. ``predict_step`` returns ``cell_index_n``, the predicted
    code ``pred_n`` and the class probabilities ``prob_nc``.
    """

    def __init__(
        self,
        n_classes: int | None = None,
        hidden_dims: Sequence[int] = (256, 64),
        dropout: float = 0.3,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-2,
        label_smoothing: float = 0.0,
        input_dim: int | None = None,
        label_key: str = "cell_type_n",
        input_key: str = "x_ng",
        context_suffixes: Sequence[str] = CONTEXT_SUFFIXES,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hidden_dims = [int(width) for width in hidden_dims]
        self.network: nn.Sequential | None = None
        if n_classes is not None:
            self._build(int(n_classes))

    def _build(self, n_classes: int) -> None:
        if n_classes < 2:
            raise ConfigError(f"CellTypeClassifier needs at least 2 classes, got {n_classes}")
        self.hparams["n_classes"] = n_classes
        self.network = mlp(
            self.hparams["input_dim"], self.hidden_dims, n_classes, self.hparams["dropout"]
        )
        self.loss = nn.CrossEntropyLoss(
            ignore_index=IGNORE_INDEX, label_smoothing=self.hparams["label_smoothing"]
        )
        metric_options: dict[str, Any] = {"num_classes": n_classes, "ignore_index": IGNORE_INDEX}
        self.val_acc = MulticlassAccuracy(average="micro", **metric_options)
        self.val_balanced_acc = MulticlassAccuracy(average="macro", **metric_options)
        self.test_acc = MulticlassAccuracy(average="micro", **metric_options)
        self.test_balanced_acc = MulticlassAccuracy(average="macro", **metric_options)

    def setup(self, stage: str) -> None:
        """Size the output layer from the DataModule's category map when ``n_classes`` is None."""
        if self.network is None:
            names = _class_names_from_datamodule(self, self.hparams["label_key"])
            self.hparams["class_names"] = names
            self._build(len(names))
        self.size_lazy_layers_for_ddp()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(n, n_classes)``."""
        if self.network is None:
            raise ConfigError(
                "CellTypeClassifier does not know its number of classes yet: give n_classes, or "
                "run it through a Trainer with a DataModule that declares cell_type_key"
            )
        return self.network(self.features(batch))

    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        key = self.hparams["label_key"]
        if key not in batch:
            raise ConfigError(
                f"the batch has no {key!r} (keys: {sorted(batch)}); set the DataModule's "
                "cell_type_key to the obs column that holds the cell types"
            )
        return batch[key].long()

    def _step(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self(batch)
        labels = self._labels(batch)
        return self.loss(logits, labels), logits, labels

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, labels = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.val_acc(logits, labels)
        self.val_balanced_acc(logits, labels)
        self.log("val/loss", loss, prog_bar=True, batch_size=labels.shape[0], sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/balanced_acc", self.val_balanced_acc)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.test_acc(logits, labels)
        self.test_balanced_acc(logits, labels)
        self.log("test/loss", loss, batch_size=labels.shape[0], sync_dist=True)
        self.log("test/acc", self.test_acc)
        self.log("test/balanced_acc", self.test_balanced_acc)

    def predict_step(
        self, batch: Mapping[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        prob_nc = torch.softmax(self(batch), dim=1)
        return self.with_cell_index({"pred_n": prob_nc.argmax(dim=1), "prob_nc": prob_nc}, batch)


def _class_names_from_datamodule(module: L.LightningModule, label_key: str) -> list[str]:
    """Category names of the obs column behind ``label_key`` (``cell_type_n`` -> ``cell_type_key``)."""
    trainer = module._trainer
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    categories = getattr(datamodule, "categories", None)
    if not categories:
        raise ConfigError(
            "CellTypeClassifier(n_classes=None) takes its classes from the DataModule's "
            "`categories`, but no DataModule with categories is attached; give n_classes"
        )
    name = label_key.removesuffix("_n")
    candidates = [name]
    role_key = getattr(datamodule, f"{name}_key", None)  # cell_type_n <- datamodule.cell_type_key
    if isinstance(role_key, str):
        candidates.insert(0, role_key)
    for candidate in candidates:
        if candidate in categories:
            return [str(category) for category in categories[candidate]]
    raise ConfigError(
        f"the DataModule has no category map for {label_key!r} (looked for {candidates}, it has "
        f"{sorted(categories)}); set datamodule.cell_type_key"
    )
