"""The fitting driver leaves counts sparse for steps that never read them, and only then."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torchmetrics import Metric

from enhanced_dm.data import CellStore
from enhanced_dm.fitting import fit_pipeline
from enhanced_dm.transforms import Densify, Log1p, NormalizeTotal
from enhanced_dm.transforms.base import Batch, FittableTransform, Pipeline
from tests.helpers import shared_data


class LayoutSeen(Metric):
    """Records the layout of ``counts_ng`` in every batch it is updated with."""

    def __init__(self) -> None:
        super().__init__()
        self.layouts: list[torch.layout] = []
        self.add_state("batches", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        self.layouts.append(batch["counts_ng"].layout)
        self.batches += 1

    def compute(self) -> dict[str, torch.Tensor]:
        return {"batches": self.batches}


class LayoutProbe(FittableTransform):
    def __init__(self, reads_counts: bool) -> None:
        super().__init__()
        self.reads_counts = reads_counts
        self.metric = LayoutSeen()

    def fit_metric(self) -> LayoutSeen:
        return self.metric

    def load_fitted(self, result: Mapping[str, torch.Tensor]) -> None:
        self.fitted = True

    def forward(self, batch: Mapping[str, torch.Tensor], context: object = None) -> Batch:
        return {}


@pytest.mark.parametrize("reads_counts", [False, True])
def test_counts_stay_sparse_while_fitting_steps_that_do_not_read_them(reads_counts: bool) -> None:
    store = CellStore(shared_data("singlecell/pbmc68k_reduced_counts.h5ad"))
    probe = LayoutProbe(reads_counts)
    densify = Densify()
    pipeline = Pipeline(
        [
            ("densify", densify),
            ("normalize_total", NormalizeTotal()),
            ("log1p", Log1p()),
            ("probe", probe),
        ]
    )
    batches = [store.read(rows) for rows in np.array_split(np.arange(store.n_obs), 4)]
    fit_pipeline(pipeline, lambda: batches, progress=False)
    expected = torch.strided if reads_counts else torch.sparse_csr
    assert probe.metric.layouts == [expected] * 4
    assert densify.dense_counts  # the live pipeline is never changed by a fitting pass
    assert pipeline(batches[0])["counts_ng"].layout == torch.strided
