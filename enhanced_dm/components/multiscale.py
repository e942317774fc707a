"""Multi-scale context: a cell seen at the molecular (genes), pathway and cellular (programmes)
scales, each a standardized feature matrix of its own."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from enhanced_dm.components.base import Component, Slot
from enhanced_dm.options import Option, at_least, in_interval
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.multiscale import CellularScale, MolecularScale, PathwayScale

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.build import PipelineSettings

__all__ = ["SCALES", "MultiScaleComponent"]

SCALES = ("molecular", "pathway", "cellular")
"""The scales in their documented order; ``num_scales`` keeps the first ones."""


class MultiScaleComponent(Component):
    """``x_molecular_nd``, ``x_pathway_nd`` and ``x_cellular_nd`` (the first ``num_scales``).

    * molecular: the ``molecular_scale_dim`` most highly variable genes of the log-normalized
      expression (scanpy's seurat flavour on the train split), z-scored
      (:class:`~enhanced_dm.transforms.multiscale.MolecularScale`);
    * pathway: the first ``pathway_scale_dim`` columns of ``pathway_scores_np`` (it needs a
      pathway component before it, as in :class:`~enhanced_dm.datamodules.multiscale.
      MultiScaleDataModule`);
    * cellular: ``cellular_scale_dim`` principal components of the log-normalized expression
      over the ``cellular_hvg`` most variable genes, each scaled to unit train variance.

    ``num_hierarchy_levels`` is read by the DataModule (gene -> pathway -> compartment
    memberships); the component only declares it.
    """

    name = "multiscale"
    options = (
        Option(
            "molecular_scale_dim",
            128,
            int,
            "Highly variable genes of x_molecular_nd.",
            *at_least(1),
        ),
        Option("pathway_scale_dim", 256, int, "Pathway scores in x_pathway_nd.", *at_least(1)),
        Option(
            "cellular_scale_dim", 512, int, "Principal components in x_cellular_nd.", *at_least(1)
        ),
        Option(
            "cellular_hvg",
            2000,
            int,
            "Highly variable genes the cellular components are computed over.",
            *at_least(1),
        ),
        Option(
            "num_hierarchy_levels",
            3,
            int,
            "Membership levels exposed: 1 gene, 2 + pathway, 3 + compartment.",
            *in_interval(1, 3),
        ),
        Option(
            "num_scales",
            3,
            int,
            "Scales in the batch, in the order molecular, pathway, cellular.",
            *in_interval(1, 3),
        ),
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.scales = SCALES[: self.num_scales]
        self._transforms: list[tuple[str, Transform, Slot]] | None = None

    def configure(self, settings: PipelineSettings) -> None:
        if not (settings.per_cell_normalization and settings.log1p):
            warnings.warn(
                "the multi-scale component selects highly variable genes as scanpy's seurat "
                "flavour does, on log-normalized data; with per_cell_normalization or log1p off "
                "it reads the values as they are",
                stacklevel=2,
            )

    def setup(self, store: CellStore) -> None:
        molecular = MolecularScale(store.n_genes, self.molecular_scale_dim, self.cellular_hvg)
        if molecular.genes_m.numel() < self.molecular_scale_dim:
            warnings.warn(
                f"molecular_scale_dim={self.molecular_scale_dim} is more than the data's "
                f"{store.n_genes} genes; x_molecular_nd has {store.n_genes} columns",
                stacklevel=2,
            )
        steps: list[tuple[str, Transform, Slot]] = [
            ("molecular_scale", molecular, "after_gene_wise")
        ]
        if "pathway" in self.scales:
            steps.append(("pathway_scale", PathwayScale(self.pathway_scale_dim), "after_gene_wise"))
        if "cellular" in self.scales:
            cellular = CellularScale(self.cellular_scale_dim, molecular)
            if cellular.width < self.cellular_scale_dim:
                warnings.warn(
                    f"cellular_scale_dim={self.cellular_scale_dim} is more than the "
                    f"{cellular.genes_c.numel()} genes it is computed over (cellular_hvg, the "
                    f"data's genes); x_cellular_nd has {cellular.width} columns",
                    stacklevel=2,
                )
            steps.append(("cellular_scale", cellular, "after_gene_wise"))
        self._transforms = steps

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("MultiScaleComponent: call setup() before transforms()")
        return self._transforms

    def context_streams(self) -> dict[str, int]:
        widths = {
            "molecular": self.molecular_scale_dim,
            "pathway": self.pathway_scale_dim,
            "cellular": self.cellular_scale_dim,
        }
        return {f"x_{scale}_nd": widths[scale] for scale in self.scales}

    def output_steps(self) -> dict[str, str]:
        return {f"x_{scale}_nd": f"{scale}_scale" for scale in self.scales}

    def config(self) -> dict[str, Any]:
        return self.option_values()

    def report(self) -> dict[str, Any]:
        molecular: MolecularScale = self.step("molecular_scale")
        report: dict[str, Any] = {"scales": list(self.scales)}
        if molecular.fitted:
            genes = molecular.genes_m.cpu()
            report["molecular"] = {
                "genes": len(genes),
                "dispersions_norm": molecular.dispersions_norm_g.cpu()[genes].tolist(),
            }
        if "cellular" in self.scales:
            cellular: CellularScale = self.step("cellular_scale")
            report["cellular"] = {
                "components": cellular.width,
                "genes": int(cellular.genes_c.numel()),
            }
            if cellular.fitted:
                ratios = cellular.explained_variance_ratio()
                report["cellular"].update(
                    variance_explained=ratios, total_variance_explained=float(sum(ratios))
                )
        return report
