"""What a normalization did, as a report: JSON statistics, a per-gene table and PNG plots.

:func:`collect_report_data` streams the cells once through the DataModule's own transfer hook (so
the numbers are exactly what a model receives) and keeps, per gene, the mean and standard deviation
of the raw counts (before) and of ``x_ng`` (after), a sample of values for histograms, per-cell
summaries and per-group gene means. The ``plot_*`` functions turn that into matplotlib Figures
(object API: no pyplot state, no display needed); :func:`write_stats_report` writes everything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

__all__ = [
    "ReportData",
    "collect_report_data",
    "plot_gene_mean_std",
    "plot_groups",
    "plot_pipeline_steps",
    "plot_value_distribution",
    "write_stats_report",
]

_VALUE_SAMPLE = 200_000  # values kept for each histogram
_TOP_GENES = 30  # genes shown in the per-group heatmap


@dataclass
class _Moments:
    """Per-gene running sums in float64 (mean and ddof=1 std on demand)."""

    n_genes: int
    count: int = 0
    sum_g: np.ndarray = field(init=False)
    sum_sq_g: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.sum_g = np.zeros(self.n_genes)
        self.sum_sq_g = np.zeros(self.n_genes)

    def update(self, values_ng: np.ndarray) -> None:
        self.count += values_ng.shape[0]
        self.sum_g += values_ng.sum(axis=0)
        self.sum_sq_g += np.square(values_ng).sum(axis=0)

    @property
    def mean_g(self) -> np.ndarray:
        return self.sum_g / max(self.count, 1)

    @property
    def std_g(self) -> np.ndarray:
        variance = (self.sum_sq_g - self.count * self.mean_g**2) / max(self.count - 1, 1)
        return np.sqrt(np.clip(variance, 0.0, None))


@dataclass
class ReportData:
    """Everything the plots and the JSON need, gathered in one pass over the cells."""

    var_names: list[str]
    before: _Moments
    after: _Moments
    before_values: np.ndarray
    after_values: np.ndarray
    total_counts_n: np.ndarray
    after_cell_mean_n: np.ndarray
    group_name: str | None
    group_labels: list[str]
    group_codes_n: np.ndarray
    group_sum_kg: np.ndarray
    group_count_k: np.ndarray
    step_stats: dict[str, Any]
    datamodule_summary: dict[str, Any]


def _group_key(datamodule: Any) -> tuple[str | None, list[str]]:
    """Compare batches when there is a batch column, otherwise cell types, otherwise nothing."""
    categories = getattr(datamodule, "categories", {}) or {}
    for name in ("batch", "cell_type"):
        if name in categories:
            return name, [str(label) for label in categories[name]]
    return None, []


def _datamodule_summary(datamodule: Any) -> dict[str, Any]:
    options = (
        "normalization_type",
        "per_cell_normalization",
        "per_gene_normalization",
        "target_sum",
        "log1p",
        "max_value",
        "batch_key",
        "cell_type_key",
        "total_counts_key",
        "batch_aware_normalization",
        "biological_normalization",
    )
    summary: dict[str, Any] = {"class": type(datamodule).__name__}
    summary.update(
        {name: getattr(datamodule, name) for name in options if hasattr(datamodule, name)}
    )
    split = getattr(datamodule, "split", {}) or {}
    summary["split_sizes"] = {name: len(indices) for name, indices in split.items()}
    summary["n_genes"] = datamodule.n_genes
    pipeline = getattr(datamodule, "pipeline", None)
    if pipeline is not None:
        summary["pipeline"] = repr(pipeline)
    return summary


def collect_report_data(
    datamodule: Any, max_cells: int | None = 20_000, progress: bool = True, seed: int = 0
) -> ReportData:
    """Stream up to ``max_cells`` cells (in storage order) through ``datamodule.normalize``.

    The DataModule must be set up (statistics fitted). Its monitors see these cells too, so
    ``get_normalization_stats()`` afterwards describes exactly the cells of the report.
    """
    rng = np.random.default_rng(seed)
    n_genes = datamodule.n_genes
    group_name, group_labels = _group_key(datamodule)
    n_groups = max(len(group_labels), 1)
    before, after = _Moments(n_genes), _Moments(n_genes)
    group_sum_kg = np.zeros((n_groups, n_genes))
    group_count_k = np.zeros(n_groups)
    before_values: list[np.ndarray] = []
    after_values: list[np.ndarray] = []
    totals: list[np.ndarray] = []
    cell_means: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    loader = datamodule.predict_dataloader()
    n_total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    limit = max_cells if max_cells is not None else math.inf
    seen = 0
    with tqdm(
        total=min(n_total or limit, limit),
        desc="statistics report",
        unit="cell",
        disable=not progress,
        leave=False,
    ) as bar:
        for batch in loader:
            if seen >= limit:
                break
            out = datamodule.normalize(batch, stage="predict")
            x_ng = out["x_ng"].detach().to("cpu", torch.float64).numpy()
            counts = out["counts_ng"]
            counts = counts.to_dense() if counts.layout != torch.strided else counts
            counts_ng = counts.detach().to("cpu", torch.float64).numpy()
            take = int(min(x_ng.shape[0], limit - seen))
            x_ng, counts_ng = x_ng[:take], counts_ng[:take]
            before.update(counts_ng)
            after.update(x_ng)
            per_batch = max(1, _VALUE_SAMPLE * take // int(min(n_total or limit, limit)))
            before_values.append(rng.choice(counts_ng.ravel(), size=per_batch))
            after_values.append(rng.choice(x_ng.ravel(), size=per_batch))
            totals.append(out["total_counts_n"][:take].detach().to("cpu", torch.float64).numpy())
            cell_means.append(x_ng.mean(axis=1))
            if group_name is not None:
                code_n = out[f"{group_name}_n"][:take].detach().cpu().numpy().astype(np.int64)
            else:
                code_n = np.zeros(take, dtype=np.int64)
            codes.append(code_n)
            known = code_n >= 0
            np.add.at(group_sum_kg, code_n[known], x_ng[known])
            group_count_k += np.bincount(code_n[known], minlength=n_groups)
            seen += take
            bar.update(take)
    return ReportData(
        var_names=list(datamodule.var_names),
        before=before,
        after=after,
        before_values=np.concatenate(before_values) if before_values else np.zeros(0),
        after_values=np.concatenate(after_values) if after_values else np.zeros(0),
        total_counts_n=np.concatenate(totals) if totals else np.zeros(0),
        after_cell_mean_n=np.concatenate(cell_means) if cell_means else np.zeros(0),
        group_name=group_name,
        group_labels=group_labels,
        group_codes_n=np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64),
        group_sum_kg=group_sum_kg,
        group_count_k=group_count_k,
        step_stats=datamodule.get_normalization_stats(),
        datamodule_summary=_datamodule_summary(datamodule),
    )


# --------------------------------------------------------------------------------------- plots
def _title(data: ReportData) -> str:
    summary = data.datamodule_summary
    return f"{summary['class']}: normalization_type={summary.get('normalization_type')!r}"


def plot_gene_mean_std(data: ReportData) -> Figure:
    """Per-gene mean against standard deviation, raw counts (left) and ``x_ng`` (right)."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    positive = (data.before.mean_g > 0) & (data.before.std_g > 0)
    left.scatter(data.before.mean_g[positive], data.before.std_g[positive], s=4, alpha=0.5)
    left.set(
        xscale="log",
        yscale="log",
        xlabel="mean of raw counts",
        ylabel="std of raw counts",
        title="before: raw counts per gene",
    )
    right.scatter(data.after.mean_g, data.after.std_g, s=4, alpha=0.5, color="tab:orange")
    right.set(xlabel="mean of x_ng", ylabel="std of x_ng", title="after: x_ng per gene")
    figure.suptitle(f"{_title(data)} ({data.after.count} cells, {len(data.var_names)} genes)")
    return figure


