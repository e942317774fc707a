"""Gene-wise normalizations selectable by name (``normalization_type=...``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enhanced_dm.errors import ConfigError
from enhanced_dm.transforms.base import Transform
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


GENE_NORMALIZATIONS: dict[str, GeneNormalizationSpec] = {
    "z_score": GeneNormalizationSpec(_z_score, option_names=("max_value",)),
}


def build_gene_normalization(
    name: str, n_genes: int, n_groups: int, group_key: str | None, options: dict[str, Any]
) -> Transform:
    """Build the gene-wise transform registered under ``name``."""
    if name not in GENE_NORMALIZATIONS:
        known = sorted([*GENE_NORMALIZATIONS, "none"])
        raise ConfigError(f"unknown normalization_type {name!r}; expected one of {known}")
    return GENE_NORMALIZATIONS[name].factory(n_genes, n_groups, group_key, options)
