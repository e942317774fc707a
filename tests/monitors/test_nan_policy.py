"""Runtime guard: NaN/inf produced by any transform is counted; nan_policy raise / warn / ignore."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from enhanced_dm import BaseEnhancedDataModule
from enhanced_dm.components.base import Component, Slot
from enhanced_dm.errors import ConfigError, NonFiniteOutputError
from enhanced_dm.monitors import PipelineMonitor
from enhanced_dm.transforms.base import Batch, Pipeline, Transform
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


class DivideByGeneZero(Transform):
    """Divides every gene by 0 where ``bad_genes`` says so: inf for expressed values, NaN for 0."""

    def __init__(self, n_bad_genes: int = 2, key: str = "x_ng") -> None:
        super().__init__()
        self.n_bad_genes = n_bad_genes
        self.key = key

    def forward(self, batch: Mapping[str, torch.Tensor], context: object = None) -> Batch:
        x_ng = batch["x_ng"]
        divisor_g = torch.ones(x_ng.shape[1], device=x_ng.device)
        divisor_g[: self.n_bad_genes] = 0
        return {self.key: x_ng / divisor_g}


class Double(Transform):
    """A well-behaved step after the faulty one: it passes NaN on, but must not be blamed."""

    def forward(self, batch: Mapping[str, torch.Tensor], context: object = None) -> Batch:
        return {"x_ng": batch["x_ng"] * 2}


class FaultyComponent(Component):
    """Appends the faulty transform (and an innocent one after it) to the base pipeline."""

    name = "faulty"

    def __init__(self, key: str = "x_ng") -> None:
        self.key = key

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        return [
            ("divide_by_zero", DivideByGeneZero(key=self.key), "after_gene_wise"),
            ("double", Double(), "after_gene_wise"),
        ]


def make_dm(nan_policy: str, key: str = "x_ng") -> BaseEnhancedDataModule:
    dm = BaseEnhancedDataModule(
        data=str(shared_data(PBMC)),
        components=[FaultyComponent(key)],
        nan_policy=nan_policy,
        batch_size=100,
        val_fraction=0.0,
        progress=False,
    )
    dm.setup("fit")
    return dm


def first_batch(dm: BaseEnhancedDataModule) -> dict[str, torch.Tensor]:
    return next(iter(dm.predict_dataloader()))


def test_raise_fails_naming_the_transform() -> None:
    dm = make_dm("raise")
    with pytest.raises(
        NonFiniteOutputError, match="transform 'divide_by_zero' produced NaN or inf"
    ):
        dm.normalize(first_batch(dm))


def test_warn_warns_continues_and_counts() -> None:
    dm = make_dm("warn")
    with pytest.warns(
        UserWarning, match="transform 'divide_by_zero' produced NaN or inf values in 'x_ng'"
    ):
        out = dm.normalize(first_batch(dm))
    assert out["x_ng"].shape == (100, dm.n_genes)
    stats = dm.get_normalization_stats()
    assert stats["divide_by_zero"]["nonfinite_count"] == 200  # 100 cells x 2 genes
    assert stats["z_score"]["nonfinite_count"] == 0
    assert np.isfinite(out["x_ng"][:, 2:].numpy()).all()


def test_ignore_stays_silent_but_still_counts() -> None:
    dm = make_dm("ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.normalize(first_batch(dm))
    assert dm.get_normalization_stats()["divide_by_zero"]["nonfinite_count"] == 200


def test_non_finite_values_in_any_written_key_are_caught() -> None:
    """A transform whose NaN lands in a key other than its watched output is still named."""
    dm = make_dm("raise", key="score_ng")
    with pytest.raises(
        NonFiniteOutputError, match="'divide_by_zero' produced NaN or inf values in 'score_ng'"
    ):
        dm.normalize(first_batch(dm))


def test_monitor_rejects_an_unknown_policy() -> None:
    with pytest.raises(ConfigError, match="nan_policy must be 'raise', 'warn' or 'ignore'"):
        PipelineMonitor(Pipeline([("double", Double())]), "skip")  # type: ignore[arg-type]
