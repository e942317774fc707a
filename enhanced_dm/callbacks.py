"""Lightning callback that logs the normalization statistics to the trainer's loggers."""

from __future__ import annotations

from typing import Any

import lightning as L

__all__ = ["NormalizationStatsCallback", "flatten_stats"]


def flatten_stats(stats: dict[str, Any], prefix: str = "normalization") -> dict[str, float]:
    """``{"z_score": {"mean": 0.1}}`` -> ``{"normalization/z_score/mean": 0.1}`` (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in stats.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(flatten_stats(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class NormalizationStatsCallback(L.Callback):
    """Every ``log_every_n_steps`` training steps and at each epoch end, log
    ``datamodule.get_normalization_stats()`` as ``normalization/<transform>/<stat>`` scalars.

    Every rank computes the statistics (the monitors' torchmetrics sync across ranks there); only
    global rank zero writes them, so one set of logs is produced.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        super().__init__()
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps

    def _log(self, trainer: L.Trainer) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "get_normalization_stats"):
            return
        flat = flatten_stats(datamodule.get_normalization_stats())
        if trainer.is_global_zero and flat:
            for logger in trainer.loggers:
                logger.log_metrics(flat, step=trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if (batch_idx + 1) % self.log_every_n_steps == 0:
            self._log(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer)
