"""Build a DataModule's pipeline from its normalization settings and its components' slots.

The order is written down once, in :mod:`enhanced_dm.components.base`; this module builds it and
refuses the combinations that cannot work (two owners of the gene-wise slot, one batch key
written by two components, dense counts read while ``dense_counts=False``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from enhanced_dm.errors import ConfigError
from enhanced_dm.transforms.base import Pipeline, Transform
from enhanced_dm.transforms.densify import Densify, DensifyExpression, KeepLogExpression
from enhanced_dm.transforms.grouped import BATCH_CELL_TYPE_KEY, CombinedGroups
from enhanced_dm.transforms.log1p import Log1p
from enhanced_dm.transforms.normalize_total import NormalizeTotal
from enhanced_dm.transforms.registry import GENE_NORMALIZATIONS, build_gene_normalization

if TYPE_CHECKING:
    from enhanced_dm.components.base import Component
    from enhanced_dm.data.store import CellStore

__all__ = [
    "BASE_GENE_WISE",
    "BATCH_CELL_TYPE_KEY",
    "CORE_KEYS",
    "PipelineSettings",
    "build_pipeline",
    "warn_if_counts_needed",
]

BASE_GENE_WISE = "base"
"""``gene_wise`` value naming the DataModule's own gene-wise step (``normalization_type``)."""
CORE_KEYS = frozenset({"x_ng", "counts_ng", "total_counts_n", "cell_index_n"})
"""Keys every pipeline carries; the counts slot and the gene-wise owner rewrite them by design."""


@dataclass(frozen=True)
class PipelineSettings:
    """The DataModule's normalization options that shape the pipeline."""

    normalization_type: str = "z_score"
    per_cell_normalization: bool = True
    per_gene_normalization: bool = True
    target_sum: float | str = 1e4
    log1p: bool = True
    dense_counts: bool = True
    group_key: str | None = None
    n_groups: int = 0
    n_cell_types: int = 0
    """Cell types, when the groups are batch x cell type (:data:`BATCH_CELL_TYPE_KEY`)."""
    normalization_options: Mapping[str, Any] = field(default_factory=dict)
    gene_wise_owner: str | None = None
    """Name of the component whose ``gene_wise`` steps replace the base's when several claim
    the slot (a composition's ``gene_wise`` option), :data:`BASE_GENE_WISE` for the base's own
    step whatever the components claim; None: at most one component may claim it."""

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], categories: Mapping[str, Sequence[str]]
    ) -> PipelineSettings:
        """From a DataModule's option values (``categories`` sizes the grouped statistics)."""
        group_key, n_groups, n_cell_types = None, 0, 0
        by_batch, by_type = (
            options["batch_aware_normalization"],
            options["biological_normalization"],
        )
        if by_batch and by_type:
            group_key, n_cell_types = BATCH_CELL_TYPE_KEY, len(categories["cell_type"])
            n_groups = len(categories["batch"]) * n_cell_types
        elif by_batch:
            group_key, n_groups = "batch_n", len(categories["batch"])
        elif by_type:
            group_key, n_groups = "cell_type_n", len(categories["cell_type"])
        return cls(
            normalization_type=options["normalization_type"],
            per_cell_normalization=options["per_cell_normalization"],
            per_gene_normalization=options["per_gene_normalization"],
            target_sum=options["target_sum"],
            log1p=options["log1p"],
            dense_counts=options["dense_counts"],
            group_key=group_key,
            n_groups=n_groups,
            n_cell_types=n_cell_types,
            normalization_options={
                "max_value": options["max_value"],
                "stats_max_cells": options["stats_max_cells"],
                "seed": options["seed"],
                **dict(options["normalization_options"] or {}),
            },
            gene_wise_owner=options.get("gene_wise"),
        )


def _component_steps(
    components: Sequence[Component], gene_wise_owner: str | None
) -> dict[str, list[tuple[str, Transform]]]:
    """The components' steps by slot; checks the gene-wise owner and key conflicts."""
    by_slot: dict[str, list[tuple[str, Transform]]] = {
        "counts": [],
        "per_cell": [],
        "gene_wise": [],
        "after_gene_wise": [],
    }
    claims: list[str] = []
    writers: dict[str, str] = {}
    for component in components:
        steps = component.transforms()
        if any(slot == "gene_wise" for _, _, slot in steps):
            claims.append(component.name)
        for name, transform, slot in steps:
            if slot not in by_slot:
                raise ConfigError(
                    f"component {component.name!r} puts step {name!r} in slot {slot!r}; "
                    f"expected one of {list(by_slot)}"
                )
            if slot == "gene_wise" and gene_wise_owner not in (None, component.name):
                continue
            for key in transform.output_keys:
                other = writers.setdefault(key, component.name)
                if other != component.name and key not in CORE_KEYS:
                    raise ConfigError(
                        f"batch key {key!r} is written by both components {other!r} and "
                        f"{component.name!r}; each key must have one writer"
                    )
            by_slot[slot].append((name, transform))
    if gene_wise_owner is None and len(claims) > 1:
        raise ConfigError(
            f"components {claims} all replace the gene-wise normalization; at most one may "
            "(a composition chooses the owner by its gene_wise option)"
        )
    if gene_wise_owner not in (None, BASE_GENE_WISE, *claims):
        raise ConfigError(
            f"gene_wise={gene_wise_owner!r}, but the components that replace the gene-wise "
            f"normalization are {claims} (or {BASE_GENE_WISE!r}: the DataModule's own "
            "normalization_type)"
        )
    return by_slot


