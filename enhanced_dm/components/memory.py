"""Memory context: normalization statistics that follow training per cell state, and a bank of
recent cells from which each cell retrieves similar cells of its memory type."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from enhanced_dm.components.base import Component, Slot
from enhanced_dm.components.running import all_ranks_gather, all_ranks_sum
from enhanced_dm.options import CELL_TYPE_KEY, Option, at_least, in_interval
from enhanced_dm.transforms.base import Batch, Transform
from enhanced_dm.transforms.memory import (
    MemoryEmbedding,
    MemoryGroups,
    MemoryRetrieval,
    MovingZScore,
)

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore
    from enhanced_dm.transforms.build import PipelineSettings
    from enhanced_dm.transforms.context import StepContext

__all__ = ["MemoryComponent", "frequent_groups"]

STATE_OBS = "memory_state_raw"
TYPE_OBS = "memory_type_raw"
MAX_EMBEDDING_GENES = 1024
"""The embedding's PCA runs over at most this many genes: those with the largest train variance
of the log-normalized values (a Gram matrix over 20,000 genes would be 3.2 GB, and every batch
pays genes x memory_dim per cell for the projection)."""


def frequent_groups(
    codes_train: np.ndarray, categories: list[str], n_groups: int, has_missing: bool
) -> tuple[np.ndarray, list[str]]:
    """(group of each category code, then of a missing label; group names).

    At most ``n_groups`` categories: one group each (plus ``"other"`` for missing labels when
    there are any). More: the ``n_groups - 1`` most frequent among the train cells (ties by
    category order) keep their own group and the rest, missing labels included, share
    ``"other"``.
    """
    counts = np.bincount(codes_train[codes_train >= 0], minlength=len(categories))
    if len(categories) <= n_groups:
        if has_missing:
            return np.arange(len(categories) + 1), [*categories, "other"]
        return np.append(np.arange(len(categories)), 0), list(categories)
    keep = np.sort(np.argsort(-counts, kind="stable")[: n_groups - 1])
    lookup = np.full(len(categories) + 1, n_groups - 1)
    lookup[keep] = np.arange(len(keep))
    return lookup, [*(categories[i] for i in keep), "other"]


class MemoryComponent(Component):
    """Moving per-state z-score (owns the gene-wise slot), a fitted cell embedding, and a memory
    bank of recent training cells with top-k retrieval.

    * States: ``num_epigenetic_states`` groups of ``state_key`` (the most frequent categories and
      ``"other"``; none: one state). Memory types: ``num_memory_types`` groups of
      ``memory_type_key``, by default the DataModule's ``cell_type_key`` (none: one type, and a
      larger ``num_memory_types`` is capped with a warning).
    * :class:`~enhanced_dm.transforms.memory.MovingZScore`: fitted per state, then moving
      averages (``memory_decay_rate`` = weight of the past) after each training batch, the same
      on every DDP rank.
    * :class:`~enhanced_dm.transforms.memory.MemoryEmbedding`: ``memory_dim`` principal
      components of the normalized expression (capped at what the data support, a warning).
    * :class:`~enhanced_dm.transforms.memory.MemoryRetrieval`: ``num_memory_types`` ring buffers
      of ``memory_size`` slots; each cell's ``num_neighbors`` most similar slots of its type,
      retrieved before the training batch is written in.
    """

    name = "memory"
    has_running_state = True
    options = (
        Option("memory_dim", 512, int, "Width of the cell embedding.", *at_least(1)),
        Option("memory_size", 1000, int, "Slots per memory type.", *at_least(1)),
        Option(
            "num_memory_types", 5, int, "Memory banks (groups of memory_type_key).", *at_least(1)
        ),
        Option("num_epigenetic_states", 3, int, "State groups of state_key.", *at_least(1)),
        Option(
            "memory_decay_rate",
            0.9,
            float,
            "Weight of the past in the moving statistics; slot weights rate ** age.",
            *in_interval(0, 1, closed_high=False),
        ),
        Option("state_key", None, str | None, "obs column of the cell state; None: one state."),
        Option(
            "memory_type_key",
            None,
            str | None,
            "obs column of the memory types; None: cell_type_key.",
        ),
        Option("num_neighbors", 8, int, "Slots retrieved per cell.", *at_least(1)),
        CELL_TYPE_KEY,  # the DataModule's own
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.type_key = self.memory_type_key or self.cell_type_key
        self.n_types = self.num_memory_types if self.type_key is not None else 1
        if self.type_key is None and self.num_memory_types > 1:
            warnings.warn(
                f"num_memory_types={self.num_memory_types} without memory_type_key or "
                "cell_type_key: one memory bank",
                stacklevel=3,
            )
        self.split: dict[str, np.ndarray] = {}
        self.state_names: list[str] = ["all"]
        self.type_names: list[str] = ["all"]
        self.updates = 0
        self.owns_gene_wise = True
        self._transforms: list[tuple[str, Transform, Slot]] | None = None

    def configure(self, settings: PipelineSettings) -> None:
        """Beside another gene-wise owner (a composition's ``gene_wise``) the moving z-score
        keeps running, from ``x_log_ng`` into ``x_memory_ng``, which the embedding then reads."""
        self.owns_gene_wise = settings.gene_wise_owner in (None, self.name)

    def obs_columns(self) -> dict[str, str]:
        columns = {}
        if self.state_key is not None:
            columns[STATE_OBS] = self.state_key
        if self.type_key is not None:
            columns[TYPE_OBS] = self.type_key
        return columns

    def use_split(self, split: Mapping[str, np.ndarray]) -> None:
        self.split = {name: np.asarray(indices) for name, indices in split.items()}

    def _lookup(self, store: CellStore, name: str, n_groups: int) -> tuple[np.ndarray, list[str]]:
        categories = store.categories.get(name)
        if categories is None:
            raise ValueError(
                f"obs column for {name} must hold labels (text or categories), found numbers"
            )
        codes = np.asarray(store.obs_values[name])
        return frequent_groups(
            codes[self.split["train"]], categories, n_groups, bool((codes < 0).any())
        )

    def setup(self, store: CellStore) -> None:
        state_lookup = type_lookup = np.zeros(1, dtype=np.int64)
        if self.state_key is not None:
            state_lookup, self.state_names = self._lookup(
                store, STATE_OBS, self.num_epigenetic_states
            )
        if self.type_key is not None:
            type_lookup, self.type_names = self._lookup(store, TYPE_OBS, self.n_types)
        n_states = int(state_lookup.max()) + 1
        n_types = int(type_lookup.max()) + 1
        groups = MemoryGroups(
            None if self.state_key is None else f"{STATE_OBS}_n",
            torch.from_numpy(state_lookup),
            None if self.type_key is None else f"{TYPE_OBS}_n",
            torch.from_numpy(type_lookup),
        )
        expression = "x_ng" if self.owns_gene_wise else "x_memory_ng"
        zscore = MovingZScore(
            store.n_genes,
            n_states,
            self.memory_decay_rate,
            input_key="x_ng" if self.owns_gene_wise else "x_log_ng",
            output_key=expression,
        )
        genes = min(store.n_genes, MAX_EMBEDDING_GENES)
        dim = min(self.memory_dim, genes, max(len(self.split["train"]) - 1, 1))
        if dim < self.memory_dim:
            warnings.warn(
                f"memory_dim={self.memory_dim} is more than the data support ({genes} genes, "
                f"{len(self.split['train'])} train cells); the embedding has {dim} dimensions",
                stacklevel=3,
            )
        embedding = MemoryEmbedding(store.n_genes, genes, dim, zscore, input_key=expression)
        retrieval = MemoryRetrieval(
            n_types, self.memory_size, dim, self.num_neighbors, self.memory_decay_rate
        )
        self._transforms = [
            ("memory_groups", groups, "counts"),
            ("memory_zscore", zscore, "gene_wise" if self.owns_gene_wise else "after_gene_wise"),
            ("memory_embedding", embedding, "after_gene_wise"),
            ("memory_retrieval", retrieval, "after_gene_wise"),
        ]

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        if self._transforms is None:
            raise RuntimeError("MemoryComponent: call setup() before transforms()")
        return self._transforms

    # ---------------------------------------------------------------------- running state
    def update_running(self, batch: Batch, context: StepContext) -> None:
        """After a training batch: the moving statistics step and the bank write, from the
        batch contributions of every rank (summed / gathered), so all ranks stay identical."""
        zscore: MovingZScore = self.step("memory_zscore")
        x_ng = batch["x_log_ng"]
        n_states, n_genes = zscore.mean_sg.shape
        # per-state sums as one small matrix product (float32 sums of a batch, then float64)
        member_sn = torch.nn.functional.one_hot(batch["memory_state_n"], n_states).T.to(x_ng.dtype)
        sums = torch.cat(
            [member_sn.sum(1, keepdim=True), member_sn @ x_ng, member_sn @ (x_ng * x_ng)], 1
        )
        total = all_ranks_sum(sums.to(torch.float64))
        zscore.update(total[:, 0], total[:, 1 : 1 + n_genes], total[:, 1 + n_genes :])
        retrieval: MemoryRetrieval = self.step("memory_retrieval")
        embedded = all_ranks_gather(batch["memory_embedding_nd"])
        types = all_ranks_gather(batch["memory_type_n"])
        cells = all_ranks_gather(batch["cell_index_n"])
        retrieval.write(embedded, types, cells)
        self.updates += 1

    def running_state(self) -> dict[str, Any]:
        zscore: MovingZScore = self.step("memory_zscore")
        retrieval: MemoryRetrieval = self.step("memory_retrieval")
        return {
            "mean_sg": zscore.mean_sg.detach().cpu().clone(),
            "square_sg": zscore.square_sg.detach().cpu().clone(),
            "bank": retrieval.running_state(),
            "updates": self.updates,
        }

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        zscore: MovingZScore = self.step("memory_zscore")
        zscore.mean_sg.copy_(state["mean_sg"])
        zscore.square_sg.copy_(state["square_sg"])
        self.step("memory_retrieval").load_running_state(state["bank"])
        self.updates = int(state["updates"])

    # ---------------------------------------------------------------------------- report
    def output_steps(self) -> dict[str, str]:
        return {"retrieval_similarity": "memory_retrieval"}

    def config(self) -> dict[str, Any]:
        return {**self.option_values(), "states": self.state_names, "types": self.type_names}

    def report(self) -> dict[str, Any]:
        zscore: MovingZScore = self.step("memory_zscore")
        retrieval: MemoryRetrieval = self.step("memory_retrieval")
        size = retrieval.size
        banks = {}
        for code, name in enumerate(self.type_names[: retrieval.n_types]):
            valid = retrieval.valid_m[code * size : (code + 1) * size]
            ages = retrieval.age_m[code * size : (code + 1) * size][valid]
            banks[name] = {
                "fill": float(valid.float().mean()),
                "mean_age": float(ages.float().mean()) if len(ages) else None,
            }
        drift = (zscore.mean_sg - zscore.fitted_mean_sg).abs().mean(1).tolist()
        return {
            "states": self.state_names[: zscore.mean_sg.shape[0]],
            "memory_types": self.type_names[: retrieval.n_types],
            "banks": banks,
            "mean_drift_per_state": drift,
            "updates": self.updates,
        }
