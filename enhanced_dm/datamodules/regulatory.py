"""RegulatoryDataModule: the base plus a TF -> target network (TF activity, gene types)."""

from __future__ import annotations

from typing import ClassVar

import torch

from enhanced_dm.components.base import Component
from enhanced_dm.components.regulatory import RegulatoryComponent
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = ["RegulatoryDataModule"]


class RegulatoryDataModule(BaseEnhancedDataModule):
    """Base DataModule plus a :class:`~enhanced_dm.components.regulatory.RegulatoryComponent`.

    Batches carry, besides the base keys, ``tf_activity_nr`` (decoupler's ULM t-values, or its
    weighted mean, of each kept regulator on the log-normalized values) and, when a step reads
    them, ``x_log_ng``. With ``tf_normalization`` / ``target_normalization`` TF genes and target
    genes get their own gene-wise normalization. Without a file the bundled PROGENy network is
    used (``enhanced_dm/resources/MANIFEST.md``). Constants (after ``setup``, saved in the
    state): ``regulator_names``, ``adjacency_rg``, ``interaction_mask_rg``,
    ``regulator_gene_index_r``, ``gene_type_g``. ``get_regulatory_stats()`` reports edges and
    regulators read / kept / dropped (why), targets per regulator and the activities' running
    summary.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (RegulatoryComponent,)

    @property
    def regulatory(self) -> RegulatoryComponent:
        return self.component(RegulatoryComponent)

    @property
    def regulator_names(self) -> list[str]:
        """Kept regulators, in the column order of ``tf_activity_nr``."""
        return list(self.regulatory.require_network().regulator_names)

    @property
    def adjacency_rg(self) -> torch.Tensor:
        """Regulators x genes, signed weights (sparse COO float32)."""
        return self.regulatory.require_network().adjacency()

    @property
    def interaction_mask_rg(self) -> torch.Tensor:
        """Dense bool regulators x genes, True on an edge."""
        return self.regulatory.require_network().mask()

    @property
    def regulator_gene_index_r(self) -> torch.Tensor:
        """Each regulator's own gene in the data (-1 when it is not a data gene)."""
        return self.regulatory.require_network().regulator_gene_index_r

    @property
    def gene_type_g(self) -> torch.Tensor:
        """Per gene: 0 neither, 1 target, 2 TF, 3 both (int8)."""
        return self.regulatory.require_network().gene_type_g