def _base_gene_step(settings: PipelineSettings, n_genes: int) -> Transform | None:
    if not settings.per_gene_normalization or settings.normalization_type == "none":
        return None
    spec = GENE_NORMALIZATIONS.get(settings.normalization_type)
    if spec is not None and spec.needs_raw_counts and settings.per_cell_normalization:
        raise ConfigError(
            f"normalization_type={settings.normalization_type!r} works on raw counts; "
            "set per_cell_normalization=False"
        )
    return build_gene_normalization(
        settings.normalization_type,
        n_genes,
        settings.n_groups,
        settings.group_key,
        dict(settings.normalization_options),
    )


def build_pipeline(
    settings: PipelineSettings, n_genes: int, components: Sequence[Component] = ()
) -> Pipeline:
    """counts slot -> densify -> total-count -> log1p -> per_cell slot -> (densify_x) ->
    (keep_x_log) -> gene-wise (the base's or its owner's) -> after_gene_wise slot.

    ``densify_x`` goes before the first step from the per_cell slot on that cannot read a CSR
    ``x_ng`` (at the end of them when all can and none is gene-wise); ``keep_x_log`` only when a
    gene-wise or later step declares ``reads_log_expression``.
    """
    slots = _component_steps(components, settings.gene_wise_owner)
    pipeline = Pipeline()
    if settings.group_key == BATCH_CELL_TYPE_KEY:
        combined = CombinedGroups(
            "batch_n", "cell_type_n", settings.n_cell_types, BATCH_CELL_TYPE_KEY
        )
        pipeline.add("batch_cell_type", combined)
    for name, step in slots["counts"]:
        pipeline.add(name, step)
    pipeline.add("densify", Densify(settings.dense_counts))
    if settings.per_cell_normalization:
        pipeline.add("normalize_total", NormalizeTotal(settings.target_sum))
        if settings.log1p:
            pipeline.add("log1p", Log1p())
    gene_steps = slots["gene_wise"]
    if not gene_steps:
        base_step = _base_gene_step(settings, n_genes)
        gene_steps = [] if base_step is None else [(settings.normalization_type, base_step)]
    densify_placed = False
    for name, step in slots["per_cell"]:
        if not step.accepts_sparse and not densify_placed:
            pipeline.add("densify_x", DensifyExpression())
            densify_placed = True
        pipeline.add(name, step)
    first_gene_sparse = bool(gene_steps) and gene_steps[0][1].accepts_sparse
    if not densify_placed and not first_gene_sparse:
        pipeline.add("densify_x", DensifyExpression())
    later = [step for _, step in gene_steps + slots["after_gene_wise"]]
    if any(step.reads_log_expression for step in later):
        pipeline.add("keep_x_log", KeepLogExpression())
    for name, step in gene_steps + slots["after_gene_wise"]:
        pipeline.add(name, step)
    # Counts-slot steps read the CSR counts before densify, not the dense ones.
    after_densify = pipeline.named_transforms()[len(slots["counts"]) + 1 :]
    readers = [name for name, step in after_densify if step.reads_counts]
    if not settings.dense_counts and readers:
        raise ConfigError(
            f"dense_counts=False, but pipeline steps {readers} read the dense counts_ng; "
            "leave dense_counts=True for this pipeline"
        )
    return pipeline


def warn_if_counts_needed(settings: PipelineSettings, store: CellStore) -> None:
    """Warn at setup when the gene-wise normalization needs raw counts but the data are not.

    The transform itself refuses non-integer values when it is fitted or applied; this warning
    says why early and repeats the store's verdict (``counts="auto"`` judges from the values).
    """
    spec = GENE_NORMALIZATIONS.get(settings.normalization_type)
    if settings.per_gene_normalization and spec and spec.needs_raw_counts and not store.is_counts:
        warnings.warn(
            f"normalization_type={settings.normalization_type!r} expects raw integer counts, "
            f"but {store.counts_verdict}",
            stacklevel=3,
        )
