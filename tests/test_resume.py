"""Exact resume: a run resumed from any checkpoint sees exactly the batches of an uninterrupted run.

One process here (DDP resume is in ``tests/test_ddp.py``). The uninterrupted reference run saves
a checkpoint every ``STEP`` training steps and one at each validation end; resuming from each of
them must reproduce the reference's remaining ``(epoch, batch_idx, cell_index_n)`` records. With
DataLoader workers the sampler runs ahead of training (prefetching), which is what makes the
position recorded in the checkpoint non-trivial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from enhanced_dm import BaseEnhancedDataModule, ConfigError
from tests.helpers import shared_data

pytestmark = pytest.mark.slow  # about twenty short Trainer runs

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
STEP = 5  # 309 train cells / 32 = 10 batches per epoch: checkpoints mid-epoch and at its end
EPOCHS = 2

Record = tuple[int, int, list[int]]


class RecordingModule(L.LightningModule):
    """Records which cells each training step saw; the smallest model DDP accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.records: list[Record] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.records.append((self.current_epoch, batch_idx, batch["cell_index_n"].tolist()))
        return self.layer(batch["x_ng"].mean(1, keepdim=True)).pow(2).mean()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_mean", batch["x_ng"].mean(), batch_size=len(batch["cell_index_n"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class SimulatedCrash(RuntimeError):
    """What a killed process leaves: the run stops between two steps."""


class CrashAfter(L.Callback):
    """Raises at the end of training step ``step`` (after the checkpoint callbacks ran)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise SimulatedCrash(f"crashed after step {self.step}")


def make_dm(tmp_path: Path, num_workers: int, **options: Any) -> BaseEnhancedDataModule:
    defaults: dict[str, Any] = dict(
        data=shared_data(WU2020),
        val_fraction=0.1,
        batch_size=32,
        block_size=8,
        shuffle_buffer=4,
        seed=3,
        num_workers=num_workers,
        stats_cache_dir=tmp_path / "stats",
        progress=False,
    )
    return BaseEnhancedDataModule(**{**defaults, **options})


def make_trainer(tmp_path: Path, callbacks: list[L.Callback], **options: Any) -> L.Trainer:
    return L.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": EPOCHS,
            "callbacks": callbacks,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": tmp_path,
            **options,
        }
    )


def fit(tmp_path: Path, num_workers: int, ckpt_path: Path | None = None) -> list[Record]:
    model = RecordingModule()
    trainer = make_trainer(tmp_path, [], enable_checkpointing=False)
    trainer.fit(model, datamodule=make_dm(tmp_path, num_workers), ckpt_path=ckpt_path)
    return model.records


@pytest.fixture(scope="module", params=[0, 2], ids=["no_workers", "two_workers"])
def reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The uninterrupted run: its records and its checkpoints by global step."""
    num_workers = request.param
    tmp_path = tmp_path_factory.mktemp(f"reference_{num_workers}")
    every_steps = ModelCheckpoint(
        dirpath=tmp_path / "steps", filename="{step}", every_n_train_steps=STEP, save_top_k=-1
    )
    at_validation = ModelCheckpoint(dirpath=tmp_path / "val", filename="{epoch}", save_top_k=-1)
    model = RecordingModule()
    trainer = make_trainer(tmp_path, [every_steps, at_validation])
    trainer.fit(model, datamodule=make_dm(tmp_path, num_workers))
    return num_workers, tmp_path, model.records


@pytest.mark.parametrize(
    "step", [STEP, 2 * STEP, 3 * STEP], ids=["mid_epoch", "epoch_end", "mid_2nd"]
)
def test_resume_from_a_step_checkpoint_continues_with_the_same_batches(
    reference: Any, step: int
) -> None:
    num_workers, tmp_path, records = reference
    assert len(records) == EPOCHS * 2 * STEP
    resumed = fit(
        tmp_path / f"resume_{step}", num_workers, tmp_path / "steps" / f"step={step}.ckpt"
    )
    assert resumed == records[step:]


def test_resume_from_a_validation_end_checkpoint_starts_the_next_epoch(reference: Any) -> None:
    num_workers, tmp_path, records = reference
    resumed = fit(tmp_path / "resume_val", num_workers, tmp_path / "val" / "epoch=0.ckpt")
    assert resumed == records[2 * STEP :]


def test_killed_run_resumes_exactly(reference: Any, tmp_path: Path) -> None:
    """A crash two steps after a checkpoint: the sampler had already run ahead of it."""
    num_workers, _, records = reference
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "steps", filename="{step}", every_n_train_steps=STEP, save_top_k=-1
    )
    model = RecordingModule()
    trainer = make_trainer(tmp_path, [checkpoints, CrashAfter(STEP + 2)])
    with pytest.raises(SimulatedCrash):
        trainer.fit(model, datamodule=make_dm(tmp_path, num_workers))
    assert model.records == records[: STEP + 2]
    resumed = fit(tmp_path, num_workers, tmp_path / "steps" / f"step={STEP}.ckpt")
    assert resumed == records[STEP:]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"batch_size": 16}, "batch_size = 32, this run has 16"),
        ({"seed": 4}, "seed = 3, this run has 4"),
        ({"block_size": 16}, "block_size = 8, this run has 16"),
        ({"genes": ["CD3E", "CD8A"]}, "gene list differs"),
    ],
)
def test_incompatible_resume_fails_with_a_clear_message(
    reference: Any, option: dict[str, Any], message: str
) -> None:
    num_workers, tmp_path, _ = reference
    if num_workers:
        pytest.skip("the configuration check does not depend on workers")
    trainer = make_trainer(tmp_path / "incompatible", [])
    dm = make_dm(tmp_path / "incompatible", 0, **option)
    with pytest.raises(ConfigError, match=message):
        trainer.fit(RecordingModule(), datamodule=dm, ckpt_path=tmp_path / "steps" / "step=5.ckpt")


def test_a_state_from_another_world_size_is_refused(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, 0)
    dm.setup("fit")
    dm.train_dataloader()
    state = dm.state_dict()
    state["sampler"] = {**state["sampler"], "num_replicas": 2}
    with pytest.raises(ConfigError, match=r"world size \(number of DDP processes\) = 2"):
        make_dm(tmp_path, 0).load_state_dict(state)


def test_state_without_trainer_records_the_batches_handed_out(tmp_path: Path) -> None:
    """Plain use (no Lightning): the sampler's own count, exact with ``num_workers=0``."""
    dm = make_dm(tmp_path, 0)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    seen = [next(loader)["cell_index_n"].tolist() for _ in range(3)]
    state = dm.state_dict()
    assert (state["sampler"]["epoch"], state["sampler"]["start_batch"]) == (0, 3)
    rest = [batch["cell_index_n"].tolist() for batch in loader]
    again = make_dm(tmp_path, 0)
    again.load_state_dict(state)
    again.setup("fit")
    assert [batch["cell_index_n"].tolist() for batch in again.train_dataloader()] == rest
    assert len(seen) + len(rest) == len(dm.train_dataloader())
