"""Gene-wise normalizations selectable by name (``normalization_type=...``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enhanced_dm.errors import ConfigError
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.pearson import PearsonResiduals
from enhanced_dm.transforms.quantile import QuantileNormalize
from enhanced_dm.transforms.robust import RobustScale
from enhanced_dm.transforms.z_score import ZScore

__all__ = ["GENE_NORMALIZATIONS", "GeneNormalizationSpec", "build_gene_normalization"]


@dataclass(frozen=True)
class GeneNormalizationSpec:
    """What the DataModule needs to know to place a gene-wise normalization.

    ``factory(n_genes, n_groups, group_key, options)`` builds the transform; ``needs_raw_counts``
    means it must see raw counts (no total-count/log step before it).
    """

    factory: Callable[[int, int, str | None, dict[str, Any]], Transform]
    needs_raw_counts: bool = False
    option_names: tuple[str, ...] = field(default_factory=tuple)


def _z_score(
    n_genes: int, n_groups: int, group_key: str | None, options: dict[str, Any]
) -> Transform:
    return ZScore(n_genes, n_groups, group_key, max_value=options.get("max_value"))


def _subsample_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options of the seeded subsample behind the rank statistics (only those given)."""
    return {name: options[name] for name in ("stats_max_cells", "seed") if name in options}


def _robust(
    n_genes: int, n_groups: int, group_key: str | None, options: dict[str, Any]
) -> Transform:
    return RobustScale(
        n_genes,
        n_groups,
        group_key,
        max_value=options.get("max_value"),
        **_subsample_options(options),
    )


def _quantile(
    n_genes: int, n_groups: int, group_key: str | None, options: dict[str, Any]
) -> Transform:
    return QuantileNormalize(
        n_genes,
        n_groups,
        group_key,
        n_quantiles=options.get("n_quantiles", 1000),
        output_distribution=options.get("output_distribution", "normal"),
        **_subsample_options(options),
    )


def _pearson(
    n_genes: int, n_groups: int, group_key: str | None, options: dict[str, Any]
) -> Transform:
    return PearsonResiduals(
        n_genes, n_groups, group_key, theta=options.get("theta", 100.0), clip=options.get("clip")
    )


GENE_NORMALIZATIONS: dict[str, GeneNormalizationSpec] = {
    "z_score": GeneNormalizationSpec(_z_score, option_names=("max_value",)),
    "robust": GeneNormalizationSpec(_robust, option_names=("max_value", "stats_max_cells", "seed")),
    "quantile": GeneNormalizationSpec(
        _quantile,
        option_names=("n_quantiles", "output_distribution", "stats_max_cells", "seed"),
    ),
    "pearson": GeneNormalizationSpec(
        _pearson, needs_raw_counts=True, option_names=("theta", "clip")
    ),
}


def build_gene_normalization(
    name: str, n_genes: int, n_groups: int, group_key: str | None, options: dict[str, Any]
) -> Transform:
    """Build the gene-wise transform registered under ``name``."""
    if name not in GENE_NORMALIZATIONS:
        known = sorted([*GENE_NORMALIZATIONS, "none"])
        raise ConfigError(f"unknown normalization_type {name!r}; expected one of {known}")
    return GENE_NORMALIZATIONS[name].factory(n_genes, n_groups, group_key, options)
