"""Pathway context: GMT gene sets matched to the data's genes, scored per cell on the device.

Also home of what every gene-set component shares (:class:`GeneSetSelection`,
:class:`GeneSetComponent`, :class:`GeneSetTransform`); the compartment component builds on them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from enhanced_dm.annotations import GeneMatcher, MembershipResult, read_gmt
from enhanced_dm.components.base import Component, Slot
from enhanced_dm.datasets import bundled_path
from enhanced_dm.errors import ConfigError
from enhanced_dm.fitting.cache import fingerprint
from enhanced_dm.options import Option, at_least, in_interval
from enhanced_dm.transforms import functional_context as F
from enhanced_dm.transforms.base import Batch, Transform
from enhanced_dm.transforms.z_score import ZScore

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.context import StepContext

__all__ = [
    "DEFAULT_PATHWAY_ANNOTATION_FILE",
    "GENE_SYMBOL_KEY",
    "GeneSetAUCell",
    "GeneSetComponent",
    "GeneSetMean",
    "GeneSetSelection",
    "GeneSetTransform",
    "PathwayComponent",
    "gene_matcher",
    "resolve_annotation_path",
]

PathwayScore = Literal["mean_z", "mean", "aucell"]
PATHWAY_SCORES: tuple[str, ...] = get_args(PathwayScore)
DEFAULT_PATHWAY_ANNOTATION_FILE = "go_bp_pbmc68k_subset.gmt"
"""Bundled: the 278 GO BP sets with at least 15 genes among pbmc68k's 765 (resources/MANIFEST.md)."""
KEPT = "kept"
EMPTY = "empty_after_matching"


def resolve_annotation_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a file, else, for a bare file name, the bundled file of that name.

    A name like ``"go_bp_pbmc68k_subset.gmt"`` thus works from any directory (an unknown name fails
    listing the bundled files); any other path goes to the parser, which reports a missing file.
    """
    candidate = Path(path).expanduser()
    if candidate.is_file() or Path(path).name != os.fspath(path):
        return candidate
    return bundled_path(os.fspath(path))


def gene_matcher(store: CellStore, gene_symbol_key: str | None) -> GeneMatcher:
    """A :class:`GeneMatcher` over the store's genes, by var_names and by ``var[gene_symbol_key]``."""
    if gene_symbol_key is None:
        return GeneMatcher(store.var_names)
    var = store.var()
    if gene_symbol_key not in var.columns:
        raise ConfigError(
            f"gene_symbol_key={gene_symbol_key!r} is not a var column of the data; "
            f"available: {sorted(map(str, var.columns))}"
        )
    return GeneMatcher(store.var_names, var[gene_symbol_key].tolist())


def _summary(values: Sequence[int]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"min": 0.0, "median": 0.0, "mean": 0.0, "max": 0.0}
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "mean": float(array.mean()),
        "max": float(array.max()),
    }


