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

    ``observe_input`` summarizes the raw counts (:class:`InputStatsMetric`); its
    ``zero_count_cells`` and ``all_zero_genes`` are added to the first step's entry of
    ``compute()`` (so every entry stays keyed by a transform name). ``observe`` is the pipeline's
    ``on_output`` hook: it updates the step's metric (never logs). Every floating tensor a step
    writes is checked for NaN/inf, not only its ``output_key`` (whose check comes free with its
    statistics). ``check_finite`` applies ``nan_policy`` once per batch:
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
        watched = [(name, t) for name, t in pipeline.named_transforms() if t.monitored]
        self.names = [name for name, _ in watched]
        self.step_metrics = nn.ModuleList([OutputStatsMetric(t.clip_value) for _, t in watched])
        # Further keys a step asks to be summarized, reported as "<step>/<key>".
        self.extra = [(name, key) for name, t in watched for key in t.also_monitored]
        self.extra_metrics = nn.ModuleList([OutputStatsMetric() for _ in self.extra])
        self._index = {name: index for index, name in enumerate(self.names)}
        self.input_metric = InputStatsMetric(n_genes)
        self._nonfinite: list[tuple[str, str]] = []

    def observe_input(self, batch: Batch) -> None:
        """Summarize the raw counts entering the pipeline (zero-count cells, all-zero genes).

        Reported under the first step's name; sparse batches are read from their stored values.
        """
        counts_ng = batch.get("counts_ng")
        if counts_ng is not None and self.names:
            self.input_metric.update(counts_ng)

    def observe(self, name: str, transform: Transform, out: Batch) -> None:
        if not transform.monitored:
            return
        extras: list[OutputStatsMetric] = list(self.extra_metrics)  # type: ignore[arg-type]
        for (step, key), extra in zip(self.extra, extras, strict=True):
            if step == name and key in out:
                extra.update(out[key])
        values = out.get(transform.output_key)
        watched = values is not None and torch.is_floating_point(values)
        if values is not None and watched:
            metric: OutputStatsMetric = self.step_metrics[self._index[name]]  # type: ignore[assignment]
            metric.update(values)
            if metric.last_had_nonfinite and self.nan_policy != "ignore":
                self._nonfinite.append((name, transform.output_key))
        if self.nan_policy == "ignore":
            return
        for key, tensor in out.items():
            if key == transform.output_key and watched:
                continue
            if torch.is_tensor(tensor) and torch.is_floating_point(tensor):
                stored = tensor.values() if tensor.layout != torch.strided else tensor
                # A sum is NaN/inf when a value is; a float32 overflow is told apart by isfinite.
                if not bool(torch.isfinite(stored.sum())) and not bool(
                    torch.isfinite(stored).all()
                ):
                    self._nonfinite.append((name, key))

    def check_finite(self) -> None:
        """Apply ``nan_policy`` to the steps observed since the last call."""
        flagged, self._nonfinite = self._nonfinite, []
        if not flagged:
            return
        culprit, key = flagged[0]
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
        metrics: list[OutputStatsMetric] = list(self.step_metrics)  # type: ignore[arg-type]
        stats = {
            name: metric.compute()
            for name, metric in zip(self.names, metrics, strict=True)
            if metric.update_count
        }
        extras: list[OutputStatsMetric] = list(self.extra_metrics)  # type: ignore[arg-type]
        for (step, key), metric in zip(self.extra, extras, strict=True):
            if metric.update_count:
                stats[f"{step}/{key}"] = metric.compute()
        first = self.names[0] if self.names else None
        if self.input_metric.update_count and first in stats:
            summary = self.input_metric.compute()
            stats[first].update(
                zero_count_cells=summary["zero_count_cells"],
                all_zero_genes=summary["all_zero_genes"],
            )
        return stats

    def reset(self) -> None:
        metrics: list[OutputStatsMetric] = [*self.step_metrics, *self.extra_metrics]
        for metric in metrics:
            metric.reset()
        self.input_metric.reset()
