"""HierarchicalDataModule: the base plus pathway and compartment context (gene -> pathway -> compartment)."""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch

from enhanced_dm.components.base import Component
from enhanced_dm.components.compartments import CompartmentComponent, Denominator
from enhanced_dm.components.pathways import GeneSetComponent, PathwayComponent, PathwayScore
from enhanced_dm.data.store import DataInput
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = [
    "DEFAULT_COMPARTMENT_ANNOTATION_FILE",
    "DEFAULT_PATHWAY_ANNOTATION_FILE",
    "HierarchicalDataModule",
]

DEFAULT_PATHWAY_ANNOTATION_FILE = "go_bp_pbmc68k_subset.gmt"
"""Bundled: the 278 GO BP sets with at least 15 genes among pbmc68k's 765 (resources/MANIFEST.md)."""
DEFAULT_COMPARTMENT_ANNOTATION_FILE = "go_cc_compartments_human.gmt"
"""Bundled: 18 GO CC compartments, non-IEA evidence (resources/MANIFEST.md)."""


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

    def __init__(
        self,
        data: DataInput,
        *,
        num_pathways: int = 1000,
        num_compartments: int = 5,
        pathway_annotation_file: str | None = None,
        compartment_annotation_file: str | None = None,
        min_pathway_size: int = 15,
        max_pathway_size: int = 500,
        pathway_score: PathwayScore = "mean_z",
        gene_symbol_key: str | None = None,
        aucell_top_fraction: float = 0.05,
        compartment_fraction_denominator: Denominator = "data_genes",
        compartment_pseudocount: float = 1.0,
        compartment_non_iea_only: bool = False,
        components: Sequence[Component] = (),
        **base_options: Any,
    ) -> None:
        pathways = PathwayComponent(
            _fspath(pathway_annotation_file, DEFAULT_PATHWAY_ANNOTATION_FILE),
            num_pathways=num_pathways,
            min_pathway_size=min_pathway_size,
            max_pathway_size=max_pathway_size,
            pathway_score=pathway_score,
            gene_symbol_key=gene_symbol_key,
            aucell_top_fraction=aucell_top_fraction,
        )
        compartments = CompartmentComponent(
            _fspath(compartment_annotation_file, DEFAULT_COMPARTMENT_ANNOTATION_FILE),
            num_compartments=num_compartments,
            gene_symbol_key=gene_symbol_key,
            fraction_denominator=compartment_fraction_denominator,
            pseudocount=compartment_pseudocount,
            non_iea_only=compartment_non_iea_only,
        )
        super().__init__(data, components=[pathways, compartments, *components], **base_options)
        self.pathways = pathways
        self.compartments = compartments

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
    def _component_report(self, component: GeneSetComponent) -> dict[str, Any]:
        """The component's selection statistics plus the monitors' summary of its outputs."""
        outputs = self.get_normalization_stats()
        report = self.component_stats(component.name)
        for label, step in component.output_steps().items():
            report[label] = outputs.get(step, {})
        return report

    def get_compartment_stats(self) -> dict[str, Any]:
        """Compartments read / kept / dropped (why), genes before / after matching, coverage,
        unmatched symbols, and the running summary (cells seen, mean, std, ...) of the fractions
        and of the centred log-ratios before and after standardization."""
        return self._component_report(self.compartments)

    def get_pathway_stats(self) -> dict[str, Any]:
        """Pathway statistics (as :meth:`get_compartment_stats`, for pathway scores) plus the
        compartment statistics under ``"compartments"``.

        Running summaries cover the batches normalized since the last
        :meth:`reset_normalization_stats`; they are empty before the first batch.
        """
        return {
            **self._component_report(self.pathways),
            "compartments": self.get_compartment_stats(),
        }


def _fspath(path: str | os.PathLike[str] | None, default: str) -> str:
    return default if path is None else os.fspath(path)


def _merge_base_signature(cls: type, base: type) -> None:
    """Give ``cls.__init__`` the explicit signature ``(data, *, own options, base options)``.

    ``cls.__init__`` forwards ``**base_options`` to ``base``; exposing the base keywords in its
    signature (and resolved type hints) lets Hydra schemas and IDEs see every option without a
    copied parameter list that could drift from the base.
    """
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]
    own = inspect.signature(init).parameters
    base_parameters = inspect.signature(base.__init__).parameters  # type: ignore[misc]
    parameters = [p for p in own.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    parameters += [p for name, p in base_parameters.items() if name not in own]
    init.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    init.__annotations__ = {
        **typing.get_type_hints(base.__init__),  # type: ignore[misc]
        **typing.get_type_hints(init),
    }


_merge_base_signature(HierarchicalDataModule, BaseEnhancedDataModule)
