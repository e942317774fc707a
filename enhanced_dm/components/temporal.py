"""Temporal context: time steps of a time course (or pseudotime), time-step normalization,
kinetics features, a time embedding and, in sequence mode, items that are time-ordered
sequences of cells with a temporal attention mask."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from enhanced_dm.components.base import Component, NotSetUpError, Slot
from enhanced_dm.data.time_sequences import SamplingStrategy, TimeSequenceSampler
from enhanced_dm.errors import ConfigError
from enhanced_dm.options import Option, at_least
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.temporal import (
    TemporalKinetics,
    TimeNormalization,
    TimeSteps,
    TimeStepZScore,
)

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.build import PipelineSettings

__all__ = ["TemporalComponent", "TimeBins", "time_bins"]

TIME_OBS = "time_raw"
"""Batch name of the time obs column (``time_raw_n``: a float, or an ordered category's code)."""
TRAJECTORY_OBS = "trajectory"


@dataclass(frozen=True)
class TimeBins:
    """Interior step edges (a time equal to an edge goes to the later step), and the exact
    time value of each step when there are no more distinct values than steps (else None)."""

    edges: np.ndarray
    values: np.ndarray | None

    @property
    def n_steps(self) -> int:
        return len(self.edges) + 1

    def steps(self, time: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, time, side="right").astype(np.int64)


def time_bins(time_all: np.ndarray, time_train: np.ndarray, time_steps: int) -> TimeBins:
    """One step per distinct time when the data hold at most ``time_steps`` of them (edges
    halfway between consecutive values); else the train cells' quantiles at ``k / time_steps``
    (numpy's linear interpolation) as edges, repeated edges merged (fewer steps, a warning)."""
    distinct = np.unique(time_all)
    if len(distinct) <= time_steps:
        return TimeBins((distinct[1:] + distinct[:-1]) / 2, distinct)
    quantiles = np.quantile(time_train, np.arange(1, time_steps) / time_steps)
    edges = np.unique(quantiles)
    if len(edges) < len(quantiles):
        warnings.warn(
            f"time bins: the train cells' times have repeated quantiles (many equal times); "
            f"{len(edges) + 1} steps instead of time_steps={time_steps}",
            stacklevel=3,
        )
    return TimeBins(edges, None)


class TemporalComponent(Component):
    """Time steps, time-step normalization, kinetics features and (``sequence_mode``) batches of
    time-ordered sequences of cells.

    ``time_key``: a numeric obs column, or an ordered categorical (its order is time). Steps:
    one per distinct time when there are at most ``time_steps``, else quantile bins of the train
    cells' times (:func:`time_bins`). Batch keys: ``time_n``, ``time_step_n``,
    ``time_embedding_nd`` (sinusoidal, ``time_embedding_dim`` wide), ``fast_response_ng``,
    ``slow_response_ng``, ``previous_state_ng`` (:class:`~enhanced_dm.transforms.temporal.
    TemporalKinetics`). ``time_normalization`` (``per_step`` / ``baseline``) owns the gene-wise
    slot (:class:`~enhanced_dm.transforms.temporal.TimeStepZScore`); ``"none"`` leaves the
    DataModule's. Sequence mode: items are sequences of up to ``max_sequence_length`` cells
    (:class:`~enhanced_dm.data.time_sequences.TimeSequenceSampler`), keys ``*_ns`` / ``*_nsg``,
    ``mask_ns`` and ``temporal_mask_nss`` (True where position j may be attended from i: j is
    real and not at a later step than i).
    """

    name = "temporal"
    options = (
        Option("time_key", "time", str, "obs column of the time (numeric or ordered categorical)."),
        Option("time_steps", 5, int, "Steps (bins) of the time course.", *at_least(1)),
        Option(
            "time_normalization",
            "per_step",
            TimeNormalization,
            "per_step | baseline | none: z-score genes by the cell's step, by the first step.",
        ),
        Option(
            "min_cells_per_step",
            10,
            int,
            "Fewer train cells: the step uses the global statistics.",
            *at_least(1),
        ),
        Option("sequence_mode", False, bool, "Items are time-ordered sequences of cells."),
        Option("max_sequence_length", 100, int, "Cells per sequence (at most).", *at_least(1)),
        Option(
            "temporal_sampling_strategy",
            "uniform",
            SamplingStrategy,
            "uniform | proportional | window: how a sequence takes cells from the steps.",
        ),
        Option("trajectory_key", None, str | None, "obs column a sequence never mixes."),
        Option(
            "time_embedding_dim",
            16,
            int,
            "Width of time_embedding_nd (even; 0: none).",
            lambda value: value >= 0 and value % 2 == 0,
            "an even number >= 0",
        ),
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.settings: PipelineSettings | None = None
        self.split: dict[str, np.ndarray] = {}
        self.bins: TimeBins | None = None
        self.time_c: np.ndarray | None = None
        self.step_c: np.ndarray | None = None
        self.group_c: np.ndarray | None = None
        self._transforms: list[tuple[str, Transform, Slot]] | None = None
        self.served = {"batches": 0, "sequences": 0, "positions": 0, "cells": 0}

    def obs_columns(self) -> dict[str, str]:
        columns = {TIME_OBS: self.time_key}
        if self.trajectory_key is not None:
            columns[TRAJECTORY_OBS] = self.trajectory_key
        return columns

    def configure(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def use_split(self, split: Mapping[str, np.ndarray]) -> None:
        self.split = {name: np.asarray(indices) for name, indices in split.items()}

    # ----------------------------------------------------------------------------- setup
    def _times(self, store: CellStore) -> np.ndarray:
        """Every cell's time (float64; an ordered category's code), checked."""
        values = store.obs_values[TIME_OBS]
        if TIME_OBS in store.categories:
            categories = store.categories[TIME_OBS]
            for source in store.sources:
                dtype = source.obs[self.time_key].dtype
                ordered = isinstance(dtype, pd.CategoricalDtype) and dtype.ordered
                if not ordered or [str(c) for c in dtype.categories] != categories:
                    raise ConfigError(
                        f"{source.name}: obs column time_key={self.time_key!r} holds text "
                        f"categories without an order (e.g. {categories[:5]}); expected numbers "
                        "or an ordered categorical (pandas Categorical(..., ordered=True)) "
                        "with the same categories in every file"
                    )
            missing = values < 0
        else:
            missing = ~np.isfinite(values)
        if missing.any():
            raise ConfigError(
                f"obs column time_key={self.time_key!r}: {int(missing.sum())} of {len(values)} "
                f"cells have no time (NaN / missing), e.g. cells {np.flatnonzero(missing)[:5].tolist()}; "
                "drop them or fill them first"
            )
        return values.astype(np.float64)

    def setup(self, store: CellStore) -> None:
        if not self.split:
            raise RuntimeError("TemporalComponent: use_split() must come before setup()")
        self.time_c = self._times(store)
        if self.bins is None:
            self.bins = time_bins(self.time_c, self.time_c[self.split["train"]], self.time_steps)
        self.step_c = self.bins.steps(self.time_c)
        self.group_c = (
            np.zeros(store.n_obs, dtype=np.int64)
            if self.trajectory_key is None
            else np.unique(store.obs_values[TRAJECTORY_OBS], return_inverse=True)[1]
        )
        n_steps, n_genes = self.bins.n_steps, store.n_genes
        steps: list[tuple[str, Transform, Slot]] = [
            (
                "time_steps",
                TimeSteps(
                    torch.from_numpy(self.bins.edges), f"{TIME_OBS}_n", self.time_embedding_dim
                ),
                "counts",
            )
        ]
        if self.time_normalization != "none":
            assert self.settings is not None, "configure() comes before setup()"
            max_value = self.settings.normalization_options.get("max_value")
            steps.append(
                (
                    f"time_{self.time_normalization}",
                    TimeStepZScore(
                        n_genes,
                        n_steps,
                        self.time_normalization,
                        self.min_cells_per_step,
                        max_value,
                    ),
                    "gene_wise",
                )
            )
        kinetics = TemporalKinetics(n_steps, n_genes, self.min_cells_per_step)
        steps.append(("temporal_kinetics", kinetics, "after_gene_wise"))
        self._transforms = steps

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("TemporalComponent: call setup() before transforms()")
        return self._transforms

    # ------------------------------------------------------------------------- sequences
    def batch_sampler(
        self,
        indices: np.ndarray,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
    ) -> TimeSequenceSampler | None:
        if not self.sequence_mode:
            return None
        if self.step_c is None or self.time_c is None or self.group_c is None:
            raise NotSetUpError("TemporalComponent: the sequence sampler is built after setup()")
        weights = np.bincount(self.step_c[self.split["train"]], minlength=self.n_steps)
        return TimeSequenceSampler(
            indices,
            self.time_c,
            self.step_c,
            self.group_c,
            length=self.max_sequence_length,
            strategy=self.temporal_sampling_strategy,
            step_weights=weights,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    def sequence_outputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``temporal_mask_nss``: position j may be attended from position i when j is real and
        its step is not later than i's. Also counts what was served (``get_temporal_stats``)."""
        step_ns = batch["time_step_ns"]
        mask_ns = batch["mask_ns"]
        allowed = (step_ns[:, None, :] <= step_ns[:, :, None]) & mask_ns[:, None, :]
        real = int(mask_ns.sum())
        self.served["batches"] += 1
        self.served["sequences"] += int(mask_ns.any(1).sum())
        self.served["positions"] += int(mask_ns.numel())
        self.served["cells"] += real
        return {"temporal_mask_nss": allowed}

    # ------------------------------------------------------------------------ reporting
    @property
    def n_steps(self) -> int:
        if self.bins is None:
            raise RuntimeError("TemporalComponent: call setup() first")
        return self.bins.n_steps

    def output_steps(self) -> dict[str, str]:
        return {"kinetics": "temporal_kinetics"}

    def config(self) -> dict[str, Any]:
        edges = None if self.bins is None else self.bins.edges.tolist()
        return {**self.option_values(), "edges": edges}

    def report(self) -> dict[str, Any]:
        if self.bins is None or self.step_c is None:
            raise RuntimeError("TemporalComponent: call setup() first")
        cells = {
            split: np.bincount(self.step_c[indices], minlength=self.n_steps).tolist()
            for split, indices in self.split.items()
        }
        report: dict[str, Any] = {
            "steps": self.n_steps,
            "time_step_edges": self.bins.edges.tolist(),
            "time_step_values": None if self.bins.values is None else self.bins.values.tolist(),
            "cells_per_step": cells,
        }
        kinetics: TemporalKinetics = self.step("temporal_kinetics")
        if kinetics.fitted:
            report["normalized_per_step"] = {
                "mean": [None if np.isnan(v) else v for v in kinetics.normalized_mean_s.tolist()],
                "std": [None if np.isnan(v) else v for v in kinetics.normalized_std_s.tolist()],
            }
            report["steps_fell_back"] = kinetics.fallback_steps
        if self.sequence_mode:
            served: dict[str, float] = dict(self.served)
            served["mean_length"] = served["cells"] / max(served["sequences"], 1)
            served["padding_fraction"] = 1 - served["cells"] / max(served["positions"], 1)
            report["sequences_served"] = served
        return report

    def state_dict(self) -> dict[str, Any]:
        if self.bins is None:
            return {}
        values = None if self.bins.values is None else torch.from_numpy(self.bins.values)
        return {"edges": torch.from_numpy(self.bins.edges.copy()), "values": values}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use the checkpoint's time bins (before setup) or check they equal ours (after)."""
        if not state:
            return
        values = state.get("values")
        restored = TimeBins(
            np.asarray(state["edges"], dtype=np.float64),
            None if values is None else np.asarray(values, dtype=np.float64),
        )
        if self.bins is not None and not np.array_equal(restored.edges, self.bins.edges):
            raise ConfigError(
                "cannot restore TemporalComponent: the checkpoint's time bins differ from the "
                "ones this DataModule set up; load the state before setup()"
            )
        self.bins = restored
