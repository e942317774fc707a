"""Regulatory context: a TF -> target network on the data's genes, TF activity per cell on the
device (decoupler's ULM or weighted mean), and gene-type-specific normalization."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from enhanced_dm.annotations import load_network, read_gene_types
from enhanced_dm.components.base import Component, Slot
from enhanced_dm.components.pathways import GENE_SYMBOL_KEY, gene_matcher, resolve_annotation_path
from enhanced_dm.errors import ConfigError, EnhancedDMError
from enhanced_dm.fitting.cache import fingerprint
from enhanced_dm.fitting.detection import DetectedGenesMetric
from enhanced_dm.options import Option, at_least
from enhanced_dm.transforms import functional_context as F
from enhanced_dm.transforms.base import Batch, FittableTransform, Transform
from enhanced_dm.transforms.column_groups import ColumnGroupNormalization
from enhanced_dm.transforms.registry import GENE_NORMALIZATIONS, build_gene_normalization

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.build import PipelineSettings
    from enhanced_dm.transforms.context import StepContext

__all__ = [
    "DEFAULT_NETWORK_FILE",
    "RegulatoryComponent",
    "RegulatoryNetwork",
    "TFActivity",
]

ActivityMethod = Literal["ulm", "wmean"]
ActivityInput = Literal["x_log_ng", "x_ng"]
DEFAULT_NETWORK_FILE = "progeny_human_top500.tsv"
"""Bundled: PROGENy's 14 pathways, top 500 genes each, signed weights (resources/MANIFEST.md)."""
GENE_TYPE_CODES = {"neither": 0, "target": 1, "tf": 2, "both": 3}


def _known_normalization(name: str | None) -> bool:
    return name is None or name == "none" or name in GENE_NORMALIZATIONS


