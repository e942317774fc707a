"""A real client: scvi-tools' VAE trained through ``trainer.fit(..., datamodule=...)``.

The test runs the example ``notebooks/scvi_tools_vae.py`` itself. scvi-tools is an optional
dependency (``pip install -e ".[scvi]"``, docs/clients.md); where it is not installed (CI installs
only ``.[dev]``) its tests are skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.helpers import REPO_ROOT

EXAMPLE = REPO_ROOT / "notebooks" / "scvi_tools_vae.py"
STEPS = 40
WINDOW = 5  # steps averaged at each end of the run


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """The example script, imported from its path (notebooks/ is not a package); skips the
    test (collected, so running this file alone exits 0) where scvi-tools is not installed."""
    pytest.importorskip(
        "scvi", reason="scvi-tools is optional: pip install -e '.[scvi]' (docs/clients.md)"
    )
    spec = importlib.util.spec_from_file_location("scvi_tools_vae", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_scvi_tensors_are_float_counts_and_a_batch_column(example: ModuleType, layout: str) -> None:
    keys = example.REGISTRY_KEYS
    counts = torch.tensor([[0, 3, 1], [2, 0, 7]], dtype=torch.int32)
    batch = {
        "counts_ng": counts if layout == "dense" else counts.to_sparse_csr(),
        "batch_n": torch.tensor([1, 0]),
        "x_ng": torch.zeros(2, 3),
    }
    tensors = example.scvi_tensors(batch)
    assert set(tensors) == {keys.X_KEY, keys.BATCH_KEY, keys.LABELS_KEY}
    torch.testing.assert_close(tensors[keys.X_KEY], counts.float())
    torch.testing.assert_close(tensors[keys.BATCH_KEY], torch.tensor([[1], [0]]))
    assert tensors[keys.LABELS_KEY].shape == (2, 1)
    assert not tensors[keys.LABELS_KEY].any()


def test_vae_loss_falls_on_the_bundled_counts(example: ModuleType, tmp_path: Path) -> None:
    model = example.train(max_steps=STEPS, seed=0, accelerator="cpu", root_dir=tmp_path)
    losses = np.asarray(model.step_losses)
    assert len(losses) == STEPS and np.isfinite(losses).all()
    assert model.module.n_input == 300 and model.module.n_batch == 3  # HVGs; G1, G2M, S
    first, last = losses[:WINDOW].mean(), losses[-WINDOW:].mean()
    # seeds 0-4 end at 0.69-0.74 of the first steps' loss
    assert last < 0.85 * first, f"loss did not fall: {first:.1f} -> {last:.1f}"
    assert np.isfinite(float(model.trainer.callback_metrics["val_loss"]))
