"""TemporalDataModule: the base plus a time course (time steps, time-step normalization,
kinetics features, sequences of cells)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from enhanced_dm.components.base import Component
from enhanced_dm.components.temporal import TemporalComponent
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = ["TemporalDataModule"]


class TemporalDataModule(BaseEnhancedDataModule):
    """Base DataModule plus a :class:`~enhanced_dm.components.temporal.TemporalComponent`.

    Batches carry, besides the base keys, ``time_n``, ``time_step_n``, ``time_embedding_nd``,
    ``fast_response_ng``, ``slow_response_ng`` and ``previous_state_ng``; ``x_ng`` is z-scored
    per time step (``time_normalization="per_step"``) or against the first step
    (``"baseline"``). With ``sequence_mode=True`` an item is a time-ordered sequence of cells
    and every per-cell key gains an ``s`` axis (``x_nsg``, ``time_step_ns``, ...), with
    ``mask_ns`` and ``temporal_mask_nss``. A sequence is a sample of different cells across
    time (sequencing destroys the cell), not one cell followed in time.
    ``get_temporal_stats()`` reports cells per step and split, the per-step mean / std of the
    normalized values, steps that fell back to global statistics and the sequences served.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (TemporalComponent,)

    @property
    def temporal(self) -> TemporalComponent:
        return self.component(TemporalComponent)

    @property
    def time_step_edges(self) -> np.ndarray:
        """Interior edges between time steps (a time equal to an edge is in the later step)."""
        bins = self.temporal.bins
        if bins is None:
            raise RuntimeError("call setup() first: the time steps are set up there")
        return bins.edges.copy()

    @property
    def n_time_steps(self) -> int:
        return self.temporal.n_steps
