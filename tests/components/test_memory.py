"""MemoryDataModule / MemoryComponent on the real PBMCs (state: the cell-cycle phase; memory
types: the cell types): moving statistics against a hand-computed reference, retrieval against
brute-force cosine top-k, the ring buffer, resume, and training through Lightning."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from enhanced_dm import BaseEnhancedDataModule, MemoryComponent, MemoryDataLoader, MemoryDataModule
from enhanced_dm.components.memory import frequent_groups
from tests.contract import assert_same, check_component
from tests.helpers import quiet_trainer, shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
OPTIONS: dict[str, Any] = dict(
    state_key="phase",
    cell_type_key="cell_type",
    memory_dim=16,
    memory_size=40,
    num_neighbors=5,
    batch_size=32,
    block_size=8,
    shuffle_buffer=2,
    val_fraction=0.2,
    progress=False,
    seed=2,
)


def fitted(**options: Any) -> MemoryDataModule:
    dm = MemoryDataModule(str(shared_data(PBMC)), **{**OPTIONS, **options})
    dm.setup("fit")
    return dm


def test_state_and_type_groups_keep_the_most_frequent() -> None:
    codes = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    lookup, names = frequent_groups(codes, ["a", "b", "c", "d"], 3, has_missing=False)
    assert names == ["a", "d", "other"] and lookup.tolist() == [0, 2, 2, 1, 2]
    lookup, names = frequent_groups(codes, ["a", "b", "c", "d"], 4, has_missing=True)
    assert names == ["a", "b", "c", "d", "other"] and lookup[-1] == 4
    dm = fitted()
    assert dm.get_memory_stats()["states"] == ["G1", "G2M", "S"]
    assert dm.get_memory_stats()["memory_types"][-1] == "other"


def test_moving_statistics_follow_a_hand_computed_reference_and_freeze_outside_training() -> None:
    dm = fitted()
    zscore = dm.memory.step("memory_zscore")
    mean = zscore.fitted_mean_sg.clone()
    square = zscore.fitted_square_sg.clone()
    for batch in dm.val_dataloader():
        dm.normalize(batch, stage="val")
    assert torch.equal(zscore.mean_sg, mean)
    rate = 0.9
    loader = iter(dm.train_dataloader())
    for _ in range(4):
        out = dm.normalize(next(loader), stage="train")
        x = out["x_log_ng"].double()
        state = out["memory_state_n"]
        for s in state.unique().tolist():
            rows = x[state == s]
            mean[s] = rate * mean[s] + (1 - rate) * rows.mean(0)
            square[s] = rate * square[s] + (1 - rate) * (rows * rows).mean(0)
        # a batch's per-state sums are float32 (one small matrix product), the state float64
        torch.testing.assert_close(zscore.mean_sg, mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(zscore.square_sg, square, rtol=1e-6, atol=1e-6)
        # the batch is normalized with the statistics as they stood before its update
    scale = (zscore.square_sg - zscore.mean_sg**2).sqrt()
    batch = next(loader)
    out = dm.normalize(batch, stage="predict")
    state = out["memory_state_n"]
    expected = (out["x_log_ng"].double() - zscore.mean_sg[state]) / scale[state].where(
        scale[state] > 0, 1.0
    )
    torch.testing.assert_close(out["x_ng"].double(), expected, rtol=1e-5, atol=1e-5)
    assert dm.get_memory_stats()["updates"] == 4


def test_retrieval_equals_brute_force_top_k_of_the_cells_own_type() -> None:
    dm = fitted()
    retrieval = dm.memory.step("memory_retrieval")
    loader = iter(dm.train_dataloader())
    for _ in range(6):
        dm.normalize(next(loader), stage="train")
    out = dm.normalize(next(loader), stage="predict")
    bank, valid, cell_m = retrieval.bank_md, retrieval.valid_m, retrieval.cell_m
    for row in range(out["cell_index_n"].shape[0]):
        kind = int(out["memory_type_n"][row])
        allowed = valid & (retrieval.type_m == kind) & (cell_m != out["cell_index_n"][row])
        scores = (bank @ out["memory_embedding_nd"][row]).masked_fill(~allowed, float("-inf"))
        best = torch.topk(scores, 5)
        found = torch.isfinite(best.values)
        expected_slots = torch.where(found, best.indices, -1)
        torch.testing.assert_close(
            out["memory_neighbor_similarity_nj"][row], torch.where(found, best.values, 0.0)
        )
        assert out["memory_neighbor_slot_nj"][row].tolist() == expected_slots.tolist()
        slots = out["memory_neighbor_slot_nj"][row]
        assert bool((retrieval.type_m[slots[slots >= 0]] == kind).all())
        assert int(out["cell_index_n"][row]) not in out["memory_neighbor_cell_nj"][row].tolist()


def test_a_training_batch_retrieves_before_it_is_written() -> None:
    dm = fitted()
    first = dm.normalize(next(iter(dm.train_dataloader())), stage="train")
    assert bool((first["memory_neighbor_slot_nj"] == -1).all())  # the bank was empty
    assert bool((first["memory_neighbor_similarity_nj"] == 0).all())
    retrieval = dm.memory.step("memory_retrieval")
    assert int(retrieval.valid_m.sum()) == first["cell_index_n"].shape[0]


def test_the_ring_buffer_overwrites_the_oldest_slots_in_order() -> None:
    dm = fitted(memory_size=4, num_memory_types=1, memory_type_key=None, cell_type_key=None)
    retrieval = dm.memory.step("memory_retrieval")
    written: list[int] = []
    for batch in list(dm.train_dataloader())[:3]:
        out = dm.normalize(batch, stage="train")
        written += out["cell_index_n"].tolist()
    assert retrieval.position_t.tolist() == [len(written) % 4]
    expected = {(len(written) - 4 + i) % 4: cell for i, cell in enumerate(written[-4:])}
    assert {slot: int(retrieval.cell_m[slot]) for slot in range(4)} == expected
    assert sorted(retrieval.age_m.tolist()) == [0, 0, 0, 0]
    weights = dm.normalize(batch, stage="predict")["memory_weight_m"]
    assert torch.equal(weights, torch.ones(4))


def test_a_mid_epoch_resume_continues_exactly() -> None:
    dm = fitted()
    loader = iter(dm.train_dataloader())
    for _ in range(3):
        dm.normalize(next(loader), stage="train")
    state = dm.state_dict()
    remaining = 0
    for batch in loader:
        dm.normalize(batch, stage="train")
        remaining += 1
    resumed = MemoryDataModule(str(shared_data(PBMC)), **OPTIONS)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    rest = list(resumed.train_dataloader())
    assert len(rest) == remaining > 0
    for batch in rest:
        resumed.normalize(batch, stage="train")
    assert_same(resumed.memory.running_state(), dm.memory.running_state(), "running state")


def test_the_component_contract() -> None:
    base_options = dict(
        cell_type_key="cell_type",
        batch_size=32,
        block_size=8,
        shuffle_buffer=2,
        val_fraction=0.2,
        progress=False,
        seed=2,
    )

    def make_dm(components):
        return BaseEnhancedDataModule(str(shared_data(PBMC)), components=components, **base_options)

    check_component(
        lambda: MemoryComponent(
            memory_dim=8, memory_size=20, state_key="phase", cell_type_key="cell_type"
        ),
        make_dm,
    )


class Embedder(L.LightningModule):
    """Reconstructs each cell's mean retrieved neighbour similarity (a toy that reads the keys)."""

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n_genes, 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        target = batch["memory_neighbor_similarity_nj"].mean(1, keepdim=True)
        return torch.nn.functional.mse_loss(self.layer(batch["x_ng"]), target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_model_trains_and_the_bank_fills(tmp_path) -> None:
    dm = MemoryDataModule(str(shared_data(PBMC)), **OPTIONS)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Embedder(765), datamodule=dm)
    stats = dm.get_memory_stats()
    assert stats["updates"] == 2 * len(dm.train_dataloader())
    assert all(bank["fill"] == 1.0 for bank in stats["banks"].values())
    assert max(stats["mean_drift_per_state"]) > 0


def test_the_reference_loader() -> None:
    loader = MemoryDataLoader(
        {"data": str(shared_data(PBMC))},
        memory_dim=512,
        memory_size=1000,
        num_memory_types=5,
        num_epigenetic_states=3,
        memory_decay_rate=0.9,
        state_key="phase",
        cell_type_key="cell_type",
        progress=False,
    )
    items = [loader.dataset()[i] for i in range(16)]
    out = loader.train()(items)
    assert out["memory_md"].shape == (5000, loader.datamodule.memory.step("memory_embedding").dim)
    assert loader.get_memory_stats()["updates"] == 1