@dataclass(frozen=True, eq=False)
class RegulatoryNetwork:
    """The network on the data's gene space: kept regulators (sorted by name, decoupler's column
    order), edges ``(regulator_index_e, gene_index_e, weight_e)`` sorted by regulator then gene,
    each regulator's own gene (-1 if absent), gene types and the selection statistics."""

    regulator_names: tuple[str, ...]
    regulator_index_e: torch.Tensor
    gene_index_e: torch.Tensor
    weight_e: torch.Tensor
    regulator_gene_index_r: torch.Tensor
    gene_type_g: torch.Tensor
    n_genes: int
    statistics: dict[str, Any]

    @property
    def n_regulators(self) -> int:
        return len(self.regulator_names)

    def adjacency(self) -> torch.Tensor:
        """Regulators x genes, signed weights (sparse COO float32)."""
        return torch.sparse_coo_tensor(
            torch.stack([self.regulator_index_e, self.gene_index_e]),
            self.weight_e,
            (self.n_regulators, self.n_genes),
            is_coalesced=True,
        )

    def mask(self) -> torch.Tensor:
        """Dense bool regulators x genes, True on an edge (attention masks: pass ``~mask``)."""
        mask_rg = torch.zeros(self.n_regulators, self.n_genes, dtype=torch.bool)
        mask_rg[self.regulator_index_e, self.gene_index_e] = True
        return mask_rg

    def fingerprint(self) -> str:
        return fingerprint(
            list(self.regulator_names),
            self.n_genes,
            self.regulator_index_e.tolist(),
            self.gene_index_e.tolist(),
            self.weight_e.tolist(),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "regulator_names": list(self.regulator_names),
            "regulator_index_e": self.regulator_index_e.clone(),
            "gene_index_e": self.gene_index_e.clone(),
            "weight_e": self.weight_e.clone(),
            "regulator_gene_index_r": self.regulator_gene_index_r.clone(),
            "gene_type_g": self.gene_type_g.clone(),
            "n_genes": self.n_genes,
            "statistics": dict(self.statistics),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RegulatoryNetwork:
        return cls(
            regulator_names=tuple(state["regulator_names"]),
            regulator_index_e=torch.as_tensor(state["regulator_index_e"], dtype=torch.int64),
            gene_index_e=torch.as_tensor(state["gene_index_e"], dtype=torch.int64),
            weight_e=torch.as_tensor(state["weight_e"], dtype=torch.float32),
            regulator_gene_index_r=torch.as_tensor(state["regulator_gene_index_r"]),
            gene_type_g=torch.as_tensor(state["gene_type_g"]),
            n_genes=int(state["n_genes"]),
            statistics=dict(state["statistics"]),
        )


def build_network(
    edges: pd.DataFrame,
    var_names: list[str],
    matcher: Any,
    *,
    threshold: float,
    min_targets: int,
    gene_types: Mapping[str, str] | None,
    where: str,
) -> RegulatoryNetwork:
    """Match an edge list (source, target, weight) to the data's genes and select regulators.

    Edges with ``|weight| < threshold`` are dropped, then edges whose target matches no data gene
    (symbols matched as the pathway component matches them: exact spelling first, else
    case-insensitively; a target naming several genes gives an edge to each, their weights
    summed if two targets land on one gene). Regulators with fewer than ``min_targets`` data
    genes are dropped. Self-loops are kept and counted.
    """
    read = len(edges)
    strong = edges[edges["weight"].abs() >= threshold]
    rows: list[tuple[str, int, float]] = []
    unknown: dict[str, None] = {}
    for source, target, weight in strong.itertuples(index=False):
        found = matcher.lookup(target)
        if found is None:
            unknown[target] = None
            continue
        rows.extend((source, int(gene), float(weight)) for gene in found)
    matched = pd.DataFrame(rows, columns=["source", "gene", "weight"])
    before_merge = len(matched)
    matched = matched.groupby(["source", "gene"], as_index=False, sort=True)["weight"].sum()
    merged = before_merge - len(matched)
    targets_r = matched.groupby("source")["gene"].nunique()
    too_few = sorted(targets_r[targets_r < min_targets].index)
    without_data_targets = sorted(set(strong["source"]) - set(targets_r.index))
    kept = sorted(targets_r[targets_r >= min_targets].index)
    if not kept:
        raise ConfigError(
            f"{where}: no regulator keeps min_targets={min_targets} targets among the data's "
            f"genes ({read} edges read, {len(strong)} with |weight| >= {threshold}, targets "
            f"unmatched e.g. {list(unknown)[:5]}); lower regulatory_strength_threshold or "
            "min_targets, or check gene_symbol_key"
        )
    matched = matched[matched["source"].isin(kept)]
    order = {name: index for index, name in enumerate(kept)}
    regulator_gene = [matcher.lookup(name) for name in kept]
    gene_type = np.zeros(len(var_names), dtype=np.int8)
    if gene_types is None:
        gene_type[matched["gene"].unique()] = GENE_TYPE_CODES["target"]
        for found in regulator_gene:
            if found is not None:
                gene_type[found] |= GENE_TYPE_CODES["tf"]
    else:
        for symbol, kind in gene_types.items():
            found = matcher.lookup(symbol)
            if found is not None:
                gene_type[found] |= GENE_TYPE_CODES[kind]
    per_regulator = targets_r[kept].to_numpy()
    statistics = {
        "edges_read": read,
        "edges_kept": len(matched),
        "edges_dropped_below_threshold": read - len(strong),
        "edges_dropped_unknown_target": int(strong["target"].isin(unknown).sum()),
        "edges_merged_onto_one_gene": merged,
        "self_loops": int(
            (strong["source"].str.casefold() == strong["target"].str.casefold()).sum()
        ),
        "unknown_targets_examples": list(unknown)[:10],
        "regulators_read": int(edges["source"].nunique()),
        "regulators_kept": len(kept),
        "regulators_dropped": {
            "fewer_than_min_targets": len(too_few),
            "no_target_in_data_or_below_threshold": len(without_data_targets),
        },
        "regulators_dropped_examples": (too_few + without_data_targets)[:10],
        "targets_per_regulator": {
            "min": int(per_regulator.min()),
            "median": float(np.median(per_regulator)),
            "max": int(per_regulator.max()),
        },
        "regulators_found_as_data_genes": sum(found is not None for found in regulator_gene),
        "tf_genes": int((gene_type & GENE_TYPE_CODES["tf"] > 0).sum()),
        "target_genes": int((gene_type & GENE_TYPE_CODES["target"] > 0).sum()),
    }
    return RegulatoryNetwork(
        regulator_names=tuple(kept),
        regulator_index_e=torch.as_tensor(matched["source"].map(order).to_numpy(np.int64)),
        gene_index_e=torch.as_tensor(matched["gene"].to_numpy(np.int64)),
        weight_e=torch.as_tensor(matched["weight"].to_numpy(np.float32)),
        regulator_gene_index_r=torch.as_tensor(
            [int(found[0]) if found is not None else -1 for found in regulator_gene],
            dtype=torch.int64,
        ),
        gene_type_g=torch.as_tensor(gene_type),
        n_genes=len(var_names),
        statistics=statistics,
    )


class TFActivity(FittableTransform):
    r"""Per cell, the activity of each regulator: ``"ulm"`` (decoupler's univariate linear
    model, :func:`~enhanced_dm.transforms.functional_context.ulm`) or ``"wmean"`` (its weighted
    mean, :func:`~enhanced_dm.transforms.functional_context.weighted_mean`), from ``key``.

    Fitted: the genes detected in at least one train cell (decoupler drops genes with no count
    from the matrix it is given, and regresses over the rest); edges to other genes are left
    out. One sparse-dense product per batch, no loop over cells or regulators. The regulators x
    target genes CSR of the kept edges is built once per fit, as buffers (``.to(device)`` moves
    it), not per batch.
    """

    reads_counts = False  # the detection metric reads counts_ng in either layout
    regulator_index_e: torch.Tensor
    gene_index_e: torch.Tensor
    weight_e: torch.Tensor
    detected_g: torch.Tensor
    weight_crow_r: torch.Tensor
    weight_column_k: torch.Tensor
    weight_value_k: torch.Tensor
    target_genes_t: torch.Tensor

    def __init__(
        self, network: RegulatoryNetwork, method: ActivityMethod, key: str = "x_log_ng"
    ) -> None:
        super().__init__()
        self.method = method
        self.key = key
        self.output_key = "tf_activity_nr"
        self.reads_log_expression = key == "x_log_ng"
        self.n_regulators = network.n_regulators
        self.register_buffer("regulator_index_e", network.regulator_index_e.clone())
        self.register_buffer("gene_index_e", network.gene_index_e.clone())
        self.register_buffer("weight_e", network.weight_e.clone())
        self.register_buffer("detected_g", torch.ones(network.n_genes, dtype=torch.bool))
        for name in ("weight_crow_r", "weight_column_k", "weight_value_k", "target_genes_t"):
            self.register_buffer(name, torch.zeros(0))
        self._build_weights()

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "key": self.key}

    def fit_metric(self) -> DetectedGenesMetric:
        return DetectedGenesMetric(int(self.detected_g.shape[0]))

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        self.detected_g = (result["detected_cells_g"] > 0).to(self.detected_g.device)
        self._build_weights()
        self.fitted = True

    def _build_weights(self) -> None:
        """The kept edges (non-zero weight, detected target) as regulators x target genes CSR
        parts (float64 values; ``k`` indexes kept edges, columns remapped onto the ascending
        target genes ``target_genes_t``)."""
        keep_e = (self.weight_e != 0) & self.detected_g[self.gene_index_e]
        rows_k = self.regulator_index_e[keep_e]
        self.target_genes_t, self.weight_column_k = torch.unique(
            self.gene_index_e[keep_e], return_inverse=True
        )
        crow_r = torch.zeros(self.n_regulators + 1, dtype=torch.int64, device=rows_k.device)
        crow_r[1:] = torch.cumsum(torch.bincount(rows_k, minlength=self.n_regulators), 0)
        self.weight_crow_r = crow_r
        self.weight_value_k = self.weight_e[keep_e].to(torch.float64)

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {"detected_g": self.detected_g.detach().cpu().clone()}

    def restore_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        if state["detected_g"].shape != self.detected_g.shape:
            raise ValueError("TFActivity: saved detected genes do not fit this gene space")
        self.load_fitted({"detected_cells_g": state["detected_g"].to(torch.float64)})

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = batch[self.key]
        weights_rt = torch.sparse_csr_tensor(
            self.weight_crow_r,
            self.weight_column_k,
            self.weight_value_k,
            (self.n_regulators, int(self.target_genes_t.shape[0])),
            check_invariants=False,
        )
        if self.method == "ulm":
            activity = F.ulm(x_ng, self.detected_g, weights_rt, self.target_genes_t)
        else:
            activity = F.weighted_mean(x_ng, weights_rt, self.target_genes_t)
        return {self.output_key: activity}

    def __repr__(self) -> str:
        return f"TFActivity(method={self.method!r}, n_regulators={self.n_regulators}, key={self.key!r})"


