"""The base DataModule's options, declared once (constructor, validation, Hydra schema)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from enhanced_dm.errors import ConfigError
from enhanced_dm.monitors.pipeline_monitor import NanPolicy
from enhanced_dm.options import (
    BATCH_KEY,
    CELL_TYPE_KEY,
    Option,
    at_least,
    greater_than,
    in_interval,
)
from enhanced_dm.transforms.registry import GENE_NORMALIZATIONS

__all__ = [
    "BASE_OPTIONS",
    "SPLIT_OPTIONS",
    "STORE_OPTIONS",
    "check_base_options",
    "resolve_normalization_type",
]

STORE_OPTIONS = (
    "backed",
    "direct_read",
    "layer",
    "genes",
    "gene_join",
    "missing_genes",
    "total_counts_key",
    "counts",
)
"""Options passed through to :class:`~enhanced_dm.data.store.CellStore`."""
SPLIT_OPTIONS = ("split_key", "val_fraction", "test_fraction", "seed")
"""Options passed through to :func:`~enhanced_dm.data.split.make_split`."""


def _known_normalization(name: str) -> bool:
    return name == "none" or name in GENE_NORMALIZATIONS


def _positive_or_median(value: Any) -> bool:
    return value == "median" if isinstance(value, str) else value > 0


BASE_OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------ normalization
    Option(
        "normalization_type",
        "z_score",
        str,
        "Gene-wise normalization: z_score, robust, quantile, pearson or none.",
        _known_normalization,
        f"one of {sorted([*GENE_NORMALIZATIONS, 'none'])}",
    ),
    Option("per_cell_normalization", True, bool, "Total-count (+ log1p) per cell."),
    Option("per_gene_normalization", True, bool, "Apply the gene-wise normalization."),
    Option("robust_normalization", False, bool, "Seed flag: normalization_type='robust'."),
    Option("quantile_normalization", False, bool, "Seed flag: normalization_type='quantile'."),
    Option("batch_aware_normalization", False, bool, "Gene statistics per batch_key group."),
    Option("biological_normalization", False, bool, "Gene statistics per cell_type_key group."),
    Option(
        "target_sum",
        1e4,
        float | str,
        "Total count each cell is scaled to, or 'median' (of the train cells).",
        _positive_or_median,
        "a positive number or 'median'",
    ),
    Option("log1p", True, bool, "Natural log(1 + x) after the total-count step."),
    Option(
        "max_value",
        None,
        float | None,
        "Clip normalized values at +-max_value (z_score, robust).",
        *greater_than(0),
    ),
    Option(
        "normalization_options",
        None,
        Mapping[str, Any] | None,
        "Options of the gene-wise normalization (n_quantiles, output_distribution, theta, clip).",
    ),
    # ---------------------------------------------------------------------- obs and genes
    BATCH_KEY,
    CELL_TYPE_KEY,
    Option("obs_keys", (), Sequence[str], "More obs columns carried as <name>_n."),
    Option("total_counts_key", None, str | None, "obs column of library sizes over all genes."),
    Option("genes", None, Sequence[str] | None, "Restrict / order the genes (var names)."),
    Option("gene_join", "outer", Literal["outer", "inner"], "Gene space across files."),
    Option(
        "missing_genes",
        "error",
        Literal["error", "zeros"],
        "genes= names not in the data: error, or all-zero columns.",
    ),
    Option("layer", None, str | None, "Read this layer instead of X."),
    Option("counts", "auto", bool | Literal["auto"], "Whether the values are raw counts."),
    # ---------------------------------------------------------------------------- split
    Option("split_key", None, str | None, "obs column labelling train / val / test."),
    Option(
        "val_fraction",
        0.1,
        float,
        "Share of cells for validation.",
        *in_interval(0, 1, closed_high=False),
    ),
    Option(
        "test_fraction",
        0.0,
        float,
        "Share of cells for testing.",
        *in_interval(0, 1, closed_high=False),
    ),
    Option("seed", 0, int, "Seed of the split, the shuffles and every random draw."),
    # -------------------------------------------------------------------------- loading
    Option("batch_size", 256, int, "Cells (or items) per batch.", *at_least(1)),
    Option("block_size", 64, int, "Contiguous rows per shuffled block.", *at_least(1)),
    Option("shuffle_buffer", 16, int, "Blocks pooled and shuffled together.", *at_least(1)),
    Option("backed", False, bool, "Keep the matrix on disk."),
    Option("direct_read", True, bool, "Positional reads of uncompressed X."),
    Option("dense_counts", True, bool, "False: counts_ng stays sparse CSR (models reading x_ng)."),
    Option("num_workers", 0, int, "DataLoader worker processes.", *at_least(0)),
    Option("pin_memory", False, bool, "Pin batches for faster host-to-GPU copies."),
    # -------------------------------------------------------------------------- fitting
    Option(
        "stats_cache_dir",
        None,
        str | os.PathLike | None,
        "Where fitted statistics are cached between runs; None: no cache.",
    ),
    Option(
        "stats_max_cells",
        100_000,
        int,
        "Cells in the seeded subsample of the rank statistics (robust, quantile).",
        *at_least(1),
    ),
    Option("nan_policy", "raise", NanPolicy, "NaN/inf in a step's output: raise | warn | ignore."),
    Option("progress", True, bool, "Show progress bars while fitting."),
)


def resolve_normalization_type(
    normalization_type: str, robust_normalization: bool, quantile_normalization: bool
) -> str:
    """The gene-wise normalization named by ``normalization_type`` or by the seed's flags.

    ``robust_normalization=True`` means ``"robust"`` and ``quantile_normalization=True`` means
    ``"quantile"``; a flag that contradicts an explicit other type is a configuration error.
    """
    flagged = [
        name
        for name, on in (("robust", robust_normalization), ("quantile", quantile_normalization))
        if on
    ]
    if len(flagged) > 1:
        raise ConfigError(
            "robust_normalization and quantile_normalization are both True; choose one"
        )
    if flagged and normalization_type not in ("z_score", flagged[0]):
        raise ConfigError(
            f"{flagged[0]}_normalization=True contradicts normalization_type={normalization_type!r}"
        )
    return flagged[0] if flagged else normalization_type


def check_base_options(values: dict[str, Any]) -> dict[str, Any]:
    """Checks that span several options; returns the values with the seed flags resolved into
    ``normalization_type``."""
    values = dict(values)
    values["normalization_type"] = resolve_normalization_type(
        values["normalization_type"],
        values["robust_normalization"],
        values["quantile_normalization"],
    )
    if values["batch_aware_normalization"] and values["batch_key"] is None:
        raise ConfigError("batch_aware_normalization=True needs batch_key (an obs column)")
    if values["biological_normalization"] and values["cell_type_key"] is None:
        raise ConfigError("biological_normalization=True needs cell_type_key (an obs column)")
    if values["val_fraction"] + values["test_fraction"] >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be in [0, 1), got "
            f"{values['val_fraction']} + {values['test_fraction']}"
        )
    values["obs_keys"] = list(values["obs_keys"])
    return values