def plot_value_distribution(data: ReportData) -> Figure:
    """Histograms of all values (a uniform sample): log1p of raw counts, and ``x_ng``."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.hist(np.log1p(data.before_values), bins=60, color="tab:blue")
    left.set(yscale="log", xlabel="log1p(raw count)", ylabel="values", title="before: raw counts")
    finite = data.after_values[np.isfinite(data.after_values)]
    right.hist(finite, bins=80, color="tab:orange")
    right.set(yscale="log", xlabel="x_ng", ylabel="values", title="after: normalized values")
    zero_before = float(np.mean(data.before_values == 0)) if data.before_values.size else math.nan
    zero_after = float(np.mean(finite == 0)) if finite.size else math.nan
    left.text(
        0.97, 0.95, f"zeros: {zero_before:.1%}", transform=left.transAxes, ha="right", va="top"
    )
    right.text(
        0.97, 0.95, f"zeros: {zero_after:.1%}", transform=right.transAxes, ha="right", va="top"
    )
    figure.suptitle(_title(data))
    return figure


def plot_groups(data: ReportData) -> Figure | None:
    """Per batch (or cell type): library sizes before, per-cell mean of ``x_ng`` after, and the
    group means of the genes whose means differ most between groups, after normalization. None
    without a group column."""
    if data.group_name is None or not data.group_labels:
        return None
    present = [k for k in range(len(data.group_labels)) if data.group_count_k[k] > 0]
    labels = [data.group_labels[k] for k in present]
    figure = Figure(figsize=(14, 4.8), layout="constrained")
    library, cell_mean, heatmap = figure.subplots(1, 3, width_ratios=[1, 1, 1.6])
    by_group = [data.group_codes_n == k for k in present]
    library.boxplot(
        [np.log10(np.maximum(data.total_counts_n[m], 1)) for m in by_group],
        orientation="horizontal",
        tick_labels=labels,
    )
    library.set(xlabel="log10 library size (total_counts_n)", title="before: library size")
    cell_mean.boxplot(
        [data.after_cell_mean_n[m] for m in by_group],
        orientation="horizontal",
        tick_labels=[""] * len(labels),
    )
    cell_mean.set(xlabel="mean of x_ng over genes", title="after: per-cell mean")
    all_means_kg = data.group_sum_kg[present] / data.group_count_k[present][:, None]
    top = np.argsort(all_means_kg.std(axis=0))[::-1][:_TOP_GENES]
    means_kg = all_means_kg[:, top]
    limit = float(np.abs(means_kg).max()) or 1.0
    image = heatmap.imshow(means_kg, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    heatmap.set_xticks(range(len(top)), [data.var_names[g] for g in top], rotation=90, fontsize=7)
    heatmap.set_yticks(range(len(labels)), [""] * len(labels))
    heatmap.set_title(f"after: mean x_ng per {data.group_name} ({len(top)} most different genes)")
    figure.colorbar(image, ax=heatmap, shrink=0.8)
    figure.suptitle(f"{_title(data)}, by {data.group_name}")
    return figure


def plot_pipeline_steps(step_stats: dict[str, Any], title: str = "") -> Figure:
    """Mean +- std, min/max and zero fraction of each pipeline step's output (the monitors)."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    values, zeros = figure.subplots(1, 2)
    names = list(step_stats)
    positions = np.arange(len(names))
    mean = np.array([step_stats[n].get("mean", np.nan) for n in names], dtype=float)
    std = np.array([step_stats[n].get("std", np.nan) for n in names], dtype=float)
    low = np.array([step_stats[n].get("min", np.nan) for n in names], dtype=float)
    high = np.array([step_stats[n].get("max", np.nan) for n in names], dtype=float)
    values.errorbar(positions, mean, yerr=std, fmt="o", capsize=4, label="mean +- std")
    values.scatter(positions, low, marker="v", color="grey", label="min")
    values.scatter(positions, high, marker="^", color="grey", label="max")
    values.set_yscale("symlog")
    values.set_xticks(positions, names)
    values.set(title="output of each pipeline step", ylabel="value (symlog)")
    values.legend(fontsize=8)
    zeros.bar(positions, [step_stats[n].get("zero_fraction", np.nan) for n in names])
    zeros.set_xticks(positions, names)
    zeros.set(title="fraction of zeros", ylim=(0, 1))
    figure.suptitle(title)
    return figure


