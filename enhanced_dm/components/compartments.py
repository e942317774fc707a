"""Compartment context: the share of each cell's counts in its largest subcellular compartments."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, get_args

import torch

from enhanced_dm.annotations import read_gene_compartments
from enhanced_dm.components.pathways import (
    EMPTY,
    GENE_SYMBOL_KEY,
    GeneSetComponent,
    GeneSetSelection,
    GeneSetTransform,
    gene_matcher,
    rank_and_keep,
    resolve_annotation_path,
)
from enhanced_dm.errors import ConfigError
from enhanced_dm.options import Option, at_least, greater_than
from enhanced_dm.transforms import functional_context as F
from enhanced_dm.transforms.base import Batch, Transform
from enhanced_dm.transforms.z_score import ZScore

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.context import StepContext

__all__ = [
    "DEFAULT_COMPARTMENT_ANNOTATION_FILE",
    "CompartmentComponent",
    "GeneSetCLR",
    "GeneSetFraction",
]

Denominator = Literal["data_genes", "total_counts"]
DENOMINATORS: tuple[str, ...] = get_args(Denominator)
DEFAULT_COMPARTMENT_ANNOTATION_FILE = "go_cc_compartments_human.gmt"
"""Bundled: 18 GO CC compartments, non-IEA evidence (resources/MANIFEST.md)."""


class GeneSetFraction(GeneSetTransform):
    r"""Per cell, the fraction of its counts that fall in each set's genes.

    .. math:: f_{ck} = \frac{\sum_{g \in K_k} x_{cg}}{t_c}

    ``denominator="data_genes"``: :math:`t_c = \sum_g x_{cg}` over the data's genes (numpy:
    ``X @ M.T / X.sum(1)``); ``"total_counts"``: :math:`t_c` = ``total_counts_n``, the library size
    over ALL genes of the file. A gene in several sets counts in each, so the fractions of
    overlapping sets need not sum to 1. A cell with :math:`t_c = 0` gets zeros, never NaN.
    """

    def __init__(
        self,
        selection: GeneSetSelection,
        denominator: Denominator = "data_genes",
        key: str = "counts_ng",
        output_key: str = "compartment_fraction_nk",
    ) -> None:
        super().__init__(selection, key, output_key)
        if denominator not in DENOMINATORS:
            raise ConfigError(
                f"denominator must be one of {list(DENOMINATORS)}, got {denominator!r}"
            )
        self.denominator = denominator

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        if self.denominator == "total_counts":
            total_n = batch["total_counts_n"]
        else:
            total_n = batch[self.key].to(torch.float32).sum(dim=1)
        return {self.output_key: F.safe_fraction(self.set_sums(batch), total_n)}


class GeneSetCLR(GeneSetTransform):
    r"""Centred log-ratio of each cell's counts in the sets, with a pseudocount per set.

    .. math:: y_{ck} = \ln(a_{ck} + c) - \frac{1}{K} \sum_j \ln(a_{cj} + c), \qquad
              a_{ck} = \sum_{g \in K_k} x_{cg}

    ``skbio.stats.composition.clr(a + c)`` on the sets' summed counts (not on the fractions, so the
    result does not depend on the fraction's denominator). A cell without counts gets zeros.
    """

    def __init__(
        self,
        selection: GeneSetSelection,
        pseudocount: float = 1.0,
        key: str = "counts_ng",
        output_key: str = "compartment_x_nk",
    ) -> None:
        super().__init__(selection, key, output_key)
        if not pseudocount > 0:
            raise ConfigError(f"pseudocount must be positive, got {pseudocount!r}")
        self.pseudocount = float(pseudocount)

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {self.output_key: F.centred_log_ratio(self.set_sums(batch), self.pseudocount)}


class CompartmentComponent(GeneSetComponent):
    """Compartment membership and per-cell compartment composition from a gene -> compartment file.

    The file is a table (gene, compartment; TSV/CSV, header optional) or a GMT (set name =
    compartment), read by :func:`~enhanced_dm.annotations.read_gene_compartments`. Genes are
    matched to the data like pathways (case-insensitive, ``gene_symbol_key`` for Ensembl
    var_names). **Selection**: compartments with no data gene are dropped as
    ``"empty_after_matching"``; of the others the ``num_compartments`` with the most data genes
    (ties: earlier in the file) are kept, in file order, the rest dropped as
    ``"not_in_top_num_compartments"``.

    **Batch outputs**: ``compartment_fraction_nk`` (:class:`GeneSetFraction`, raw counts
    ``counts_ng``, denominator ``fraction_denominator``) and ``compartment_x_nk``, the centred
    log-ratio of the compartments' counts with ``pseudocount`` (:class:`GeneSetCLR`), z-scored per
    compartment with the train split's statistics. Works on any non-negative expression values;
    on counts the fractions are fractions of UMIs.
    """

    name = "compartment"
    singular = "compartment"
    plural = "compartments"
    options = (
        Option(
            "compartment_annotation_file",
            DEFAULT_COMPARTMENT_ANNOTATION_FILE,
            str | os.PathLike | None,
            "gene -> compartment table or GMT: a path, or the name of a bundled file (None: the "
            "default).",
        ),
        Option("num_compartments", 5, int, "The largest compartments kept.", *at_least(1)),
        GENE_SYMBOL_KEY,
        Option(
            "compartment_fraction_denominator",
            "data_genes",
            Denominator,
            "data_genes: share of the counts over the data's genes | total_counts: of the "
            "library size.",
        ),
        Option(
            "compartment_pseudocount",
            1.0,
            float,
            "Added to each compartment's counts before the log-ratio.",
            *greater_than(0),
        ),
        Option(
            "compartment_non_iea_only",
            False,
            bool,
            "Keep only a table's non-IEA rows.",
        ),
    )

    annotation_option = "compartment_annotation_file"
    default_annotation_file = DEFAULT_COMPARTMENT_ANNOTATION_FILE

    def select(self, store: CellStore) -> GeneSetSelection:
        path = resolve_annotation_path(self.compartment_annotation_file)
        table = read_gene_compartments(path, non_iea_only=self.compartment_non_iea_only)
        compartments: dict[str, list[str]] = {}
        for gene, compartment in zip(table["gene"], table["compartment"], strict=True):
            compartments.setdefault(compartment, []).append(gene)
        result = gene_matcher(store, self.gene_symbol_key).membership(compartments)
        after = result.set_size_after_p
        status = rank_and_keep(
            (after > 0).tolist(),
            after.tolist(),
            self.num_compartments,
            "not_in_top_num_compartments",
        )
        status = [reason or EMPTY for reason in status]
        selection = GeneSetSelection.from_membership(result, status)
        if selection.n_sets == 0:
            raise ConfigError(
                f"{path}: no compartment shares a gene with the data (gene_symbol_key="
                f"{self.gene_symbol_key!r}; unmatched symbols e.g. "
                f"{list(selection.unmatched_examples[:5])})"
            )
        return selection

    def build_transforms(self, selection: GeneSetSelection) -> list[tuple[str, Transform]]:
        return [
            (
                "compartment_fraction",
                GeneSetFraction(selection, self.compartment_fraction_denominator),
            ),
            ("compartment_clr", GeneSetCLR(selection, self.compartment_pseudocount)),
            ("compartment_zscore", ZScore(selection.n_sets, key="compartment_x_nk")),
        ]

    def context_streams(self) -> dict[str, int]:
        return {"compartment_x_nk": self.require_selection().n_sets}

    def output_steps(self) -> dict[str, str]:
        return {
            "fractions": "compartment_fraction",
            "clr_before_standardization": "compartment_clr",
            "clr": "compartment_zscore",
        }
