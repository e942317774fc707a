"""MultiScaleDataModule: the hierarchical DataModule plus molecular / pathway / cellular scales."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch

from enhanced_dm.components.base import Component
from enhanced_dm.components.compartments import CompartmentComponent
from enhanced_dm.components.multiscale import MultiScaleComponent
from enhanced_dm.components.pathways import PathwayComponent
from enhanced_dm.datamodules.hierarchical import HierarchicalDataModule
from enhanced_dm.transforms.multiscale import MolecularScale

__all__ = ["HierarchyLevel", "MultiScaleDataModule"]


class HierarchyLevel(NamedTuple):
    """One level of the gene -> pathway -> compartment hierarchy: its ``name``, the ``names``
    of its units, and ``membership`` (units x units of the level below; None for genes)."""

    name: str
    names: list[str]
    membership: torch.Tensor | None


class MultiScaleDataModule(HierarchicalDataModule):
    """:class:`~enhanced_dm.datamodules.hierarchical.HierarchicalDataModule` plus a
    :class:`~enhanced_dm.components.multiscale.MultiScaleComponent`.

    Batches carry, besides the hierarchical keys, the first ``num_scales`` of ``x_molecular_nd``
    (the ``molecular_scale_dim`` most highly variable genes, scanpy's seurat flavour on the train
    split, z-scored; names in :attr:`molecular_gene_names`), ``x_pathway_nd`` (the first
    ``pathway_scale_dim`` pathway scores) and ``x_cellular_nd`` (``cellular_scale_dim``
    principal components of ``x_log_ng`` over the ``cellular_hvg`` most variable genes, unit
    train variance). The reference's "cross-scale interactions" are the memberships that link
    the scales: :attr:`hierarchy_levels` (``num_hierarchy_levels`` of gene -> pathway ->
    compartment). ``get_multiscale_stats()`` reports the genes, the explained variance and
    each scale's running summary.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (
        PathwayComponent,
        CompartmentComponent,
        MultiScaleComponent,
    )

    @property
    def multiscale(self) -> MultiScaleComponent:
        return self.component(MultiScaleComponent)

    @property
    def molecular_gene_names(self) -> list[str]:
        """The genes of ``x_molecular_nd``, in its column order (after fitting)."""
        molecular: MolecularScale = self.multiscale.step("molecular_scale")
        if not molecular.fitted:
            raise RuntimeError("the molecular genes are chosen when fitting: call setup() first")
        names = self.var_names
        return [names[int(gene)] for gene in molecular.genes_m.cpu()]

    @property
    def hierarchy_levels(self) -> list[HierarchyLevel]:
        """The first ``num_hierarchy_levels`` of: genes; pathways (membership pathways x genes,
        sparse 0/1); compartments (compartments x pathways: the share of each pathway's genes
        annotated to the compartment, dense float32)."""
        levels = [HierarchyLevel("gene", list(self.var_names), None)]
        pathway_pg = self.pathway_membership_pg
        levels.append(HierarchyLevel("pathway", self.pathway_names, pathway_pg))
        sizes_p = pathway_pg.to_dense().sum(1).clamp_min(1.0)
        shared_kp = (self.compartment_membership_kg @ pathway_pg.to_dense().T) / sizes_p
        levels.append(HierarchyLevel("compartment", self.compartment_names, shared_kp))
        return levels[: self.multiscale.num_hierarchy_levels]