# -------------------------------------------------------------------------------------- report
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic | torch.Tensor):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _fitted_gene_columns(datamodule: Any) -> dict[str, np.ndarray]:
    """The fitted per-gene statistics (1-D, one value per gene) found in the DataModule's state."""
    columns: dict[str, np.ndarray] = {}
    fitted = (
        (datamodule.state_dict() or {}).get("fitted", {})
        if hasattr(datamodule, "state_dict")
        else {}
    )
    for step, state in (fitted or {}).items():
        for name, tensor in (state or {}).items():
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.ndim == 1
                and tensor.numel() == datamodule.n_genes
            ):
                columns[f"fitted_{step}_{name}"] = tensor.detach().cpu().double().numpy()
    return columns


def write_stats_report(
    datamodule: Any, directory: str | Path, max_cells: int | None = 20_000, progress: bool = True
) -> dict[str, Path]:
    """Write ``normalization_stats.json``, ``gene_stats.tsv`` and the PNG plots into ``directory``.

    Returns ``{"statistics": ..., "genes": ..., "<plot name>": ...}`` paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = collect_report_data(datamodule, max_cells=max_cells, progress=progress)
    written: dict[str, Path] = {}

    genes = {
        "gene": np.asarray(data.var_names, dtype=object),
        "mean_before": data.before.mean_g,
        "std_before": data.before.std_g,
        "mean_after": data.after.mean_g,
        "std_after": data.after.std_g,
        **_fitted_gene_columns(datamodule),
    }
    genes_path = directory / "gene_stats.tsv"
    with genes_path.open("w") as handle:
        handle.write("\t".join(genes) + "\n")
        for row in zip(*genes.values(), strict=True):
            handle.write(
                "\t".join(str(v) if isinstance(v, str) else f"{v:.6g}" for v in row) + "\n"
            )
    written["genes"] = genes_path

    def spread(values: np.ndarray) -> dict[str, float]:
        return {
            q: float(np.quantile(values, p)) for q, p in (("min", 0), ("median", 0.5), ("max", 1))
        }

    report = {
        "datamodule": data.datamodule_summary,
        "cells_in_report": data.after.count,
        "steps": data.step_stats,
        "genes": {
            "mean_before": spread(data.before.mean_g),
            "std_before": spread(data.before.std_g),
            "mean_after": spread(data.after.mean_g),
            "std_after": spread(data.after.std_g),
        },
        "groups": {
            "by": data.group_name,
            "cells": {
                label: int(count)
                for label, count in zip(data.group_labels, data.group_count_k, strict=False)
            },
        },
    }
    stats_path = directory / "normalization_stats.json"
    stats_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    written["statistics"] = stats_path

    figures = {
        "gene_mean_std": plot_gene_mean_std(data),
        "value_distribution": plot_value_distribution(data),
        "pipeline_steps": plot_pipeline_steps(data.step_stats, _title(data)),
        "groups": plot_groups(data),
    }
    for name, figure in figures.items():
        if figure is not None:
            path = directory / f"{name}.png"
            figure.savefig(path, dpi=110)
            written[name] = path
    return written
