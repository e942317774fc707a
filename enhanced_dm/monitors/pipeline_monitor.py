"""One OutputStatsMetric per pipeline step, an InputStatsMetric on the counts, and the NaN/inf guard."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from enhanced_dm.errors import ConfigError, NonFiniteOutputError
from enhanced_dm.monitors.input_stats import InputStatsMetric
from enhanced_dm.monitors.output_stats import OutputStatsMetric
from enhanced_dm.transforms.base import Batch, Pipeline, Transform

__all__ = ["NanPolicy", "PipelineMonitor"]

NanPolicy = Literal["raise", "warn", "ignore"]


class PipelineMonitor(nn.Module):
    """Watches the output of every transform of a pipeline.

    ``observe`` is the pipeline's ``on_output`` hook: it updates the step's metric (never logs)
    and, for the step that writes the dense ``counts_ng`` (densify), the input summary
    (:class:`InputStatsMetric`), whose ``zero_count_cells`` and ``all_zero_genes`` are added to
    that step's entry of ``compute()`` (so every entry stays keyed by a transform name).
    Every floating tensor a step writes is checked for NaN/inf, not only its ``output_key``.
    ``check_finite`` applies ``nan_policy`` once per batch with a single device sync:
    ``"raise"`` fails naming the first transform (and key) that produced NaN/inf, ``"warn"`` warns
    and goes on, ``"ignore"`` skips the check (the counts in the statistics are still kept).
    """

    def __init__(
        self, pipeline: Pipeline, nan_policy: NanPolicy = "raise", n_genes: int | None = None
    ) -> None:
        super().__init__()
        if nan_policy not in ("raise", "warn", "ignore"):
            raise ConfigError(f"nan_policy must be 'raise', 'warn' or 'ignore', got {nan_policy!r}")
        self.nan_policy = nan_policy
        # A list, not a ModuleDict: transform names are free text and may clash with nn.Module
        # attributes ("double", "train", "to", ...).
        self.names = [name for name, _ in pipeline.named_transforms()]
        self.step_metrics = nn.ModuleList(
            [
                OutputStatsMetric(transform.clip_value)
                for _, transform in pipeline.named_transforms()
            ]
        )
        self._index = {name: index for index, name in enumerate(self.names)}
        self.input_metric = InputStatsMetric(n_genes)
        self._input_step: str | None = None
        self._nonfinite: list[tuple[str, str, torch.Tensor]] = []

    def observe(self, name: str, transform: Transform, out: Batch) -> None:
        counts_ng = out.get("counts_ng")
        if counts_ng is not None and counts_ng.layout == torch.strided:
            self.input_metric.update(counts_ng)
            self._input_step = name
        values = out.get(transform.output_key)
        if values is not None and torch.is_floating_point(values):
            self.step_metrics[self._index[name]].update(values)
        if self.nan_policy == "ignore":
            return
        for key, tensor in out.items():
            if torch.is_tensor(tensor) and torch.is_floating_point(tensor):
                if tensor.layout != torch.strided:
                    tensor = tensor.values()
                self._nonfinite.append((name, key, (~torch.isfinite(tensor)).any()))

    def check_finite(self) -> None:
        """Apply ``nan_policy`` to the steps observed since the last call (one device sync)."""
        flags, self._nonfinite = self._nonfinite, []
        if not flags or not bool(torch.stack([flag for _, _, flag in flags]).any()):
            return
        culprit, key, _ = next(entry for entry in flags if bool(entry[2]))
        source = (
            "the input batch already held them (check the data file)"
            if self.names and culprit == self.names[0]
            else "the steps before it produced finite values"
        )
        message = f"transform {culprit!r} produced NaN or inf values in {key!r}; {source}"
        if self.nan_policy == "raise":
            raise NonFiniteOutputError(
                message + " (nan_policy='raise'; use 'warn' to continue and count them in "
                "get_normalization_stats()['<transform>']['nonfinite_count'])"
            )
        warnings.warn(message, stacklevel=2)

    def compute(self) -> dict[str, dict[str, float]]:
        stats = {
            name: metric.compute()
            for name, metric in zip(self.names, self.step_metrics, strict=True)
            if metric.update_count
        }
        if self.input_metric.update_count and self._input_step in stats:
            summary = self.input_metric.compute()
            stats[self._input_step].update(
                zero_count_cells=summary["zero_count_cells"],
                all_zero_genes=summary["all_zero_genes"],
            )
        return stats

    def reset(self) -> None:
        for metric in self.step_metrics:
            metric.reset()
        self.input_metric.reset()
