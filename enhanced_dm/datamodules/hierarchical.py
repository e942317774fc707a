"""HierarchicalDataModule: the base plus pathway and compartment context (gene -> pathway -> compartment)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from enhanced_dm.components.base import Component
from enhanced_dm.components.compartments import (
    DEFAULT_COMPARTMENT_ANNOTATION_FILE,
    CompartmentComponent,
)
from enhanced_dm.components.pathways import DEFAULT_PATHWAY_ANNOTATION_FILE, PathwayComponent
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = [
    "DEFAULT_COMPARTMENT_ANNOTATION_FILE",
    "DEFAULT_PATHWAY_ANNOTATION_FILE",
    "HierarchicalDataModule",
]


class HierarchicalDataModule(BaseEnhancedDataModule):
    """Base DataModule plus a :class:`PathwayComponent` and a :class:`CompartmentComponent`.

    Batches carry, besides the base keys, ``pathway_scores_np`` (mean normalized expression per
    pathway, standardized with train statistics; or AUCell scores with ``pathway_score="aucell"``), ``compartment_fraction_nk`` (fraction of each
    cell's counts per compartment) and ``compartment_x_nk`` (their centred log-ratio, z-scored);
    see the components for the exact formulas and selection rules. Annotation files may be paths or
    the names of bundled files; ``None`` selects the bundled defaults
    (``compartment_non_iea_only=True`` keeps a table's non-IEA rows). Every other keyword is a
    :class:`BaseEnhancedDataModule` option; extra ``components`` are appended after these two.

    Per-dataset constants (after ``setup``, saved in ``state_dict``): ``pathway_names``,
    ``compartment_names`` (column order of the tensors), ``pathway_membership_pg``,
    ``compartment_membership_kg`` (sparse COO 0/1), ``pathway_overlap_pp`` (Jaccard),
    ``pathway_mask_pg`` (dense bool, an attention mask) and ``pathway_gene_index_pm`` (each
    pathway's genes, padded with -1).
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (
        PathwayComponent,
        CompartmentComponent,
    )

    @property
    def pathways(self) -> PathwayComponent:
        return self.component(PathwayComponent)

    @property
    def compartments(self) -> CompartmentComponent:
        return self.component(CompartmentComponent)

    # ---------------------------------------------------------------------------- constants
    @property
    def pathway_names(self) -> list[str]:
        """Kept pathways, in the column order of ``pathway_scores_np``."""
        return self.pathways.require_selection().names

    @property
    def compartment_names(self) -> list[str]:
        """Kept compartments, in the column order of ``compartment_*_nk``."""
        return self.compartments.require_selection().names

    @property
    def pathway_membership_pg(self) -> torch.Tensor:
        """Pathways x genes, 1.0 where the gene is in the pathway (sparse COO float32)."""
        return self.pathways.require_selection().membership()

    @property
    def compartment_membership_kg(self) -> torch.Tensor:
        """Compartments x genes, 1.0 where the gene is in the compartment (sparse COO float32)."""
        return self.compartments.require_selection().membership()

    @property
    def pathway_overlap_pp(self) -> torch.Tensor:
        """Jaccard overlap of the kept pathways on the data genes (dense float32, diagonal 1)."""
        return self.pathways.require_selection().jaccard()

    @property
    def pathway_mask_pg(self) -> torch.Tensor:
        """Dense bool pathways x genes, True where the gene is in the pathway (attention mask;
        ``nn.MultiheadAttention`` blocks where True, so pass ``~pathway_mask_pg`` there)."""
        return self.pathways.require_selection().mask()

    @property
    def pathway_gene_index_pm(self) -> torch.Tensor:
        """Each pathway's gene indices (ascending), padded with -1 to the largest pathway."""
        return self.pathways.require_selection().gene_index()

    # --------------------------------------------------------------------------- statistics
    def get_pathway_stats(self) -> dict[str, Any]:
        """Pathways read / kept / dropped (why), genes before / after matching, coverage,
        unmatched symbols, the running summary (cells seen, mean, std, ...) of the scores, and
        the compartment statistics (:meth:`get_compartment_stats`) under ``"compartments"``.

        Running summaries cover the batches normalized since the last
        :meth:`reset_normalization_stats`; they are empty before the first batch.
        """
        return {**self.component_stats("pathway"), "compartments": self.get_compartment_stats()}