@dataclass(frozen=True, eq=False)
class GeneSetSelection:
    """Which gene sets of an annotation file a component kept, on the data's gene space, and why.

    ``read_names`` / ``size_before`` / ``size_after`` / ``status`` describe every set read, in
    file order (``status`` is ``"kept"`` or the reason it was dropped). The kept sets, in file
    order, are the columns of the context tensors; their membership is the list of (column, gene)
    pairs ``set_index_e`` / ``gene_index_e``, unique and sorted by column then gene.
    """

    read_names: tuple[str, ...]
    size_before: tuple[int, ...]
    size_after: tuple[int, ...]
    status: tuple[str, ...]
    set_index_e: torch.Tensor
    gene_index_e: torch.Tensor
    n_genes: int
    unmatched_count: int
    unmatched_examples: tuple[str, ...]
    ambiguous_count: int = 0

    @classmethod
    def from_membership(cls, result: MembershipResult, status: Sequence[str]) -> GeneSetSelection:
        """Keep the rows of ``result`` whose status is ``"kept"`` (file order)."""
        kept = [row for row, reason in enumerate(status) if reason == KEPT]
        membership = sp.csr_matrix(result.membership_pg[kept])
        membership.sort_indices()
        set_index_e = np.repeat(np.arange(len(kept)), np.diff(membership.indptr))
        return cls(
            read_names=tuple(result.set_names),
            size_before=tuple(int(n) for n in result.set_size_before_p),
            size_after=tuple(int(n) for n in result.set_size_after_p),
            status=tuple(status),
            set_index_e=torch.from_numpy(set_index_e.astype(np.int64)),
            gene_index_e=torch.from_numpy(membership.indices.astype(np.int64)),
            n_genes=int(result.membership_pg.shape[1]),
            unmatched_count=int(result.unmatched_count),
            unmatched_examples=tuple(result.unmatched_examples),
            ambiguous_count=int(result.ambiguous_count),
        )

    # ------------------------------------------------------------------------- kept sets
    @property
    def kept_rows(self) -> list[int]:
        return [row for row, reason in enumerate(self.status) if reason == KEPT]

    @property
    def names(self) -> list[str]:
        """Names of the kept sets, in column order."""
        return [self.read_names[row] for row in self.kept_rows]

    @property
    def n_sets(self) -> int:
        return len(self.kept_rows)

    @property
    def set_size_p(self) -> torch.Tensor:
        """Data genes in each kept set (int64)."""
        return torch.bincount(self.set_index_e, minlength=self.n_sets)

    def membership(self) -> torch.Tensor:
        """Kept sets x data genes, 1.0 where the gene belongs to the set (sparse COO, float32)."""
        return torch.sparse_coo_tensor(
            torch.stack([self.set_index_e, self.gene_index_e]),
            torch.ones(self.set_index_e.shape[0]),
            (self.n_sets, self.n_genes),
            is_coalesced=True,
            check_invariants=True,
        )

    def mask(self) -> torch.Tensor:
        """Dense bool sets x genes, True where the gene belongs to the set.

        Usable as an attention mask (a set's token attends to its genes); for
        ``nn.MultiheadAttention(attn_mask=...)``, where True means *blocked*, pass ``~mask``.
        """
        mask_pg = torch.zeros(self.n_sets, self.n_genes, dtype=torch.bool)
        mask_pg[self.set_index_e, self.gene_index_e] = True
        return mask_pg

    def gene_index(self) -> torch.Tensor:
        """Sets x largest set size: each set's gene indices, ascending, padded with -1 (int64)."""
        size_p = self.set_size_p
        width = int(size_p.max()) if self.n_sets else 0
        starts_p = torch.cumsum(size_p, 0) - size_p
        position_e = torch.arange(self.set_index_e.shape[0]) - starts_p[self.set_index_e]
        index_pm = torch.full((self.n_sets, width), -1, dtype=torch.int64)
        index_pm[self.set_index_e, position_e] = self.gene_index_e
        return index_pm

    def jaccard(self) -> torch.Tensor:
        r"""Sets x sets Jaccard overlap of the kept sets on the data genes (float32, dense).

        .. math:: J_{pq} = \frac{|P_p \cap P_q|}{|P_p \cup P_q|}

        ``sklearn.metrics.pairwise_distances(M, metric="jaccard")`` is :math:`1 - J`. Kept sets are
        never empty, so the union is never 0 and the diagonal is 1.
        """
        matrix = sp.csr_matrix(
            (
                np.ones(self.set_index_e.shape[0]),
                (self.set_index_e.numpy(), self.gene_index_e.numpy()),
            ),
            shape=(self.n_sets, self.n_genes),
        )
        intersection = np.asarray((matrix @ matrix.T).todense())
        size = np.asarray(matrix.sum(axis=1)).ravel()
        union = size[:, None] + size[None, :] - intersection
        return torch.from_numpy((intersection / np.maximum(union, 1.0)).astype(np.float32))

    def covered_gene_fraction(self) -> float:
        """Fraction of the data genes that belong to at least one kept set."""
        if self.n_genes == 0:
            return 0.0
        return float(torch.unique(self.gene_index_e).numel() / self.n_genes)

    # ------------------------------------------------------------------------------ report
    def table(self) -> pd.DataFrame:
        """One row per set read: name, genes before / after matching, coverage, status."""
        before = np.asarray(self.size_before, dtype=np.int64)
        after = np.asarray(self.size_after, dtype=np.int64)
        return pd.DataFrame(
            {
                "name": list(self.read_names),
                "genes_before_matching": before,
                "genes_after_matching": after,
                "coverage": after / np.maximum(before, 1),
                "status": list(self.status),
            }
        )

    def stats(self, singular: str, plural: str, max_examples: int = 10) -> dict[str, Any]:
        """Sets read / kept / dropped (per reason, with examples), sizes, coverage, unmatched."""
        dropped: dict[str, int] = {}
        examples: dict[str, list[str]] = {}
        for name, reason in zip(self.read_names, self.status, strict=True):
            if reason != KEPT:
                dropped[reason] = dropped.get(reason, 0) + 1
                names = examples.setdefault(reason, [])
                if len(names) < max_examples:
                    names.append(name)
        kept = self.kept_rows
        before = [self.size_before[row] for row in kept]
        after = [self.size_after[row] for row in kept]
        return {
            f"{plural}_read": len(self.read_names),
            f"{plural}_kept": len(kept),
            f"{plural}_dropped": dropped,
            f"{plural}_dropped_examples": examples,
            f"genes_per_{singular}_before_matching": before,
            f"genes_per_{singular}_after_matching": after,
            f"genes_per_{singular}_before_matching_summary": _summary(before),
            f"genes_per_{singular}_after_matching_summary": _summary(after),
            "data_genes": self.n_genes,
            "data_genes_covered_fraction": self.covered_gene_fraction(),
            "unmatched_symbols_count": self.unmatched_count,
            "unmatched_symbols_examples": list(self.unmatched_examples),
            "ambiguous_symbols_count": self.ambiguous_count,
        }

    # ------------------------------------------------------------------------------- state
    def fingerprint(self) -> str:
        """Identity of the kept sets and their genes (enters the statistics cache key)."""
        return fingerprint(
            self.names, self.n_genes, self.set_index_e.tolist(), self.gene_index_e.tolist()
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain lists, ints and tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "read_names": list(self.read_names),
            "size_before": list(self.size_before),
            "size_after": list(self.size_after),
            "status": list(self.status),
            "set_index_e": self.set_index_e.clone(),
            "gene_index_e": self.gene_index_e.clone(),
            "n_genes": self.n_genes,
            "unmatched_count": self.unmatched_count,
            "unmatched_examples": list(self.unmatched_examples),
            "ambiguous_count": self.ambiguous_count,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GeneSetSelection:
        return cls(
            read_names=tuple(state["read_names"]),
            size_before=tuple(int(n) for n in state["size_before"]),
            size_after=tuple(int(n) for n in state["size_after"]),
            status=tuple(state["status"]),
            set_index_e=torch.as_tensor(state["set_index_e"], dtype=torch.int64),
            gene_index_e=torch.as_tensor(state["gene_index_e"], dtype=torch.int64),
            n_genes=int(state["n_genes"]),
            unmatched_count=int(state["unmatched_count"]),
            unmatched_examples=tuple(state["unmatched_examples"]),
            ambiguous_count=int(state.get("ambiguous_count", 0)),
        )


def rank_and_keep(
    eligible: Sequence[bool], score: Sequence[float], limit: int, over_limit: str
) -> list[str]:
    """Status of each set: the ``limit`` eligible sets with the highest ``score`` (ties: the
    earlier in the file) are ``"kept"``, other eligible sets get ``over_limit``; ineligible sets
    get ``""`` (the caller names their reason)."""
    ranked = sorted((row for row, ok in enumerate(eligible) if ok), key=lambda row: -score[row])
    status = [""] * len(eligible)
    for position, row in enumerate(ranked):
        status[row] = KEPT if position < limit else over_limit
    return status


class GeneSetTransform(Transform):
    """Holds a gene-set membership as index buffers, so ``.to(device)`` and checkpoints move it."""

    set_index_e: torch.Tensor
    gene_index_e: torch.Tensor
    set_size_p: torch.Tensor

    def __init__(self, selection: GeneSetSelection, key: str, output_key: str) -> None:
        super().__init__()
        if selection.n_sets == 0:
            raise ConfigError(f"{type(self).__name__} needs at least one gene set")
        self.key = key
        self.output_key = output_key
        self.reads_counts = key == "counts_ng"
        self.n_sets = selection.n_sets
        self.register_buffer("set_index_e", selection.set_index_e.clone())
        self.register_buffer("gene_index_e", selection.gene_index_e.clone())
        self.register_buffer("set_size_p", selection.set_size_p.to(torch.float32))
        if bool((self.set_size_p <= 0).any()):
            raise ConfigError(f"{type(self).__name__}: every gene set needs at least one gene")

    def set_sums(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:func:`~enhanced_dm.transforms.functional_context.gene_set_sums` of ``batch[key]``."""
        return F.gene_set_sums(batch[self.key], self.set_index_e, self.gene_index_e, self.n_sets)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_sets={self.n_sets}, key={self.key!r}, "
            f"output_key={self.output_key!r})"
        )


class GeneSetMean(GeneSetTransform):
    r"""Per cell, the mean of ``batch[key]`` over each set's genes.

    .. math:: s_{cp} = \frac{1}{|P_p|} \sum_{g \in P_p} x_{cg}

    The reference is ``X[:, genes_of_p].mean(axis=1)`` on the normalized matrix (for the default
    pipeline: ``scanpy.pp.normalize_total`` -> ``log1p`` -> ``scale``).
    """

    def __init__(
        self, selection: GeneSetSelection, key: str = "x_ng", output_key: str = "pathway_scores_np"
    ) -> None:
        super().__init__(selection, key, output_key)

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {
            self.output_key: F.gene_set_means(
                batch[self.key], self.set_index_e, self.gene_index_e, self.set_size_p
            )
        }


class GeneSetAUCell(GeneSetTransform):
    r"""Per cell, the AUCell score of each set over the cell's ``n_up`` highest genes.

    .. math:: a_{cp} = \frac{1}{A^{\max}_p} \sum_{g \in P_p} \max(u - r_{cg}, 0)

    See :func:`~enhanced_dm.transforms.functional_context.aucell` (``decoupler``'s AUCell, ties
    by gene order). It reads the raw ``counts_ng``: ranks within a cell are the same for counts
    and for their total-count + log1p normalization, and a gene-wise z-score would change them.
    """

    max_auc_p: torch.Tensor

    def __init__(
        self,
        selection: GeneSetSelection,
        n_up: int,
        key: str = "counts_ng",
        output_key: str = "pathway_scores_np",
    ) -> None:
        super().__init__(selection, key, output_key)
        if not 2 <= n_up <= selection.n_genes:
            raise ConfigError(
                f"AUCell needs 2 <= n_up <= {selection.n_genes} (the data's genes), got {n_up}"
            )
        self.n_up = n_up
        self.register_buffer("max_auc_p", F.aucell_max_auc(self.set_size_p, n_up))

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {
            self.output_key: F.aucell(
                batch[self.key], self.set_index_e, self.gene_index_e, self.max_auc_p, self.n_up
            )
        }


class GeneSetComponent(Component):
    """What pathway and compartment components share: select once, restore from a checkpoint.

    ``setup(store)`` calls :meth:`select` (read the file, match, filter) unless a checkpoint's
    selection was loaded first, in which case that selection is used as is (the annotation file is
    not even read, so a resume works where the file has moved). Subclasses declare ``options``
    and implement :meth:`select` and :meth:`build_transforms`; their steps run in the
    ``after_gene_wise`` slot.
    """

    singular: ClassVar[str] = "set"
    plural: ClassVar[str] = "sets"
    annotation_option: ClassVar[str] = ""
    """The option naming the annotation file; None there means ``default_annotation_file``."""
    default_annotation_file: ClassVar[str] = ""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        if getattr(self, self.annotation_option, None) is None:
            setattr(self, self.annotation_option, self.default_annotation_file)
        self.selection: GeneSetSelection | None = None
        self._transforms: list[tuple[str, Transform]] | None = None

    def saved_options(self) -> dict[str, Any]:
        """The option values, paths as strings (cache key, saved state, warnings)."""
        return {
            name: os.fspath(value) if isinstance(value, os.PathLike) else value
            for name, value in self.option_values().items()
        }

    def select(self, store: CellStore) -> GeneSetSelection:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_transforms(
        self, selection: GeneSetSelection
    ) -> list[tuple[str, Transform]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, store: CellStore) -> None:
        if self.selection is None:
            self.selection = self.select(store)
        elif self.selection.n_genes != store.n_genes:
            raise ConfigError(
                f"{type(self).__name__}: the restored selection is over {self.selection.n_genes} "
                f"genes, the data have {store.n_genes}"
            )
        self._transforms = self.build_transforms(self.selection)

    def require_selection(self) -> GeneSetSelection:
        if self.selection is None:
            raise RuntimeError(
                f"{type(self).__name__}: call setup() first (the file is read there)"
            )
        return self.selection

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before transforms()")
        return [(name, transform, "after_gene_wise") for name, transform in self._transforms]

    def config(self) -> dict[str, Any]:
        selection = None if self.selection is None else self.selection.fingerprint()
        return {**self.saved_options(), "selection": selection}

    def report(self) -> dict[str, Any]:
        return self.require_selection().stats(self.singular, self.plural)

    def state_dict(self) -> dict[str, Any]:
        if self.selection is None:
            return {}
        return {"options": self.saved_options(), "selection": self.selection.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use the checkpoint's selection (before setup) or check it equals ours (after setup)."""
        if not state:
            return
        restored = GeneSetSelection.from_state(state["selection"])
        if self._transforms is not None:
            assert self.selection is not None
            if restored.fingerprint() != self.selection.fingerprint():
                raise ConfigError(
                    f"cannot restore {type(self).__name__}: the checkpoint kept "
                    f"{restored.n_sets} {self.plural}, this set-up DataModule kept "
                    f"{self.selection.n_sets} different ones; load the state before setup()"
                )
            return
        saved_options = {
            k: v for k, v in state.get("options", {}).items() if not k.endswith("file")
        }
        current = {k: v for k, v in self.saved_options().items() if not k.endswith("file")}
        if saved_options != current:
            warnings.warn(
                f"{type(self).__name__}: the checkpoint was made with {saved_options}, not "
                f"{current}; its {restored.n_sets} {self.plural} are used, as the model expects",
                stacklevel=2,
            )
        self.selection = restored


GENE_SYMBOL_KEY = Option(
    "gene_symbol_key",
    None,
    str | None,
    "A var column holding gene symbols, when var_names are e.g. Ensembl ids.",
)
"""Shared by every component that matches annotation symbols to the data's genes."""


class PathwayComponent(GeneSetComponent):
    """Pathway membership, overlap and per-cell pathway scores from a GMT file.

    **Selection** (on the data's gene space, symbols matched case-insensitively, and through
    ``var[gene_symbol_key]`` when var_names are e.g. Ensembl ids): a set is dropped as
    ``"empty_after_matching"`` when none of its genes is in the data, ``"too_small"`` /
    ``"too_large"`` when its matched gene count is outside ``[min_pathway_size,
    max_pathway_size]``; of the remaining sets the ``num_pathways`` with the best coverage
    (matched genes / distinct genes listed; ties: earlier in the file) are kept and the others
    dropped as ``"not_in_top_num_pathways"``. Kept sets are columns in file order.

    **Scores** (``pathway_scores_np``): ``"mean_z"`` is the mean of the normalized expression
    ``x_ng`` (as the base pipeline leaves it) over each pathway's genes, then standardized per
    pathway with the train split's mean and std (ddof=1, :class:`~enhanced_dm.transforms.ZScore`);
    ``"mean"`` stops after the mean; ``"aucell"`` is the AUCell score (decoupler's, in [0, 1], not
    standardized) of the raw counts' within-cell ranks over the top ``ceil(aucell_top_fraction *
    n_genes)`` genes (:class:`GeneSetAUCell`).
    """

    name = "pathway"
    singular = "pathway"
    plural = "pathways"
    options = (
        Option(
            "pathway_annotation_file",
            DEFAULT_PATHWAY_ANNOTATION_FILE,
            str | os.PathLike | None,
            "GMT of gene sets: a path, or the name of a bundled file (None: the default).",
        ),
        Option("num_pathways", 1000, int, "At most this many sets are kept.", *at_least(1)),
        Option("min_pathway_size", 15, int, "Fewest data genes a kept set has.", *at_least(1)),
        Option("max_pathway_size", 500, int, "Most data genes a kept set has.", *at_least(1)),
        Option("pathway_score", "mean_z", PathwayScore, "mean_z | mean | aucell."),
        GENE_SYMBOL_KEY,
        Option(
            "aucell_top_fraction",
            0.05,
            float,
            "AUCell: share of each cell's genes ranked.",
            *in_interval(0, 1, closed_low=False),
        ),
    )

    annotation_option = "pathway_annotation_file"
    default_annotation_file = DEFAULT_PATHWAY_ANNOTATION_FILE

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        if self.min_pathway_size > self.max_pathway_size:
            raise ConfigError(
                "need min_pathway_size <= max_pathway_size, got "
                f"{self.min_pathway_size} and {self.max_pathway_size}"
            )

    def select(self, store: CellStore) -> GeneSetSelection:
        path = resolve_annotation_path(self.pathway_annotation_file)
        gene_sets = {gene_set.name: gene_set.genes for gene_set in read_gmt(path)}
        result = gene_matcher(store, self.gene_symbol_key).membership(gene_sets)
        after = result.set_size_after_p
        coverage = after / np.maximum(result.set_size_before_p, 1)
        eligible = (after >= self.min_pathway_size) & (after <= self.max_pathway_size)
        status = rank_and_keep(
            eligible.tolist(), coverage.tolist(), self.num_pathways, "not_in_top_num_pathways"
        )
        for row, size in enumerate(after):
            if not eligible[row]:
                status[row] = (
                    EMPTY
                    if size == 0
                    else "too_small"
                    if size < self.min_pathway_size
                    else "too_large"
                )
        selection = GeneSetSelection.from_membership(result, status)
        if selection.n_sets == 0:
            stats = selection.stats(self.singular, self.plural)
            raise ConfigError(
                f"{path}: no pathway passes the filters ({stats['pathways_read']} read, dropped: "
                f"{stats['pathways_dropped']}; min_pathway_size={self.min_pathway_size}, "
                f"max_pathway_size={self.max_pathway_size}, gene_symbol_key="
                f"{self.gene_symbol_key!r}; unmatched symbols e.g. "
                f"{list(selection.unmatched_examples[:5])})"
            )
        return selection

    def build_transforms(self, selection: GeneSetSelection) -> list[tuple[str, Transform]]:
        if self.pathway_score == "aucell":
            n_up = math.ceil(self.aucell_top_fraction * selection.n_genes)
            return [("pathway_scores", GeneSetAUCell(selection, n_up))]
        steps: list[tuple[str, Transform]] = [("pathway_scores", GeneSetMean(selection))]
        if self.pathway_score == "mean_z":
            steps.append(("pathway_zscore", ZScore(selection.n_sets, key="pathway_scores_np")))
        return steps

    def context_streams(self) -> dict[str, int]:
        return {"pathway_scores_np": self.require_selection().n_sets}

    def output_steps(self) -> dict[str, str]:
        if self.pathway_score != "mean_z":
            return {"scores": "pathway_scores"}
        return {"scores": "pathway_zscore", "scores_before_standardization": "pathway_scores"}
