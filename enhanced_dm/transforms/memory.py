"""Memory: cell states and memory types per cell, a z-score whose statistics move with training
(per state), a fitted embedding of cells, and retrieval of similar cells from a bank of recent
cells."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from enhanced_dm.fitting.linear import GramMetric, gram_components
from enhanced_dm.fitting.moments import RawMomentsMetric, scale_or_one
from enhanced_dm.transforms import functional as F
from enhanced_dm.transforms.base import Batch, FittableTransform, Transform

if TYPE_CHECKING:
    from enhanced_dm.transforms.context import StepContext

__all__ = ["MemoryEmbedding", "MemoryGroups", "MemoryRetrieval", "MovingZScore"]


class MemoryGroups(Transform):
    """``memory_state_n`` and ``memory_type_n``: the obs codes read as ``state_key`` /
    ``type_key`` mapped onto their groups (``*_lookup``: group of each category code; a missing
    label, code -1, goes to the last group). Without a key every cell is in group 0."""

    reads_counts = False
    monitored = False
    output_key = "memory_type_n"
    state_lookup: torch.Tensor
    type_lookup: torch.Tensor

    def __init__(
        self,
        state_key: str | None,
        state_lookup: torch.Tensor,
        type_key: str | None,
        type_lookup: torch.Tensor,
    ) -> None:
        super().__init__()
        self.state_key, self.type_key = state_key, type_key
        self.register_buffer("state_lookup", state_lookup.to(torch.int64).clone())
        self.register_buffer("type_lookup", type_lookup.to(torch.int64).clone())

    @property
    def output_keys(self) -> tuple[str, ...]:
        return ("memory_state_n", "memory_type_n")

    @staticmethod
    def _groups(batch: Mapping[str, torch.Tensor], key: str | None, lookup: torch.Tensor) -> Any:
        cells = batch["cell_index_n"]
        if key is None:
            return torch.zeros_like(cells)
        codes = batch[key].long()
        return torch.where(codes >= 0, lookup[codes.clamp_min(0)], lookup[-1])

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {
            "memory_state_n": self._groups(batch, self.state_key, self.state_lookup),
            "memory_type_n": self._groups(batch, self.type_key, self.type_lookup),
        }


class MovingZScore(FittableTransform):
    r"""Gene-wise z-score with statistics per cell state that move with training.

    Fitted on the train split: each state's mean :math:`m_{sg}` and second moment
    :math:`q_{sg}` of the values reaching the gene-wise slot (the log-normalized ``x_ng``; exact
    float64 sums). The running copies start there; after each TRAINING batch the component
    calls :meth:`update` with the batch's per-state sums (all-reduced over DDP ranks):
    :math:`m \leftarrow r\, m + (1 - r)\, \bar x_{\text{batch}}`, likewise :math:`q`, for each
    state present (``r``: ``decay_rate``, the weight of the past). The scale is
    :math:`\sqrt{q - m^2}` (zero or undefined: 1, as ``scanpy.pp.scale``). A state without train
    cells uses the statistics of all train cells. ``fitted_state`` holds the fitted statistics
    only; the running ones are the component's running state.
    """

    reads_counts = False
    reads_log_expression = True  # the moving statistics follow x_log_ng
    fitted_mean_sg: torch.Tensor
    fitted_square_sg: torch.Tensor
    mean_sg: torch.Tensor
    square_sg: torch.Tensor

    def __init__(
        self,
        n_genes: int,
        n_states: int,
        decay_rate: float,
        input_key: str = "x_ng",
        output_key: str = "x_ng",
    ) -> None:
        """``input_key`` / ``output_key``: ``x_ng`` in the gene-wise slot; beside another
        gene-wise owner, ``x_log_ng`` -> a key of its own (``x_memory_ng``)."""
        super().__init__()
        self.decay_rate = float(decay_rate)
        self.input_key = input_key
        self.output_key = output_key
        f64 = torch.float64
        for name in ("fitted_mean_sg", "fitted_square_sg", "mean_sg", "square_sg"):
            self.register_buffer(name, torch.zeros(n_states, n_genes, dtype=f64))

    def config(self) -> dict[str, Any]:
        return {"n_states": int(self.mean_sg.shape[0])}

    def fit_metric(self) -> RawMomentsMetric:
        n_states, n_genes = self.mean_sg.shape
        return RawMomentsMetric(n_genes, n_states, self.input_key, "memory_state_n")

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        n_states, n_genes = self.mean_sg.shape
        count_s = result["count_b"].reshape(n_states, 1)
        count = result["count"].clamp_min(1)
        has = count_s > 0
        mean_sg = result["sum_bg"].reshape(n_states, n_genes) / count_s.clamp_min(1)
        square_sg = result["sumsq_bg"].reshape(n_states, n_genes) / count_s.clamp_min(1)
        device = self.mean_sg.device
        self.fitted_mean_sg = torch.where(has, mean_sg, result["sum_g"] / count).to(device)
        self.fitted_square_sg = torch.where(has, square_sg, result["sumsq_g"] / count).to(device)
        self.reset_running()
        self.fitted = True

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {
            "fitted_mean_sg": self.fitted_mean_sg.detach().cpu().clone(),
            "fitted_square_sg": self.fitted_square_sg.detach().cpu().clone(),
        }

    def restore_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        for name in ("fitted_mean_sg", "fitted_square_sg"):
            if state[name].shape != self.mean_sg.shape:
                raise ValueError("MovingZScore: saved statistics do not fit this gene space")
        self.fitted_mean_sg = state["fitted_mean_sg"].to(self.mean_sg.device)
        self.fitted_square_sg = state["fitted_square_sg"].to(self.mean_sg.device)
        self.reset_running()
        self.fitted = True

    def reset_running(self) -> None:
        """Running statistics back to the fitted ones."""
        self.mean_sg = self.fitted_mean_sg.clone()
        self.square_sg = self.fitted_square_sg.clone()

    def update(
        self, count_s: torch.Tensor, sum_sg: torch.Tensor, square_sum_sg: torch.Tensor
    ) -> None:
        """One moving-average step from a batch's per-state counts and sums (every rank's)."""
        present = count_s > 0
        if not bool(present.any()):
            return
        n = count_s[present].to(torch.float64)[:, None]
        rate = self.decay_rate
        mean, square = self.mean_sg[present], self.square_sg[present]
        self.mean_sg[present] = rate * mean + (1 - rate) * sum_sg[present] / n
        self.square_sg[present] = rate * square + (1 - rate) * square_sum_sg[present] / n

    def scale_sg(self) -> torch.Tensor:
        variance = (self.square_sg - self.mean_sg**2).clamp_min(0)
        return scale_or_one(variance.sqrt())

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = F.densify(batch[self.input_key])
        state_n = batch["memory_state_n"]
        # per-state tables in x's dtype first (states x genes), then one row per cell
        inverse_sg = self.scale_sg().reciprocal().to(x_ng.dtype)
        shift_sg = self.mean_sg.to(x_ng.dtype) * inverse_sg
        return {self.output_key: x_ng * inverse_sg[state_n] - shift_sg[state_n]}

    def __repr__(self) -> str:
        return f"MovingZScore(states={self.mean_sg.shape[0]}, decay_rate={self.decay_rate})"


class MemoryEmbedding(FittableTransform):
    """``memory_embedding_nd``: the leading principal components of the normalized ``x_ng`` over
    ``genes_e`` (fitted on the train split from exact float64 sums and Gram matrix; signs: the
    largest loading positive), unit-normalized for cosine retrieval. Components beyond the
    data's rank leave zero columns (a warning).

    ``genes_e``: every gene when there are at most ``n_selected``, else the ``n_selected`` with
    the largest train variance of the log-normalized values (mean over states of
    ``variance_source``'s fitted statistics, chosen when the embedding is fitted)."""

    reads_counts = False
    output_key = "memory_embedding_nd"
    genes_e: torch.Tensor
    mean_e: torch.Tensor
    components_ed: torch.Tensor

    def __init__(
        self,
        n_genes: int,
        n_selected: int,
        dim: int,
        variance_source: MovingZScore,
        input_key: str = "x_ng",
    ) -> None:
        super().__init__()
        self.input_key = input_key
        self.dim = int(dim)
        self.n_genes = int(n_genes)
        self._source = [variance_source]  # a list: not a submodule (its buffers are its own)
        n = min(int(n_selected), self.n_genes)
        self.register_buffer("genes_e", torch.arange(n))
        self.register_buffer("mean_e", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("components_ed", torch.zeros(n, self.dim, dtype=torch.float64))

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "genes": int(self.genes_e.numel())}

    def fit_metric(self) -> GramMetric:
        if self.genes_e.numel() < self.n_genes:
            source = self._source[0]
            variance_g = (source.fitted_square_sg - source.fitted_mean_sg**2).mean(0)
            top = torch.topk(variance_g, int(self.genes_e.numel())).indices
            self.genes_e = torch.sort(top).values.to(self.genes_e.device)
        return GramMetric({self.input_key: self.genes_e})

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        pca = gram_components(result, self.dim, "memory embedding")
        found = pca.components_fk.shape[1]
        components = torch.zeros_like(self.components_ed)
        components[:, :found] = pca.components_fk
        self.mean_e = pca.mean_f.to(self.mean_e.device)
        self.components_ed = components.to(self.mean_e.device)
        self.fitted = True

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        x_ng = F.densify(batch[self.input_key])
        f32 = torch.float32
        embedded = (x_ng[:, self.genes_e].to(f32) - self.mean_e.to(f32)) @ self.components_ed.to(
            f32
        )
        return {"memory_embedding_nd": torch.nn.functional.normalize(embedded, dim=1)}

    def __repr__(self) -> str:
        return f"MemoryEmbedding(genes={self.genes_e.numel()}, dim={self.dim})"


class MemoryRetrieval(Transform):
    """The memory bank and each cell's nearest slots of its memory type.

    Holds ``bank_md`` (``types * size`` slots of unit embeddings), ``type_m``, ``age_m``
    (training batches since written), ``valid_m``, ``cell_m`` (cell index written there) and a
    write position per type; the component writes TRAINING batches in after the pipeline
    (:meth:`write`), so retrieval always sees the bank before the batch. Writes the bank keys
    (``memory_md``, ``memory_type_m``, ``memory_age_m``, ``memory_valid_m``,
    ``memory_weight_m`` = ``decay_rate ** age``) and, per cell, its ``k`` most cosine-similar
    valid slots of its type holding another cell: ``memory_neighbor_slot_nj``, ``memory_neighbor_cell_nj`` and
    ``memory_neighbor_similarity_nj`` (-1 / -1 / 0 where the bank holds fewer). One matrix
    product per memory type, no loop over cells.
    """

    reads_counts = False
    output_key = "memory_neighbor_similarity_nj"
    bank_md: torch.Tensor
    type_m: torch.Tensor
    age_m: torch.Tensor
    valid_m: torch.Tensor
    cell_m: torch.Tensor
    position_t: torch.Tensor

    def __init__(self, n_types: int, size: int, dim: int, k: int, decay_rate: float) -> None:
        super().__init__()
        self.n_types, self.size, self.k = int(n_types), int(size), int(k)
        self.decay_rate = float(decay_rate)
        slots = self.n_types * self.size
        self.register_buffer("bank_md", torch.zeros(slots, dim))
        self.register_buffer("type_m", torch.arange(self.n_types).repeat_interleave(self.size))
        self.register_buffer("age_m", torch.zeros(slots, dtype=torch.int64))
        self.register_buffer("valid_m", torch.zeros(slots, dtype=torch.bool))
        self.register_buffer("cell_m", torch.full((slots,), -1, dtype=torch.int64))
        self.register_buffer("position_t", torch.zeros(self.n_types, dtype=torch.int64))

    @property
    def output_keys(self) -> tuple[str, ...]:
        return (
            "memory_md",
            "memory_type_m",
            "memory_age_m",
            "memory_valid_m",
            "memory_weight_m",
            "memory_neighbor_slot_nj",
            "memory_neighbor_cell_nj",
            "memory_neighbor_similarity_nj",
        )

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        embedded = batch["memory_embedding_nd"]
        type_n = batch["memory_type_n"]
        cell_n = batch["cell_index_n"]
        n, k = embedded.shape[0], self.k
        slot_nj = torch.full((n, k), -1, dtype=torch.int64, device=embedded.device)
        similarity_nj = torch.zeros(n, k, device=embedded.device)
        for memory_type in torch.unique(type_n).tolist():
            rows = torch.nonzero(type_n == memory_type).flatten()
            begin = memory_type * self.size
            bank = self.bank_md[begin : begin + self.size]
            valid = self.valid_m[begin : begin + self.size]
            scores = embedded[rows] @ bank.T
            # a slot may hold this very cell from an earlier epoch: never retrieve it
            itself = self.cell_m[begin : begin + self.size] == cell_n[rows, None]
            scores = scores.masked_fill(~valid | itself, float("-inf"))
            take = min(k, self.size)
            best, where = torch.topk(scores, take, dim=1)
            found = torch.isfinite(best)
            slot_nj[rows, :take] = torch.where(found, where + begin, -1)
            similarity_nj[rows, :take] = torch.where(found, best, 0.0)
        cell_nj = torch.where(slot_nj >= 0, self.cell_m[slot_nj.clamp_min(0)], -1)
        return {
            "memory_md": self.bank_md,
            "memory_type_m": self.type_m,
            "memory_age_m": self.age_m,
            "memory_valid_m": self.valid_m,
            "memory_weight_m": torch.where(
                self.valid_m, self.decay_rate ** self.age_m.to(torch.float32), 0.0
            ),
            "memory_neighbor_slot_nj": slot_nj,
            "memory_neighbor_cell_nj": cell_nj,
            "memory_neighbor_similarity_nj": similarity_nj,
        }

    def write(self, embedded: torch.Tensor, type_n: torch.Tensor, cell_n: torch.Tensor) -> None:
        """Age every slot by one batch, then write the cells into their types' ring buffers
        in order (a type receiving more than ``size`` cells keeps its last ``size``)."""
        self.age_m += self.valid_m.to(torch.int64)
        for memory_type in torch.unique(type_n).tolist():
            rows = torch.nonzero(type_n == memory_type).flatten()[-self.size :]
            start = int(self.position_t[memory_type])
            offsets = (start + torch.arange(len(rows), device=rows.device)) % self.size
            slots = memory_type * self.size + offsets
            self.bank_md[slots] = embedded[rows].to(self.bank_md.dtype)
            self.age_m[slots] = 0
            self.valid_m[slots] = True
            self.cell_m[slots] = cell_n[rows]
            self.position_t[memory_type] = (start + len(rows)) % self.size

    def running_state(self) -> dict[str, torch.Tensor]:
        return {name: buffer.detach().cpu().clone() for name, buffer in self.named_buffers()}

    def load_running_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, buffer in self.named_buffers():
            buffer.copy_(state[name])

    def __repr__(self) -> str:
        return f"MemoryRetrieval(types={self.n_types}, size={self.size}, k={self.k})"
