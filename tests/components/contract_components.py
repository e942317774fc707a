"""Small components that exercise one hook each of the component contract (tests only).

* :class:`CountThinningComponent`: the counts slot and the step context's generator (binomial
  thinning of the stored counts, train stage only).
* :class:`RunningMeanComponent`: running state (an exponential moving average of the normalized
  expression, summed over DDP ranks) and a step that reads it.
* :class:`ConsecutiveSequenceComponent`: the batch-sampler hook (items are sequences of
  consecutive cells, padded with -1).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from enhanced_dm.components.base import Component, Slot
from enhanced_dm.components.running import all_ranks_sum
from enhanced_dm.data.sampler import BlockShuffleSampler
from enhanced_dm.options import Option, in_interval
from enhanced_dm.transforms.base import Batch, Transform
from enhanced_dm.transforms.context import StepContext
from enhanced_dm.transforms.functional import map_stored_values


class BinomialThinning(Transform):
    """Keep each count with probability ``keep``: ``Binomial(c, keep)`` per stored value."""

    output_key = "counts_ng"
    reads_counts = False  # the CSR counts, before densify
    monitored = False

    def __init__(self, keep: float) -> None:
        super().__init__()
        self.keep = keep

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        if context is None or not context.training:
            return {}
        counts = batch["counts_ng"]
        values = counts.values()
        generator = context.generator(values.device, stream="count_thinning")
        probability = torch.full(values.shape, self.keep, device=values.device)
        thinned = torch.binomial(values.to(torch.float32), probability, generator=generator)
        return {"counts_ng": map_stored_values(counts, thinned.to(values.dtype))}


class CountThinningComponent(Component):
    name = "count_thinning"
    options = (Option("keep", 0.5, float, "Share of counts kept.", *in_interval(0, 1)),)

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        return [("thinning", BinomialThinning(self.keep), "counts")]


class CenterOnRunningMean(Transform):
    """``x_centered_ng = x_ng - running_mean_g`` (the mean the component keeps)."""

    output_key = "x_centered_ng"
    reads_counts = False
    running_mean_g: torch.Tensor

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        self.register_buffer("running_mean_g", torch.zeros(n_genes))

    def forward(
        self, batch: Mapping[str, torch.Tensor], context: StepContext | None = None
    ) -> Batch:
        return {"x_centered_ng": batch["x_ng"] - self.running_mean_g}


class RunningMeanComponent(Component):
    """EMA of each gene's mean normalized expression: ``new = decay * old + (1 - decay) * batch``
    where ``batch`` is the mean over the cells of the batch on ALL ranks."""

    name = "running_mean"
    has_running_state = True
    options = (Option("decay", 0.9, float, "Weight of the past.", *in_interval(0, 1)),)

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.step: CenterOnRunningMean | None = None
        self.updates = 0

    def setup(self, store: Any) -> None:
        self.step = CenterOnRunningMean(store.n_genes)

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        assert self.step is not None
        return [("center_running", self.step, "after_gene_wise")]

    def update_running(self, batch: Batch, context: StepContext) -> None:
        assert self.step is not None
        x_ng = batch["x_ng"].to(torch.float64)
        totals = all_ranks_sum(
            torch.cat([x_ng.sum(0), torch.tensor([x_ng.shape[0]], dtype=torch.float64)])
        )
        batch_mean_g = (totals[:-1] / totals[-1]).to(torch.float32)
        mean_g = self.step.running_mean_g
        mean_g.copy_(self.decay * mean_g + (1 - self.decay) * batch_mean_g)
        self.updates += 1

    def running_state(self) -> dict[str, Any]:
        assert self.step is not None
        return {"mean_g": self.step.running_mean_g.detach().cpu().clone(), "updates": self.updates}

    def load_running_state(self, state: Mapping[str, Any]) -> None:
        assert self.step is not None
        self.step.running_mean_g.copy_(state["mean_g"])
        self.updates = int(state["updates"])


class ConsecutiveSequences(DistributedSampler):
    """Sequences of ``length`` consecutive rows of a block-shuffle sampler's batches: an item is
    an ``(n, length)`` array, the last sequence padded with -1. Resume and sharding are the
    wrapped sampler's."""

    def __init__(self, sampler: BlockShuffleSampler, length: int) -> None:
        self.sampler = sampler
        self.length = length

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def start_batch(self) -> int:
        return self.sampler.start_batch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[np.ndarray]:  # type: ignore[override]
        for rows in self.sampler:
            rows = np.asarray(rows, dtype=np.int64)
            padded = np.full(-(-len(rows) // self.length) * self.length, -1, dtype=np.int64)
            padded[: len(rows)] = rows
            yield padded.reshape(-1, self.length)


class ConsecutiveSequenceComponent(Component):
    name = "sequences"
    options = (Option("sequence_length", 4, int, "Cells per sequence."),)

    def batch_sampler(
        self,
        indices: np.ndarray,
        *,
        shuffle: bool,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
    ) -> ConsecutiveSequences:
        cells = BlockShuffleSampler(
            indices,
            batch_size * self.sequence_length,
            block_size=self.sequence_length,
            shuffle_buffer=4,
            shuffle=shuffle,
            seed=seed,
            num_replicas=world_size,
            rank=rank,
            even_batches=shuffle,
        )
        return ConsecutiveSequences(cells, self.sequence_length)
