"""Stochastic context: gene variability from raw counts, count-noise augmentation in training,
and noise inputs for generative models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from enhanced_dm.components.base import Component, Slot
from enhanced_dm.errors import ConfigError
from enhanced_dm.options import BATCH_KEY, Option, at_least, in_interval
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.noise import (
    NOISE_TYPES,
    VARIABILITY_COLUMNS,
    CountNoise,
    GeneVariability,
    NoiseInputs,
)

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore

__all__ = ["StochasticComponent", "chosen_noise_types"]


def _strength_range_ok(value: Sequence[float]) -> bool:
    return len(value) == 2 and 0.0 <= float(value[0]) <= float(value[1]) <= 1.0


def chosen_noise_types(num_noise_types: int | None, noise_types: Sequence[str] | None) -> list[str]:
    """The active noise types: the first ``num_noise_types`` of thinning, size, dropout, or the
    ones ``noise_types`` names (both given and disagreeing: a ConfigError)."""
    if noise_types is not None:
        unknown = sorted(set(noise_types) - set(NOISE_TYPES))
        if unknown:
            raise ConfigError(f"noise_types {unknown} are unknown; expected some of {NOISE_TYPES}")
        chosen = [name for name in NOISE_TYPES if name in noise_types]
        if num_noise_types is not None and num_noise_types != len(chosen):
            raise ConfigError(
                f"num_noise_types={num_noise_types} and noise_types={list(noise_types)} "
                f"({len(chosen)} types) disagree; give one of them"
            )
        return chosen
    return list(NOISE_TYPES[: 3 if num_noise_types is None else num_noise_types])


def _quantiles(values: np.ndarray) -> dict[str, float]:
    """The 5, 25, 50, 75 and 95 % quantiles (empty for no values)."""
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    if len(values) == 0:
        return {}
    return dict(zip(map(str, levels), np.quantile(values, levels).tolist(), strict=True))


class StochasticComponent(Component):
    """Gene variability (``dm.gene_variability``), count-noise augmentation in training, and
    ``noise_nd`` inputs.

    * :class:`~enhanced_dm.transforms.noise.GeneVariability`: per gene mean, variance, Fano,
      CV² and overdispersion of the raw counts of the train cells (exact float64 sums).
    * :class:`~enhanced_dm.transforms.noise.CountNoise` (``counts`` slot, train stage only):
      the active ``noise_types`` (or the first ``num_noise_types`` of thinning, size, dropout),
      each cell's strength drawn from ``noise_strength_range``.
    * :class:`~enhanced_dm.transforms.noise.NoiseInputs`: ``noise_nd`` =
      ``intrinsic_noise_dim`` per-cell N(0, 1) values + ``extrinsic_noise_dim`` values shared
      by the cells of one ``batch_key`` group (per cell without a batch key);
      ``noise_dim`` must be their sum.
    """

    name = "stochastic"
    options = (
        Option("noise_dim", 64, int, "Width of noise_nd (intrinsic + extrinsic).", *at_least(0)),
        Option(
            "num_noise_types",
            None,
            int | None,
            "The first k of thinning, size, dropout (None: noise_types, else all three).",
            *in_interval(0, len(NOISE_TYPES)),
        ),
        Option(
            "noise_types",
            None,
            tuple[str, ...] | None,
            "Active noise types by name (thinning, size, dropout).",
        ),
        Option("intrinsic_noise_dim", 32, int, "Per-cell N(0, 1) inputs.", *at_least(0)),
        Option("extrinsic_noise_dim", 32, int, "Per-group N(0, 1) inputs.", *at_least(0)),
        Option(
            "noise_strength_range",
            (0.1, 0.9),
            tuple[float, float],
            "Each cell's strength s ~ U(low, high).",
            _strength_range_ok,
            "two numbers 0 <= low <= high <= 1",
        ),
        BATCH_KEY,  # the DataModule's own
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        if self.noise_dim != self.intrinsic_noise_dim + self.extrinsic_noise_dim:
            raise ConfigError(
                f"noise_dim={self.noise_dim} must equal intrinsic_noise_dim="
                f"{self.intrinsic_noise_dim} + extrinsic_noise_dim={self.extrinsic_noise_dim}"
            )
        self.types = chosen_noise_types(self.num_noise_types, self.noise_types)
        low, high = self.option_values()["noise_strength_range"]
        self.strength_range: tuple[float, float] = (float(low), float(high))
        self._transforms: list[tuple[str, Transform, Slot]] | None = None
        self.var_names: list[str] = []

    def obs_columns(self) -> dict[str, str]:
        return {} if self.batch_key is None else {"batch": self.batch_key}

    def setup(self, store: CellStore) -> None:
        if self.types and not store.is_counts:
            raise ConfigError(
                f"count noise ({self.types}) resamples integer counts, but {store.counts_verdict}; "
                "use raw counts, or num_noise_types=0"
            )
        self.var_names = list(store.var_names)
        group_key = None if self.batch_key is None else "batch_n"
        self._transforms = [
            ("gene_variability", GeneVariability(store.n_genes), "counts"),
            ("count_noise", CountNoise(self.types, self.strength_range), "counts"),
            (
                "noise_inputs",
                NoiseInputs(self.intrinsic_noise_dim, self.extrinsic_noise_dim, group_key),
                "after_gene_wise",
            ),
        ]

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("StochasticComponent: call setup() before transforms()")
        return self._transforms

    def variability(self) -> GeneVariability:
        step: GeneVariability = self.step("gene_variability")
        return step

    def gene_variability(self) -> pd.DataFrame:
        """Genes x (mean, variance, fano, cv2, overdispersion) of the train cells' raw counts."""
        step = self.variability()
        if not step.fitted:
            raise RuntimeError("gene variability is fitted in setup('fit')")
        return pd.DataFrame(
            {column: getattr(step, f"{column}_g").cpu().numpy() for column in VARIABILITY_COLUMNS},
            index=pd.Index(self.var_names, name="gene"),
        )

    def output_steps(self) -> dict[str, str]:
        return {
            "library_size_factor": "count_noise",
            "keep_fraction": "count_noise/noise_keep_fraction_n",
            "strength": "count_noise/noise_strength_n",
        }

    def config(self) -> dict[str, Any]:
        return {"types": self.types, **self.option_values()}

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"noise_types": self.types, "strength_range": self.strength_range}
        step = self.variability()
        if step.fitted:
            table = self.gene_variability()
            expressed = table[table["mean"] > 0]
            report.update(
                genes_expressed=len(expressed),
                overdispersed_fraction=float((expressed["variance"] > expressed["mean"]).mean())
                if len(expressed)
                else 0.0,
                fano_quantiles=_quantiles(expressed["fano"].to_numpy()),
                cv2_quantiles=_quantiles(expressed["cv2"].to_numpy()),
            )
        return report
