"""StochasticDataModule: the base plus count noise (gene variability, augmentation, noise inputs),
normalized with analytic Pearson residuals by default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pandas as pd

from enhanced_dm.components.base import Component
from enhanced_dm.components.stochastic import StochasticComponent
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = ["StochasticDataModule"]


class StochasticDataModule(BaseEnhancedDataModule):
    """Base DataModule plus a :class:`~enhanced_dm.components.stochastic.StochasticComponent`.

    Noise-aware normalization by default: analytic Pearson residuals of the raw counts
    (``normalization_type="pearson"``, ``per_cell_normalization=False``; any other by option).
    In training the counts are augmented on their stored values (thinning, size, dropout) before
    normalization; every batch carries ``noise_nd`` and ``noise_strength_n``.
    ``dm.gene_variability`` holds each gene's mean, variance, Fano factor, CV² and
    overdispersion over the train cells; ``get_stochastic_stats()`` summarizes them and the
    realised augmentation since the last reset.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (StochasticComponent,)
    option_defaults: ClassVar[Mapping[str, Any]] = {
        "normalization_type": "pearson",
        "per_cell_normalization": False,
    }

    @property
    def stochastic(self) -> StochasticComponent:
        return self.component(StochasticComponent)

    @property
    def gene_variability(self) -> pd.DataFrame:
        """Genes x (mean, variance, fano, cv2, overdispersion) of the train cells' raw counts."""
        return self.stochastic.gene_variability()