class RegulatoryComponent(Component):
    """A TF -> target network matched to the data, TF activity per cell, and (optionally)
    different gene-wise normalizations for TF genes and target genes.

    **Network** (``interaction_matrix_file``: a TSV/CSV path, a bundled file name, a ``.pt``
    file or a pandas DataFrame; :func:`~enhanced_dm.annotations.network.load_network`):
    edges with ``|weight| < regulatory_strength_threshold`` dropped, targets matched to the
    data's genes (``gene_symbol_key`` for Ensembl var_names), regulators with fewer than
    ``min_targets`` data genes dropped (decoupler's ``tmin``, counted over the data's genes so
    the columns are known before fitting; decoupler counts over the genes detected in its
    matrix). **Gene types** (``gene_type_annotation_file``: a table gene, TF|target|both, or a
    plain list of TF symbols; None: inferred, targets of the network and regulators' own genes).

    **Batch key** ``tf_activity_nr``: ``tf_activity_method`` of :class:`TFActivity` on
    ``tf_activity_input`` (``x_log_ng``, the log-normalized values decoupler users pass; or
    ``x_ng`` after the gene-wise step). **Type-specific normalization**: with
    ``tf_normalization`` or ``target_normalization`` set the component owns the gene-wise slot:
    TF genes (and genes that are both) get ``tf_normalization``, target genes
    ``target_normalization``, every other gene ``normalization_type``; each is fitted on the
    train split over its own columns only.
    """

    name = "regulatory"
    interaction_matrix_file: Any  # a path, a bundled name or a DataFrame (declared below)
    options = (
        Option(
            "interaction_matrix_file",
            DEFAULT_NETWORK_FILE,
            Any,
            "TF -> target network: TSV/CSV (gz), .pt, a DataFrame, or a bundled file name.",
        ),
        Option(
            "gene_type_annotation_file",
            None,
            str | os.PathLike | None,
            "gene<TAB>TF|target table or a plain TF list; None: inferred from the network.",
        ),
        Option(
            "regulatory_strength_threshold",
            0.5,
            float,
            "Edges with |weight| below it are dropped.",
            *at_least(0),
        ),
        Option("tf_activity_method", "ulm", ActivityMethod, "ulm | wmean (decoupler's)."),
        Option("tf_activity_input", "x_log_ng", ActivityInput, "x_log_ng | x_ng."),
        Option("min_targets", 5, int, "Fewest data genes a kept regulator has.", *at_least(1)),
        Option(
            "tf_normalization",
            None,
            str | None,
            "Gene-wise normalization of TF genes; None: normalization_type.",
            _known_normalization,
            f"one of {sorted([*GENE_NORMALIZATIONS, 'none'])} or None",
        ),
        Option(
            "target_normalization",
            None,
            str | None,
            "Gene-wise normalization of target genes; None: normalization_type.",
            _known_normalization,
            f"one of {sorted([*GENE_NORMALIZATIONS, 'none'])} or None",
        ),
        GENE_SYMBOL_KEY,
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        network_file = self.interaction_matrix_file
        if network_file is None:
            self.interaction_matrix_file = network_file = DEFAULT_NETWORK_FILE
        if not isinstance(network_file, str | os.PathLike | pd.DataFrame):
            raise ConfigError(
                "interaction_matrix_file must be a path, a bundled file name or a pandas "
                f"DataFrame, got {type(network_file).__name__}"
            )
        self.network: RegulatoryNetwork | None = None
        self.settings: PipelineSettings | None = None
        self._transforms: list[tuple[str, Transform, Slot]] | None = None

    def configure(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def _source(self) -> str | os.PathLike[str] | pd.DataFrame:
        source = self.interaction_matrix_file
        return source if isinstance(source, pd.DataFrame) else resolve_annotation_path(source)

    def setup(self, store: CellStore) -> None:
        if self.network is None:
            source = self._source()
            where = (
                "interaction_matrix_file (DataFrame)"
                if isinstance(source, pd.DataFrame)
                else str(source)
            )
            types = (
                None
                if self.gene_type_annotation_file is None
                else read_gene_types(resolve_annotation_path(self.gene_type_annotation_file))
            )
            self.network = build_network(
                load_network(source),
                store.var_names,
                gene_matcher(store, self.gene_symbol_key),
                threshold=self.regulatory_strength_threshold,
                min_targets=self.min_targets,
                gene_types=types,
                where=where,
            )
        elif self.network.n_genes != store.n_genes:
            raise ConfigError(
                f"RegulatoryComponent: the restored network is over {self.network.n_genes} "
                f"genes, the data have {store.n_genes}"
            )
        steps: list[tuple[str, Transform, Slot]] = []
        gene_step = self._type_specific_normalization()
        if gene_step is not None:
            steps.append(("type_specific_normalization", gene_step, "gene_wise"))
        activity = TFActivity(self.network, self.tf_activity_method, self.tf_activity_input)
        steps.append(("tf_activity", activity, "after_gene_wise"))
        self._transforms = steps

    def _type_specific_normalization(self) -> ColumnGroupNormalization | None:
        if self.tf_normalization is None and self.target_normalization is None:
            return None
        if self.settings is None:
            raise ConfigError("RegulatoryComponent: type-specific normalization needs configure()")
        assert self.network is not None
        base = self.settings.normalization_type if self.settings.per_gene_normalization else "none"
        code_g = self.network.gene_type_g.to(torch.int64)
        is_tf = (code_g & GENE_TYPE_CODES["tf"]) > 0
        is_target = code_g == GENE_TYPE_CODES["target"]
        chosen = {
            "tf": (self.tf_normalization or base, is_tf),
            "target": (self.target_normalization or base, is_target),
            "other": (base, ~(is_tf | is_target)),
        }
        groups = []
        for label, (kind, mask) in chosen.items():
            columns = torch.nonzero(mask).flatten()
            if kind == "none" or len(columns) == 0:
                continue
            step = build_gene_normalization(
                kind,
                len(columns),
                self.settings.n_groups,
                self.settings.group_key,
                dict(self.settings.normalization_options),
            )
            groups.append((f"{label}:{kind}", columns, step))
        return ColumnGroupNormalization(groups)

    def require_network(self) -> RegulatoryNetwork:
        if self.network is None:
            raise RuntimeError(
                "RegulatoryComponent: call setup() first (the network is read there)"
            )
        return self.network

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("RegulatoryComponent: call setup() before transforms()")
        return self._transforms

    def output_steps(self) -> dict[str, str]:
        return {"tf_activity": "tf_activity"}

    def context_streams(self) -> dict[str, int]:
        return {"tf_activity_nr": self.require_network().n_regulators}

    def missing_input(self, obs_keys: Collection[str]) -> str | None:
        source = self.interaction_matrix_file
        if isinstance(source, pd.DataFrame) or self.network is not None:
            return super().missing_input(obs_keys)
        try:
            path = resolve_annotation_path(source)
        except EnhancedDMError as error:
            return str(error)
        return (
            None
            if path.is_file()
            else f"interaction_matrix_file {os.fspath(path)!r} does not exist"
        )

    def config(self) -> dict[str, Any]:
        options = {
            name: value
            for name, value in self.option_values().items()
            if name not in ("interaction_matrix_file", "gene_type_annotation_file")
        }
        network = None if self.network is None else self.network.fingerprint()
        return {**options, "network": network}

    def report(self) -> dict[str, Any]:
        network = self.require_network()
        return {**network.statistics, "regulator_names": list(network.regulator_names)}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.network is None else {"network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use the checkpoint's network (before setup: the file is not read again) or check it
        equals ours (after setup)."""
        if not state:
            return
        restored = RegulatoryNetwork.from_state(state["network"])
        if self.network is not None and restored.fingerprint() != self.network.fingerprint():
            raise ConfigError(
                "cannot restore RegulatoryComponent: the checkpoint's network differs from the "
                "one this DataModule set up; load the state before setup()"
            )
        self.network = restored
