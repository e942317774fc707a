r"""A seeded uniform subsample of the train cells, chosen by cell index, kept in bounded memory.

Rank statistics (median, MAD, quantiles) are not sums, so they cannot be merged exactly from
per-batch summaries. They are computed EXACTLY on a uniform subsample of at most ``max_cells``
train cells: every cell gets a pseudo-random priority ``splitmix64(seed, cell_index)`` and the
subsample is the ``max_cells`` cells of smallest priority (bottom-k sampling). The choice depends
only on the seed and the set of train cell indices, never on batch order, batch size, workers or
the number of DDP ranks; with at most ``max_cells`` train cells it is all of them.

Error bound above ``max_cells`` (Dvoretzky-Kiefer-Wolfowitz, Massart's constant): the empirical
distribution :math:`\hat F` of a uniform subsample of :math:`m` cells satisfies, for each gene,

.. math:: P\left(\sup_x |\hat F(x) - F(x)| > \varepsilon\right) \le 2 e^{-2 m \varepsilon^2},
          \qquad \varepsilon(m, \alpha) = \sqrt{\ln(2/\alpha) / (2m)}

where :math:`F` is the distribution over all train cells. Sampling without replacement from the
finite train set only tightens it (Hoeffding 1963, Serfling 1974). So a fitted :math:`r`-quantile
(and the median, :math:`r = 1/2`) has a train-set rank within :math:`r \pm (\varepsilon + 1/m)`
with probability :math:`1 - \alpha` per gene: :math:`m = 10^5` gives :math:`\varepsilon = 0.0061`
at :math:`\alpha = 10^{-3}`. :func:`dkw_epsilon` computes it. Per group the subsample is the
group's share of the same cells, so :math:`m` is that group's count in it; a group with no cell in
the subsample (possible only above ``max_cells``) is left unfitted and falls back to the global
statistics. The fitting pass must present every train cell once (as the fitting driver does):
a repeated cell index would be kept twice.

Memory: the kept rows are stored sparse (CSR without row pointers): 4 bytes of value and 4 of
gene index per stored value, plus 8 bytes of row length, 8 of priority and 8 of group code per kept
row. For log-normalized counts that is ``8 x max_cells x nnz per cell`` (100,000 cells of 200
detected genes: 160 MB), at most twice the dense ``max_cells x n_genes`` float32 for fully dense
rows. Rows leaving the subsample are only marked; once more than ``max_cells / 4`` are marked they
are dropped block by block, so the store holds at most ``1.25 x max_cells`` rows and dropping
copies one block (about ``max_cells / 8`` rows) at a time. A batch adds a block of only the rows it
keeps (a dense batch is made sparse row by row); nothing of batch or subsample size is densified.
Statistics are computed on one dense gene chunk of the kept rows at a time (about 8 M values,
32 MB: :meth:`CellSubsampleMetric.gene_chunks`). Under DDP each rank keeps its own bottom-k;
before the ``cat`` gather every rank copies the cells that can be in the global bottom-k into one
block, so the gathered subsample has ``max_cells`` rows in all (not ``world_size`` times that);
the rank's own store is kept alongside for torchmetrics to restore after ``compute``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from enhanced_dm.seeding import shift_right, signed, splitmix64

__all__ = ["CellSubsampleMetric", "cell_priority", "dkw_epsilon", "sort_columns"]

_DEAD = torch.iinfo(torch.int64).max
_GENE_CHUNK_ELEMENTS = 1 << 23


def cell_priority(cell_index_n: torch.Tensor, seed: int) -> torch.Tensor:
    """Pseudo-random priority in ``[0, 2**62)`` of each cell, a function of (seed, cell index) only."""
    seed_mix = int(splitmix64(torch.tensor([signed(seed)], dtype=torch.int64))[0])
    return shift_right(splitmix64(cell_index_n.to(torch.int64) ^ seed_mix), 2)


def sort_columns(values_nc: torch.Tensor) -> torch.Tensor:
    """Each column sorted ascending (NaN last), on the tensor's device.

    On the CPU numpy's sort is used: ``torch.sort`` also builds the int64 permutation and is an
    order of magnitude slower there (measured: 343 x 30,727 float32, 1.6 s against 0.09 s).
    """
    if values_nc.device.type == "cpu":
        return torch.from_numpy(np.sort(values_nc.numpy(), axis=0))
    return torch.sort(values_nc, dim=0).values


def dkw_epsilon(n_cells: int, alpha: float = 1e-3) -> float:
    r"""DKW bound :math:`\sqrt{\ln(2/\alpha) / (2m)}` on :math:`\sup_x|\hat F - F|` for ``m`` cells."""
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * max(n_cells, 1)))


class CellSubsampleMetric(Metric):
    """Keeps ``batch[key]`` rows (and group codes) of the ``max_cells`` train cells of lowest priority.

    Subclasses implement :meth:`summarize` over the kept rows; :meth:`gene_chunks` reads them one
    dense gene chunk at a time. ``batch[key]`` may be dense or sparse CSR; rows are stored sparse
    (see the module's "Memory"). Cells are identified by ``batch[index_key]`` (the global
    ``cell_index_n``), which must be unique across ranks. States are concatenated across ranks
    (``dist_reduce_fx="cat"``); :meth:`compute` keeps the global bottom ``max_cells`` of whatever
    it holds, so the result is identical on any number of ranks.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False
    # Axes: ``s`` stored values, ``k`` stored rows. Lists while updating (values, genes and row
    # lengths one tensor per block; priorities and group codes one tensor, in the blocks' row
    # order); torchmetrics turns each into one tensor after a DDP gather (one block), and
    # ``merge_state`` concatenates the lists. The readers below accept every form.
    values_s: list[torch.Tensor]
    genes_s: list[torch.Tensor]
    lengths_k: list[torch.Tensor]
    priority_k: list[torch.Tensor]
    group_k: list[torch.Tensor]

    def __init__(
        self,
        n_features: int,
        max_cells: int = 100_000,
        seed: int = 0,
        key: str = "x_ng",
        group_key: str | None = None,
        n_groups: int = 0,
        index_key: str = "cell_index_n",
    ) -> None:
        super().__init__()
        if max_cells < 1:
            raise ValueError(f"stats_max_cells must be at least 1, got {max_cells}")
        self.n_features = n_features
        self.max_cells = int(max_cells)
        self.seed = int(seed)
        self.key = key
        self.group_key = group_key
        self.n_groups = n_groups if group_key is not None else 0
        self.index_key = index_key
        self.add_state("values_s", [], dist_reduce_fx="cat")
        self.add_state("genes_s", [], dist_reduce_fx="cat")
        self.add_state("lengths_k", [], dist_reduce_fx="cat")
        self.add_state("priority_k", [], dist_reduce_fx="cat")
        self.add_state("group_k", [], dist_reduce_fx="cat")

    # ------------------------------------------------------------------------------ update
    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        if self.index_key not in batch:
            raise KeyError(
                f"{type(self).__name__} chooses its subsample by cell index: the batch needs "
                f"{self.index_key!r}"
            )
        priority_b = cell_priority(batch[self.index_key].reshape(-1), self.seed)
        if self.group_key is not None and self.n_groups > 0:
            group_b = batch[self.group_key].reshape(-1).to(torch.int64)
        else:
            group_b = torch.full_like(priority_b, -1)
        priority_k, group_k = self._priorities(), self._groups()
        stored = priority_k.shape[0]

        combined = torch.cat([priority_k, priority_b])
        live = combined != _DEAD
        if int(live.sum()) <= self.max_cells:
            keep = live
        else:
            threshold = torch.kthvalue(combined, self.max_cells).values
            keep = combined <= threshold
        priority_k = torch.where(keep[:stored], priority_k, _DEAD)
        incoming = torch.nonzero(keep[stored:]).flatten()
        if incoming.numel():
            values_s, genes_s, lengths_k = _sparse_rows(batch[self.key], incoming)
            self._append_block(values_s, genes_s, lengths_k)
            self._merge_tail()
            priority_k = torch.cat([priority_k, priority_b[incoming]])
            group_k = torch.cat([group_k, group_b[incoming]])
        self.priority_k, self.group_k = [priority_k], [group_k]
        if int((priority_k == _DEAD).sum()) > self.max_cells // 4:
            self._drop_dead()

    def _append_block(
        self, values_s: torch.Tensor, genes_s: torch.Tensor, lengths_k: torch.Tensor
    ) -> None:
        """Add a block of rows (after those stored), turning gathered tensor states into lists."""
        self.values_s = [*self._state_list(self.values_s), values_s]
        self.genes_s = [*self._state_list(self.genes_s), genes_s]
        self.lengths_k = [*self._state_list(self.lengths_k), lengths_k]

    def _merge_tail(self) -> None:
        """Merge the last two blocks while the last is at least as long as the one before and
        both fit in ``max_cells / 8`` rows (a binary counter): few blocks, few copies per row."""
        target_rows = max(1, self.max_cells // 8)
        values, genes, lengths = (
            self._state_list(state) for state in (self.values_s, self.genes_s, self.lengths_k)
        )
        while (
            len(lengths) >= 2
            and lengths[-2].shape[0] <= lengths[-1].shape[0]
            and lengths[-2].shape[0] + lengths[-1].shape[0] <= target_rows
        ):
            for parts in (values, genes, lengths):
                parts[-2:] = [torch.cat(parts[-2:])]
        self.values_s, self.genes_s, self.lengths_k = values, genes, lengths

    @staticmethod
    def _state_list(state: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        return [state] if isinstance(state, torch.Tensor) else list(state)

    def _drop_dead(self) -> None:
        """Remove the rows that left the subsample, merging consecutive blocks up to about
        ``max_cells / 8`` rows; old blocks are released one by one, so no second full copy."""
        alive_k = self._priorities() != _DEAD
        target_rows = max(1, self.max_cells // 8)
        old = list(self._block_rows())
        self.values_s, self.genes_s, self.lengths_k = [], [], []
        old.reverse()  # pop() from the end releases the blocks in storage order
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        while old:
            block, start, stop = old.pop()
            pending.append(_select_rows(*block, alive_k[start:stop]))
            del block
            if not old or sum(piece[2].shape[0] for piece in pending) >= target_rows:
                if len(pending) == 1:
                    self._append_block(*pending[0])
                else:
                    values_s, genes_s, lengths_k = (
                        torch.cat(parts) for parts in zip(*pending, strict=True)
                    )
                    self._append_block(values_s, genes_s, lengths_k)
                pending.clear()
        self.priority_k = [self._priorities()[alive_k]]
        self.group_k = [self._groups()[alive_k]]

    # ------------------------------------------------------------------------- DDP gather
    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        """Drop the cells that cannot be in the global bottom-k, then gather (``cat``) the rest."""
        local = self._priorities()
        gathered = dist_sync_fn(local, group=process_group or self.process_group)
        everything = dim_zero_cat(list(gathered))
        everything = everything[everything != _DEAD]
        if everything.numel() > self.max_cells:
            threshold = torch.kthvalue(everything, self.max_cells).values
            self._compact(local <= threshold)
        else:
            self._compact(local != _DEAD)
        super()._sync_dist(dist_sync_fn, process_group)

    def _copy_state_dict(self) -> dict[str, Any]:
        """References, not clones, of the states torchmetrics restores after a synchronized compute.

        torchmetrics clones every state before gathering, which would hold a second copy of the
        subsample. Safe here: synchronization replaces the state attributes and never writes
        into the kept tensors.
        """
        return {
            name: value if isinstance(value, torch.Tensor) else list(value)
            for name, value in ((name, getattr(self, name)) for name in self._defaults)
        }

    def _compact(self, keep_k: torch.Tensor) -> None:
        """Keep only the rows where ``keep_k`` holds, as one block (possibly empty, but typed, so
        that every rank gathers tensors of the same dtypes), so the gather sends no more."""
        pieces = [
            _select_rows(values_s, genes_s, lengths_k, keep_k[start:stop])
            for (values_s, genes_s, lengths_k), start, stop in self._block_rows()
        ]
        empty = (
            torch.zeros(0, dtype=torch.float32, device=self.device),
            torch.zeros(0, dtype=torch.int32, device=self.device),
            torch.zeros(0, dtype=torch.int64, device=self.device),
        )
        values_s, genes_s, lengths_k = (
            torch.cat(parts) for parts in zip(empty, *pieces, strict=True)
        )
        self.values_s, self.genes_s, self.lengths_k = [values_s], [genes_s], [lengths_k]
        self.priority_k = [self._priorities()[keep_k]]
        self.group_k = [self._groups()[keep_k]]

    # ----------------------------------------------------------------------------- reading
    def _priorities(self) -> torch.Tensor:
        return self._row_state(self.priority_k)

    def _groups(self) -> torch.Tensor:
        return self._row_state(self.group_k)

    def _row_state(self, state: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """One int64 tensor of a per-row state (lists are concatenated)."""
        if isinstance(state, torch.Tensor):
            return state
        if not state:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        return dim_zero_cat(state)

    def _blocks(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(values_s, genes_s, crow_k)`` of each stored block: its stored values, their gene
        indices and the CSR row pointers (rows in storage order)."""
        blocks = []
        for values_s, genes_s, lengths_k in zip(
            self._state_list(self.values_s),
            self._state_list(self.genes_s),
            self._state_list(self.lengths_k),
            strict=True,
        ):
            crow_k = torch.zeros(lengths_k.shape[0] + 1, dtype=torch.int64, device=lengths_k.device)
            torch.cumsum(lengths_k, 0, out=crow_k[1:])
            blocks.append((values_s, genes_s, crow_k))
        return blocks

    def _block_rows(
        self,
    ) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], int, int]]:
        """``((values_s, genes_s, lengths_k), start, stop)``: each block and its rows' range."""
        start = 0
        for block in zip(
            self._state_list(self.values_s),
            self._state_list(self.genes_s),
            self._state_list(self.lengths_k),
            strict=True,
        ):
            stop = start + block[2].shape[0]
            yield block, start, stop
            start = stop

    def stored_rows(self) -> int:
        """Rows held, in the subsample or waiting to be dropped (at most ``1.25 x max_cells``)."""
        return int(self._priorities().shape[0])

    def subsample_mask(self) -> torch.Tensor:
        """Which stored rows are in the (global) bottom ``max_cells``."""
        priority_k = self._priorities()
        live = priority_k != _DEAD
        if int(live.sum()) <= self.max_cells:
            return live
        return priority_k <= torch.kthvalue(priority_k, self.max_cells).values

    def gene_chunks(self, keep_k: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(genes, values_nc)``: consecutive gene chunks of the rows selected by ``keep_k``, dense.

        Chunks hold about 8 M values (32 MB), so summaries that sort never hold the whole matrix;
        each is scattered from the stored values of its genes (rows in storage order).
        """
        n_rows = int(keep_k.sum())
        width = max(1, _GENE_CHUNK_ELEMENTS // max(n_rows, 1))
        blocks = []  # (values_s, genes_s, crow_k, output row of each block row or -1)
        offset = 0
        for (values_s, genes_s, crow_k), (_, start, stop) in zip(
            self._blocks(), self._block_rows(), strict=True
        ):
            selected_k = keep_k[start:stop]
            out_row_k = torch.where(selected_k, torch.cumsum(selected_k, 0) - 1 + offset, -1)
            offset += int(selected_k.sum())
            blocks.append((values_s, genes_s, crow_k, out_row_k))
        for first in range(0, self.n_features, width):
            last = min(first + width, self.n_features)
            values_nc = torch.zeros(n_rows, last - first, dtype=torch.float32, device=self.device)
            for values_s, genes_s, crow_k, out_row_k in blocks:
                positions = torch.nonzero((genes_s >= first) & (genes_s < last)).flatten()
                out_rows = out_row_k[torch.searchsorted(crow_k, positions, right=True) - 1]
                selected = out_rows >= 0
                positions = positions[selected]
                values_nc.index_put_(
                    (out_rows[selected], genes_s[positions].to(torch.int64) - first),
                    values_s[positions],
                )
            yield slice(first, last), values_nc

    def sorted_chunks(self, keep_k: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(genes, sorted_nc)``: each gene chunk of the selected rows, sorted down the cells."""
        for genes, values_nc in self.gene_chunks(keep_k):
            yield genes, sort_columns(values_nc)

    # ----------------------------------------------------------------------------- compute
    def compute(self) -> dict[str, torch.Tensor]:
        keep_k = self.subsample_mask()
        group_k = self._groups()
        result = self.summarize(keep_k, None)
        result["subsample_cells"] = keep_k.sum().to(torch.float64)
        if self.n_groups == 0:
            return result
        per_group = [self.summarize(keep_k & (group_k == b), b) for b in range(self.n_groups)]
        for name in per_group[0] if per_group else ():
            base, axes = name.rsplit("_", 1)  # center_g -> center_bg, quantiles_gq -> quantiles_bgq
            result[f"{base}_b{axes}"] = torch.stack([summary[name] for summary in per_group])
        result["subsample_cells_b"] = torch.stack(
            [(keep_k & (group_k == b)).sum().to(torch.float64) for b in range(self.n_groups)]
        )
        return result

    def summarize(self, keep_k: torch.Tensor, group: int | None) -> dict[str, torch.Tensor]:
        """Statistics of the rows selected by ``keep_k`` (one group's, or all when ``group`` is
        None); names end in their axes (``_g``, ``_gq``), the per-group stack gains a ``b``."""
        raise NotImplementedError  # pragma: no cover


def _sparse_rows(
    x_ng: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values_s float32, genes_s int32, lengths_k int64)`` of ``x_ng[rows]``, dense or CSR.

    Dense rows keep every value whose bits are not all zero (so ``-0.0`` and NaN are kept, and
    densifying gives back exactly the float32 rows); CSR rows keep their stored values.
    """
    if x_ng.layout == torch.strided:
        rows_ng = x_ng[rows].to(torch.float32)
        stored_ng = rows_ng.view(torch.int32) != 0
        return (
            rows_ng[stored_ng],
            torch.nonzero(stored_ng)[:, 1].to(torch.int32),
            stored_ng.sum(dim=1),
        )
    if x_ng.layout != torch.sparse_csr:
        x_ng = x_ng.to_sparse_csr()
    crow_n = x_ng.crow_indices().to(torch.int64)
    lengths_n = crow_n[1:] - crow_n[:-1]
    chosen_n = torch.zeros(lengths_n.shape[0], dtype=torch.bool, device=x_ng.device)
    chosen_n[rows] = True
    values_s, genes_s, lengths_k = _select_rows(
        x_ng.values(), x_ng.col_indices(), lengths_n, chosen_n
    )
    return values_s.to(torch.float32), genes_s.to(torch.int32), lengths_k


def _select_rows(
    values_s: torch.Tensor, genes_s: torch.Tensor, lengths_k: torch.Tensor, keep_k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of a CSR block (values, gene indices, row lengths) where ``keep_k`` holds."""
    if bool(keep_k.all()):
        return values_s, genes_s, lengths_k
    keep_s = torch.repeat_interleave(keep_k, lengths_k)
    return values_s[keep_s], genes_s[keep_s], lengths_k[keep_k]
