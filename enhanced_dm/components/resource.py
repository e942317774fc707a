"""Resource context: what a cell's limited resources leave in its counts (capture, mitochondrial
and ribosomal load, energy and nutrient programmes), as covariates, an allocation, an
efficiency, a ``resource_nd`` embedding, and the regression of chosen covariates out of the
expression."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from enhanced_dm.annotations import read_gmt
from enhanced_dm.components.base import Component, Slot
from enhanced_dm.components.pathways import GENE_SYMBOL_KEY, gene_matcher, resolve_annotation_path
from enhanced_dm.errors import ConfigError
from enhanced_dm.fitting.cache import fingerprint
from enhanced_dm.options import Option, at_least, in_interval
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.regress_out import RegressOut
from enhanced_dm.transforms.resource import (
    ALLOCATION_CATEGORIES,
    BUILTIN_COVARIATES,
    ResourceCovariates,
    ResourceEmbedding,
)

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore

__all__ = [
    "DEFAULT_RESOURCE_GENE_SETS",
    "ENERGY_TERMS",
    "NUTRIENT_TERMS",
    "RESOURCE_TYPES",
    "ResourceComponent",
    "ResourceGenes",
    "resource_widths",
]

RESOURCE_TYPES = ("capture", "mitochondrial", "translation", "energy", "nutrient")
"""The resource groups of ``resource_nd``, in column order; ``num_resource_types`` takes the
first ones. The first three are fixed-width covariate groups, the last two PCA blocks."""
FIXED_GROUPS = {
    "capture": ("log_total_counts", "log_genes_detected"),
    "mitochondrial": ("pct_mito",),
    "translation": ("pct_ribo",),
}
DEFAULT_RESOURCE_GENE_SETS = "go_bp_resource_terms_human.gmt"
"""Bundled: the seven GO BP sets below, copied from the shared GO release (resources/MANIFEST.md)."""
ENERGY_TERMS = ("GO:0006119", "GO:0006096", "GO:0046034")
"""Oxidative phosphorylation, glycolytic process, ATP metabolic process."""
NUTRIENT_TERMS = ("GO:0031669", "GO:0031929", "GO:0006865", "GO:0008645")
"""Cellular response to nutrient levels, TOR signaling, amino acid transport, hexose
transmembrane transport."""
COVARIATE_PREFIX = "covariate_"


def _efficiency_range_ok(value: Sequence[float]) -> bool:
    low, high = value
    return bool(0 < float(low) <= float(high))


def resource_widths(
    resource_dim: int, num_resource_types: int, energy_dim: int, nutrient_dim: int
) -> tuple[list[str], int, dict[str, int]]:
    """(chosen groups, fixed width, PCA width per chosen block) for ``resource_nd``.

    The fixed groups take their columns first; PCA blocks asking for more than the remaining
    width are trimmed evenly (the larger loses a column first; on a tie, the later block), with
    one warning. The reference defaults (32, 5, 16, 16) give 4 + 14 + 14.
    """
    groups = list(RESOURCE_TYPES[:num_resource_types])
    fixed = sum(len(FIXED_GROUPS[group]) for group in groups if group in FIXED_GROUPS)
    if fixed > resource_dim:
        raise ConfigError(
            f"resource_dim={resource_dim} cannot hold the {fixed} covariate columns of the "
            f"resource groups {groups}; expected resource_dim >= {fixed}"
        )
    asked = {"energy": energy_dim, "nutrient": nutrient_dim}
    widths = {group: asked[group] for group in groups if group in asked}
    room = resource_dim - fixed
    if sum(widths.values()) > room:
        trimmed = dict(widths)
        while sum(trimmed.values()) > room:
            largest = max(trimmed.values())
            last = [group for group, width in trimmed.items() if width == largest][-1]
            trimmed[last] -= 1
        warnings.warn(
            f"resource_dim={resource_dim}: {fixed} covariate columns leave {room} for the PCA "
            f"blocks, which asked for {widths}; trimmed to {trimmed}",
            stacklevel=3,
        )
        widths = trimmed
    return groups, fixed, widths


@dataclass(frozen=True, eq=False)
class ResourceGenes:
    """The data genes of each resource category: mitochondrial and ribosomal (bool per gene),
    the energy and nutrient blocks (sorted indices), the allocation category per gene
    (precedence mitochondrial > ribosomal > energy > nutrient > other), and the GO terms used."""

    mito_g: torch.Tensor
    ribo_g: torch.Tensor
    energy_genes: torch.Tensor
    nutrient_genes: torch.Tensor
    terms: dict[str, list[str]]

    @property
    def category_g(self) -> torch.Tensor:
        category = torch.full_like(self.mito_g, len(ALLOCATION_CATEGORIES) - 1, dtype=torch.int64)
        for code, members in reversed(list(enumerate(self._members()))):
            category[members] = code
        return category

    def _members(self) -> list[torch.Tensor]:
        energy = torch.zeros_like(self.mito_g)
        energy[self.energy_genes] = True
        nutrient = torch.zeros_like(self.mito_g)
        nutrient[self.nutrient_genes] = True
        return [self.mito_g, self.ribo_g, energy, nutrient]

    def counts(self) -> dict[str, Any]:
        category = self.category_g
        return {
            "mitochondrial": int(self.mito_g.sum()),
            "ribosomal": int(self.ribo_g.sum()),
            "energy_block": int(self.energy_genes.numel()),
            "nutrient_block": int(self.nutrient_genes.numel()),
            "allocation": {
                name: int((category == code).sum())
                for code, name in enumerate(ALLOCATION_CATEGORIES)
            },
        }

    def fingerprint(self) -> str:
        return fingerprint(*(tensor.tolist() for tensor in self.tensors().values()), self.terms)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mito_g": self.mito_g,
            "ribo_g": self.ribo_g,
            "energy_genes": self.energy_genes,
            "nutrient_genes": self.nutrient_genes,
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {key: value.clone() for key, value in self.tensors().items()}
        return {**state, "terms": {key: list(value) for key, value in self.terms.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ResourceGenes:
        return cls(
            mito_g=torch.as_tensor(state["mito_g"], dtype=torch.bool),
            ribo_g=torch.as_tensor(state["ribo_g"], dtype=torch.bool),
            energy_genes=torch.as_tensor(state["energy_genes"], dtype=torch.int64),
            nutrient_genes=torch.as_tensor(state["nutrient_genes"], dtype=torch.int64),
            terms={key: list(value) for key, value in state["terms"].items()},
        )


def _flag_genes(
    var: pd.DataFrame, symbols: Sequence[str], prefixes: Sequence[str], key: str | None, what: str
) -> torch.Tensor:
    """Genes flagged by a boolean var column ``key``, else by a symbol prefix (case-sensitive,
    as ``var_names.str.startswith`` in scanpy's QC recipe)."""
    if key is None:
        flags = [str(symbol).startswith(tuple(prefixes)) for symbol in symbols]
        return torch.tensor(flags, dtype=torch.bool)
    if key not in var.columns:
        raise ConfigError(
            f"{what}_key={key!r} is not a var column of the data; available: "
            f"{sorted(map(str, var.columns))}"
        )
    column = var[key]
    if not pd.api.types.is_bool_dtype(column):
        raise ConfigError(
            f"{what}_key={key!r}: var column must be boolean (True for {what} genes), found "
            f"dtype {column.dtype}"
        )
    return torch.from_numpy(column.to_numpy(dtype=bool).copy())


class ResourceComponent(Component):
    """Per-cell resource covariates and allocation, a ``resource_nd`` embedding, and (with
    ``regress_out``) the covariates regressed out of the expression.

    Batch keys: ``covariates_nc`` (:attr:`covariate_names`: ``log_total_counts``,
    ``log_genes_detected``, ``pct_mito``, ``pct_ribo``, then numeric obs columns named in
    ``regress_out``), ``allocation_na`` (share of counts per category: mitochondrial,
    ribosomal, energy, nutrient, other), ``efficiency_n`` (library size over the train median,
    clipped to ``resource_efficiency_range``) and ``resource_nd`` (width ``resource_dim``: the
    first ``num_resource_types`` of :data:`RESOURCE_TYPES`, covariates z-scored and PCA blocks of
    the normalized expression of energy / nutrient genes, each component scaled to unit train
    variance, padded with zeros). Mitochondrial / ribosomal genes: symbol prefixes, or boolean
    var columns ``mito_key`` / ``ribo_key``. Energy / nutrient genes: the GO terms
    ``energy_terms`` / ``nutrient_terms`` (ids or set names) of ``resource_gene_sets``.
    ``regress_out``: covariate names or obs columns (numeric, or categorical: one-hot), see
    :class:`~enhanced_dm.transforms.regress_out.RegressOut` (the ``per_cell`` slot: after
    log1p, before the gene-wise normalization).
    """

    name = "resource"
    options = (
        Option("resource_dim", 32, int, "Width of resource_nd.", *at_least(1)),
        Option(
            "num_resource_types",
            5,
            int,
            "How many of capture, mitochondrial, translation, energy, nutrient.",
            *in_interval(1, len(RESOURCE_TYPES)),
        ),
        Option("energy_dim", 16, int, "Principal components of the energy genes.", *at_least(0)),
        Option(
            "nutrient_dim", 16, int, "Principal components of the nutrient genes.", *at_least(0)
        ),
        Option(
            "resource_efficiency_range",
            (0.1, 1.0),
            tuple[float, float],
            "efficiency_n is clipped to [low, high].",
            lambda value: len(value) == 2 and _efficiency_range_ok(value),
            "two numbers 0 < low <= high",
        ),
        Option(
            "regress_out",
            (),
            tuple[str, ...],
            "Covariate names or obs columns regressed out per gene; () = off.",
        ),
        Option("mito_prefix", ("MT-", "mt-"), tuple[str, ...], "Mitochondrial symbol prefixes."),
        Option(
            "ribo_prefix",
            ("RPS", "RPL", "Rps", "Rpl"),
            tuple[str, ...],
            "Ribosomal protein symbol prefixes.",
        ),
        Option("mito_key", None, str | None, "Boolean var column of mitochondrial genes."),
        Option("ribo_key", None, str | None, "Boolean var column of ribosomal genes."),
        Option(
            "resource_gene_sets",
            DEFAULT_RESOURCE_GENE_SETS,
            str | os.PathLike,
            "GMT holding the energy and nutrient terms (a path or a bundled file name).",
        ),
        Option("energy_terms", ENERGY_TERMS, tuple[str, ...], "GO ids or set names: energy."),
        Option("nutrient_terms", NUTRIENT_TERMS, tuple[str, ...], "GO ids or set names: nutrient."),
        GENE_SYMBOL_KEY,
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        for name in ("regress_out", "mito_prefix", "ribo_prefix", "energy_terms", "nutrient_terms"):
            setattr(self, name, tuple(str(item) for item in getattr(self, name)))
        low, high = self.option_values()["resource_efficiency_range"]
        self.efficiency_range: tuple[float, float] = (float(low), float(high))
        if len(set(self.regress_out)) != len(self.regress_out):
            raise ConfigError(f"regress_out names a covariate twice: {list(self.regress_out)}")
        self.groups, self.fixed_width, self.pca_widths = resource_widths(
            self.resource_dim, self.num_resource_types, self.energy_dim, self.nutrient_dim
        )
        self.genes: ResourceGenes | None = None
        self._transforms: list[tuple[str, Transform, Slot]] | None = None

    # ----------------------------------------------------------------------- covariates
    @property
    def obs_regressors(self) -> list[str]:
        """Names in ``regress_out`` that are obs columns (the built-in names win)."""
        return [name for name in self.regress_out if name not in BUILTIN_COVARIATES]

    def obs_columns(self) -> dict[str, str]:
        return {f"{COVARIATE_PREFIX}{name}": name for name in self.obs_regressors}

    def _split_obs_regressors(self, store: CellStore) -> tuple[list[str], list[str]]:
        """(numeric, categorical) obs regressors; missing or non-finite values are refused."""
        numeric, categorical = [], []
        for name in self.obs_regressors:
            batch_name = f"{COVARIATE_PREFIX}{name}"
            values = store.obs_values[batch_name]
            if batch_name in store.categories:
                missing = int((values < 0).sum())
                categorical.append(name)
            else:
                missing = int((~np.isfinite(values)).sum())
                numeric.append(name)
            if missing:
                raise ConfigError(
                    f"regress_out: obs column {name!r} has {missing} cells without a finite "
                    f"value (NaN / inf / missing label); the regression needs a value for every "
                    "cell: fill or drop them first"
                )
        return numeric, categorical

    # ---------------------------------------------------------------------------- genes
    def _select_genes(self, store: CellStore) -> ResourceGenes:
        var = store.var()
        matcher = gene_matcher(store, self.gene_symbol_key)  # checks gene_symbol_key first
        symbols = (
            store.var_names
            if self.gene_symbol_key is None
            else var[self.gene_symbol_key].astype(str).tolist()
        )
        path = resolve_annotation_path(self.resource_gene_sets)
        sets = read_gmt(path)
        by_key: dict[str, list[str]] = {}
        for gene_set in sets:
            for key in (gene_set.name, gene_set.description):
                by_key.setdefault(key.casefold(), []).extend(gene_set.genes)
        blocks: dict[str, torch.Tensor] = {}
        terms: dict[str, list[str]] = {}
        for block, wanted in (("energy", self.energy_terms), ("nutrient", self.nutrient_terms)):
            unknown = [term for term in wanted if term.casefold() not in by_key]
            if unknown:
                raise ConfigError(
                    f"{path}: {block}_terms {unknown} name no gene set (matched against the set "
                    f"names and the description column, e.g. {sets[0].name!r} / "
                    f"{sets[0].description!r})"
                )
            genes = [gene for term in wanted for gene in by_key[term.casefold()]]
            blocks[block] = torch.from_numpy(matcher.indices(genes))
            terms[block] = list(wanted)
        return ResourceGenes(
            mito_g=_flag_genes(var, symbols, self.mito_prefix, self.mito_key, "mito"),
            ribo_g=_flag_genes(var, symbols, self.ribo_prefix, self.ribo_key, "ribo"),
            energy_genes=blocks["energy"],
            nutrient_genes=blocks["nutrient"],
            terms=terms,
        )

    def setup(self, store: CellStore) -> None:
        if self.genes is None:
            self.genes = self._select_genes(store)
        elif int(self.genes.mito_g.numel()) != store.n_genes:
            raise ConfigError(
                f"ResourceComponent: the restored gene categories are over "
                f"{self.genes.mito_g.numel()} genes, the data have {store.n_genes}"
            )
        genes = self.genes
        numeric, categorical = self._split_obs_regressors(store)
        covariates = ResourceCovariates(
            genes.mito_g,
            genes.ribo_g,
            genes.category_g,
            [(name, f"{COVARIATE_PREFIX}{name}_n") for name in numeric],
            self.efficiency_range,
        )
        steps: list[tuple[str, Transform, Slot]] = [("resource_covariates", covariates, "counts")]
        if self.regress_out:
            regression = RegressOut(
                store.n_genes,
                numeric=[
                    (name, covariates.names.index(name))
                    for name in self.regress_out
                    if name in BUILTIN_COVARIATES or name in numeric
                ],
                categorical=[
                    (
                        name,
                        f"{COVARIATE_PREFIX}{name}_n",
                        store.categories[f"{COVARIATE_PREFIX}{name}"],
                    )
                    for name in categorical
                ],
            )
            steps.append(("regress_out", regression, "per_cell"))
        steps.append(("resource_embedding", self._embedding(genes), "after_gene_wise"))
        self._transforms = steps

    def _embedding(self, genes: ResourceGenes) -> ResourceEmbedding:
        fixed = [
            (name, BUILTIN_COVARIATES.index(name))
            for group in self.groups
            for name in FIXED_GROUPS.get(group, ())
        ]
        blocks = []
        for block, width in self.pca_widths.items():
            members = genes.energy_genes if block == "energy" else genes.nutrient_genes
            if len(members) < width:
                warnings.warn(
                    f"resource embedding: the {block} block has {len(members)} data genes, fewer "
                    f"than {block}_dim={width}; it gets {len(members)} components",
                    stacklevel=3,
                )
            blocks.append((block, members, min(width, len(members))))
        return ResourceEmbedding(fixed, blocks, self.resource_dim)

    # --------------------------------------------------------------------------- access
    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("ResourceComponent: call setup() before transforms()")
        return self._transforms

    @property
    def covariate_names(self) -> list[str]:
        return list(self.step("resource_covariates").names)

    @property
    def resource_names(self) -> list[str]:
        return list(self.step("resource_embedding").names)

    def output_steps(self) -> dict[str, str]:
        return {"covariates_nc": "resource_covariates", "resource_nd": "resource_embedding"}

    def context_streams(self) -> dict[str, int]:
        return {"resource_nd": self.resource_dim}

    def config(self) -> dict[str, Any]:
        options = {
            name: value
            for name, value in self.option_values().items()
            if name != "resource_gene_sets"
        }
        genes = None if self.genes is None else self.genes.fingerprint()
        return {**options, "genes": genes}

    def report(self) -> dict[str, Any]:
        if self.genes is None or self._transforms is None:
            raise RuntimeError("ResourceComponent: call setup() first")
        covariates: ResourceCovariates = self.step("resource_covariates")
        embedding: ResourceEmbedding = self.step("resource_embedding")
        report: dict[str, Any] = {
            "covariate_names": covariates.names,
            "resource_names": embedding.names,
            "allocation_names": list(ALLOCATION_CATEGORIES),
            "groups": {"chosen": self.groups, "pca_widths": dict(self.pca_widths)},
            "genes": self.genes.counts(),
            "terms": self.genes.terms,
        }
        if covariates.fitted:
            low, high = covariates.fraction_clipped.tolist()
            report["covariate_distributions"] = covariates.summary()
            report["efficiency"] = {
                "median_library_size": float(covariates.median_total),
                "range": list(self.efficiency_range),
                "fraction_clipped_low": low,
                "fraction_clipped_high": high,
            }
        if embedding.fitted:
            report["pca"] = embedding.explained()
        if self.regress_out:
            regression: RegressOut = self.step("regress_out")
            report["regression"] = {"design": regression.design_names}
            if regression.fitted:
                r2 = regression.r2_g.cpu().numpy()
                report["regression"].update(
                    dropped=regression.dropped,
                    r2={
                        "mean": float(r2.mean()),
                        "quantiles": dict(
                            zip(
                                ("q05", "q25", "q50", "q75", "q95"),
                                np.quantile(r2, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist(),
                                strict=True,
                            )
                        ),
                    },
                )
        return report

    def state_dict(self) -> dict[str, Any]:
        return {} if self.genes is None else {"genes": self.genes.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use the checkpoint's gene categories (before setup: the GMT is not read again) or
        check they equal ours (after setup)."""
        if not state:
            return
        restored = ResourceGenes.from_state(state["genes"])
        if self.genes is not None and restored.fingerprint() != self.genes.fingerprint():
            raise ConfigError(
                "cannot restore ResourceComponent: the checkpoint's gene categories differ from "
                "the ones this DataModule set up; load the state before setup()"
            )
        self.genes = restored
