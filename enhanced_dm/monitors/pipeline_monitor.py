"""One OutputStatsMetric per pipeline step, plus the NaN/inf guard."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from enhanced_dm.errors import ConfigError, NonFiniteOutputError
from enhanced_dm.monitors.output_stats import OutputStatsMetric
from enhanced_dm.transforms.base import Batch, Pipeline, Transform

__all__ = ["NanPolicy", "PipelineMonitor"]

NanPolicy = Literal["raise", "warn", "ignore"]


class PipelineMonitor(nn.Module):
    """Watches the output key of every transform of a pipeline.

    ``observe`` is the pipeline's ``on_output`` hook: it updates the step's metric (never logs).
    ``check_finite`` applies ``nan_policy`` once per batch with a single device sync:
    ``"raise"`` fails naming the first transform that produced NaN/inf, ``"warn"`` warns and goes
    on, ``"ignore"`` skips the check (the counts are still kept).
    """

    def __init__(self, pipeline: Pipeline, nan_policy: NanPolicy = "raise") -> None:
        super().__init__()
        if nan_policy not in ("raise", "warn", "ignore"):
            raise ConfigError(f"nan_policy must be 'raise', 'warn' or 'ignore', got {nan_policy!r}")
        self.nan_policy = nan_policy
        self.metrics = nn.ModuleDict(
            {
                name: OutputStatsMetric(transform.clip_value)
                for name, transform in pipeline.named_transforms()
            }
        )
        self._nonfinite: list[tuple[str, torch.Tensor]] = []

    def observe(self, name: str, transform: Transform, out: Batch) -> None:
        values = out.get(transform.output_key)
        if values is None or not torch.is_floating_point(values):
            return
        self.metrics[name].update(values)
        if self.nan_policy != "ignore":
            self._nonfinite.append((name, (~torch.isfinite(values)).any()))

    def check_finite(self) -> None:
        flags, self._nonfinite = self._nonfinite, []
        if not flags or not bool(torch.stack([flag for _, flag in flags]).any()):
            return
        culprit = next(name for name, flag in flags if bool(flag))
        message = f"transform {culprit!r} produced NaN or inf values"
        if self.nan_policy == "raise":
            raise NonFiniteOutputError(message + " (nan_policy='raise')")
        warnings.warn(message, stacklevel=2)

    def compute(self) -> dict[str, dict[str, float]]:
        return {
            name: metric.compute() for name, metric in self.metrics.items() if metric.update_count
        }

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
