"""The component contract: check_component over every component, and each hook on real data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from enhanced_dm import BaseEnhancedDataModule, BaseEnhancedLoader, ConfigError
from enhanced_dm.components import CompartmentComponent, Component, PathwayComponent
from enhanced_dm.components.base import Slot
from enhanced_dm.fitting.driver import fitted_states
from enhanced_dm.transforms.base import Transform
from enhanced_dm.transforms.context import StepContext
from enhanced_dm.transforms.z_score import ZScore
from tests.components.contract_components import (
    ConsecutiveSequenceComponent,
    CountThinningComponent,
    RunningMeanComponent,
)
from tests.contract import assert_same, check_component, check_transform
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"
OPTIONS: dict[str, Any] = dict(batch_size=64, val_fraction=0.2, seed=3, progress=False)


def make_dm(components: Sequence[Component] = (), **options: Any) -> BaseEnhancedDataModule:
    return BaseEnhancedDataModule(
        str(shared_data(PBMC)), components=components, **{**OPTIONS, **options}
    )


COMPONENTS = {
    "pathway": lambda: PathwayComponent(num_pathways=20),
    "pathway_aucell": lambda: PathwayComponent(num_pathways=10, pathway_score="aucell"),
    "compartment": lambda: CompartmentComponent(num_compartments=4),
    "count_thinning": lambda: CountThinningComponent(keep=0.5),
    "running_mean": lambda: RunningMeanComponent(decay=0.5),
    "sequences": lambda: ConsecutiveSequenceComponent(sequence_length=3),
}


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_check_component(name: str) -> None:
    check_component(COMPONENTS[name], make_dm)


def test_check_transform_over_the_base_steps() -> None:
    dm = make_dm(normalization_type="robust", max_value=5.0)
    dm.setup("fit")
    assert dm.pipeline is not None
    batch = dm.store.read(np.arange(50))
    for index, (_, step) in enumerate(dm.pipeline.named_transforms()):
        check_transform(step, dm.pipeline(batch, StepContext(), stop_before=index))


def test_check_transform_catches_a_mutating_step() -> None:
    class Mutating(Transform):
        def forward(self, batch: Any, context: Any = None) -> dict[str, torch.Tensor]:
            batch["total_counts_n"].mul_(2)
            return {}

    dm = make_dm()
    dm.setup("fit")
    with pytest.raises(AssertionError, match="mutated its input"):
        check_transform(Mutating(), dm.store.read(np.arange(8)))


# ----------------------------------------------------------------------------- counts slot
def test_counts_slot_augments_the_dense_counts_in_training_only() -> None:
    dm = make_dm([CountThinningComponent(keep=0.5)])
    dm.setup("fit")
    assert dm.pipeline is not None and dm.pipeline.names[:2] == ["thinning", "densify"]
    batch = dm.store.read(np.arange(64))
    raw = batch["counts_ng"].to_dense()
    predicted = dm.normalize(batch, stage="predict")
    assert torch.equal(predicted["counts_ng"], raw)
    trained = dm.normalize({**batch, "epoch": 0, "batch_index": 5}, stage="train")
    assert bool((trained["counts_ng"] <= raw).all())
    kept = trained["counts_ng"].sum() / raw.sum()
    assert 0.45 < float(kept) < 0.55  # Binomial(c, 0.5) over ~10^5 counts
    # x_ng is computed from the augmented counts
    reference = make_dm()
    reference.setup("fit")
    again = reference.normalize({**batch, "counts_ng": trained["counts_ng"].to_sparse_csr()})
    torch.testing.assert_close(trained["x_ng"], again["x_ng"], rtol=1e-5, atol=1e-5)
    # the same stamp draws the same noise; another batch index other noise
    same = dm.normalize({**batch, "epoch": 0, "batch_index": 5}, stage="train")
    other = dm.normalize({**batch, "epoch": 0, "batch_index": 6}, stage="train")
    assert torch.equal(same["counts_ng"], trained["counts_ng"])
    assert not torch.equal(other["counts_ng"], trained["counts_ng"])


def test_fitted_statistics_ignore_training_only_steps() -> None:
    plain, noisy = make_dm(), make_dm([CountThinningComponent(keep=0.2)])
    plain.setup("fit")
    noisy.setup("fit")
    assert plain.pipeline is not None and noisy.pipeline is not None
    assert_same(fitted_states(noisy.pipeline), fitted_states(plain.pipeline), "fitted")


@pytest.mark.slow
def test_training_noise_is_the_same_with_workers() -> None:
    """The batch index is stamped by the loader, so workers draw the same noise."""

    def train_counts(num_workers: int) -> list[torch.Tensor]:
        dm = make_dm([CountThinningComponent()], num_workers=num_workers)
        dm.setup("fit")
        return [dm.normalize(b, stage="train")["counts_ng"] for b in dm.train_dataloader()]

    assert_same(train_counts(2), train_counts(0), "train batches")


# --------------------------------------------------------------------------- running state
def test_running_state_updates_in_training_and_round_trips() -> None:
    dm = make_dm([RunningMeanComponent(decay=0.5)])
    dm.setup("fit")
    component = dm.component(RunningMeanComponent)
    batches = list(dm.train_dataloader())
    for batch in batches[:2]:
        dm.normalize(batch, stage="predict")
    assert component.updates == 0
    expected = torch.zeros(dm.n_genes, dtype=torch.float64)
    for batch in batches[:3]:
        out = dm.normalize(batch, stage="train")
        expected = 0.5 * expected + 0.5 * out["x_ng"].to(torch.float64).mean(0)
    torch.testing.assert_close(component.running_state()["mean_g"].double(), expected)
    state = dm.state_dict()
    assert state["running"]["running_mean"]["updates"] == 3
    resumed = make_dm([RunningMeanComponent(decay=0.5)])
    resumed.load_state_dict(state)
    resumed.setup("fit")
    assert_same(
        resumed.component(RunningMeanComponent).running_state(),
        component.running_state(),
        "running state",
    )


def test_running_state_is_never_cached(tmp_path) -> None:
    dm = make_dm([RunningMeanComponent()], stats_cache_dir=tmp_path)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        dm.normalize(batch, stage="train")
    second = make_dm([RunningMeanComponent()], stats_cache_dir=tmp_path)
    second.setup("fit")
    assert second.stats_cache_path == dm.stats_cache_path
    assert second.component(RunningMeanComponent).updates == 0
    assert float(second.component(RunningMeanComponent).running_state()["mean_g"].abs().sum()) == 0


def test_collate_loader_in_training_mode_refuses_workers_with_running_state() -> None:
    class RunningLoader(BaseEnhancedLoader):
        pass

    loader = RunningLoader(
        data=str(shared_data(PBMC)), components=[RunningMeanComponent()], **OPTIONS
    ).train()
    dataloader = DataLoader(loader.dataset("train"), batch_size=16, collate_fn=loader)
    next(iter(dataloader))  # no workers: fine, and the state moves
    assert loader.datamodule.component(RunningMeanComponent).updates == 1
    workers = DataLoader(loader.dataset("train"), batch_size=16, collate_fn=loader, num_workers=1)
    with pytest.raises(ConfigError, match="num_workers=0"):
        next(iter(workers))


# ------------------------------------------------------------------------------- sequences
def test_sequence_items_reach_the_model_reshaped_with_a_mask() -> None:
    dm = make_dm([ConsecutiveSequenceComponent(sequence_length=3)], batch_size=8)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    last = batches[-1]
    out = dm.normalize(last, stage="val")
    n, s = last["sequence_row_ns"].shape
    assert s == 3 and out["x_nsg"].shape == (n, 3, dm.n_genes)
    assert out["mask_ns"].dtype == torch.bool and out["counts_nsg"].shape == (n, 3, dm.n_genes)
    padding = ~out["mask_ns"]
    assert bool(padding.any())  # 140 val cells are not a multiple of 3
    assert bool((out["x_nsg"][padding] == 0).all()) and bool(
        (out["cell_index_ns"][padding] == -1).all()
    )
    flat = dm.normalize(dm.store.read(out["cell_index_ns"][out["mask_ns"]].numpy()))
    order = torch.argsort(out["cell_index_ns"][out["mask_ns"]])
    torch.testing.assert_close(out["x_nsg"][out["mask_ns"]][order], flat["x_ng"])
    # the pipeline saw the real cells only
    dm.reset_normalization_stats()
    total = 0
    for batch in batches:
        dm.normalize(batch, stage="val")
        total += int((batch["sequence_row_ns"] >= 0).sum())
    assert total == len(dm.split["val"])
    assert dm.get_normalization_stats()["z_score"]["cells_seen"] == total


def test_sequence_sampler_resumes_and_shards() -> None:
    dm = make_dm([ConsecutiveSequenceComponent()], batch_size=4)
    dm.setup("fit")
    whole = [b["cell_index_n"] for b in dm.train_dataloader()]
    state = dm.state_dict()
    state["sampler"] = {**state["sampler"], "epoch": 0, "start_batch": 3}
    resumed = make_dm([ConsecutiveSequenceComponent()], batch_size=4)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    rest = [b["cell_index_n"] for b in resumed.train_dataloader()]
    assert_same(rest, whole[3:], "resumed batches")
    shares = [
        dm.component(ConsecutiveSequenceComponent).batch_sampler(
            dm.split["train"], shuffle=True, seed=3, rank=rank, world_size=2, batch_size=4
        )
        for rank in range(2)
    ]
    cells = [np.concatenate([item[item >= 0] for item in share]) for share in shares]
    assert not set(cells[0]) & set(cells[1])


def test_collate_loader_exposes_the_sequence_batch_sampler() -> None:
    class SequenceLoader(BaseEnhancedLoader):
        pass

    loader = SequenceLoader(
        data=str(shared_data(PBMC)), components=[ConsecutiveSequenceComponent()], **OPTIONS
    )
    sampler = loader.batch_sampler("val")
    dataloader = DataLoader(loader.dataset(), batch_sampler=sampler, collate_fn=loader)
    out = next(iter(dataloader))
    assert out["x_nsg"].shape[1:] == (4, len(loader.var_names)) and "mask_ns" in out


# -------------------------------------------------------------------------- build checks
class _OwnZScore(Component):
    """Claims the gene-wise slot with its own z-score of the log values."""

    name = "own_z"

    def __init__(self, name: str = "own_z") -> None:
        self.name = name  # type: ignore[misc]
        self.n_genes = 0

    def setup(self, store: Any) -> None:
        self.n_genes = store.n_genes

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        return [(f"{self.name}_step", ZScore(self.n_genes), "gene_wise")]


class _ReadsLog(Transform):
    output_key = "log_copy_ng"
    reads_log_expression = True
    reads_counts = False

    def forward(self, batch: Any, context: Any = None) -> dict[str, torch.Tensor]:
        return {"log_copy_ng": batch["x_log_ng"] * 1}


class _LogReader(Component):
    name = "log_reader"

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        return [("read_log", _ReadsLog(), "after_gene_wise")]


def test_gene_wise_owner_replaces_the_base_step_and_two_owners_are_refused() -> None:
    owned = make_dm([_OwnZScore()], normalization_type="robust")
    owned.setup("fit")
    assert owned.pipeline is not None
    assert "robust" not in owned.pipeline.names and "own_z_step" in owned.pipeline.names
    with pytest.raises(ConfigError, match=r"components \['a', 'b'\] all replace the gene-wise"):
        make_dm([_OwnZScore("a"), _OwnZScore("b")]).setup("fit")


def test_x_log_ng_is_kept_only_when_a_step_reads_it() -> None:
    plain = make_dm()
    plain.setup("fit")
    batch = plain.store.read(np.arange(20))
    assert "x_log_ng" not in plain.normalize(batch)
    reading = make_dm([_LogReader()])
    reading.setup("fit")
    out = reading.normalize(batch)
    no_z = make_dm(per_gene_normalization=False)
    no_z.setup("fit")
    torch.testing.assert_close(out["x_log_ng"], no_z.normalize(batch)["x_ng"])
    torch.testing.assert_close(out["x_ng"], plain.normalize(batch)["x_ng"])


def test_two_writers_of_one_key_and_two_columns_for_one_name_are_refused() -> None:
    with pytest.raises(ConfigError, match="written by both components 'first' and 'second'"):
        first = type("First", (_LogReader,), {"name": "first"})()
        second = type("Second", (_LogReader,), {"name": "second"})()
        make_dm([first, second]).setup("fit")

    class WantsPhase(Component):
        name = "phase_user"

        def obs_columns(self) -> dict[str, str]:
            return {"cell_type": "phase"}

    with pytest.raises(ConfigError, match="'cell_type' is mapped to obs column 'cell_type'"):
        make_dm([WantsPhase()], cell_type_key="cell_type").setup("fit")
    same = make_dm([WantsPhase()], cell_type_key="phase")  # the same column twice is fine
    same.setup("fit")


def test_base_options_are_validated_from_their_declarations() -> None:
    for options, message in [
        ({"num_workers": -1}, "num_workers=-1 is invalid; expected >= 0"),
        ({"max_value": -3.0}, "max_value=-3.0 is invalid; expected > 0"),
        ({"max_value": 0}, "max_value=0 is invalid"),
        ({"batch_size": "64"}, "batch_size='64' has the wrong type"),
        ({"bach_size": 64}, r"unknown option\(s\) \['bach_size'\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_dm(**options)


# --------------------------------------------------------------------------- step context
class _Recorder(Transform):
    output_key = "x_ng"
    reads_counts = False
    monitored = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, int]] = []

    def forward(self, batch: Any, context: StepContext | None = None) -> dict[str, torch.Tensor]:
        assert context is not None
        self.seen.append((context.stage, context.epoch, context.batch_index))
        return {}


class _RecordingComponent(Component):
    name = "recorder"

    def __init__(self) -> None:
        self.step = _Recorder()

    def transforms(self) -> list[tuple[str, Transform, Slot]]:
        return [("record", self.step, "after_gene_wise")]


def test_lightning_stages_epochs_and_batch_indices_reach_the_context(tmp_path) -> None:
    import lightning as L

    from enhanced_dm.models import ExpressionAutoencoder

    component = _RecordingComponent()
    dm = make_dm([component], batch_size=128)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ExpressionAutoencoder(latent_dim=4, hidden_dims=(8,)), datamodule=dm)
    train = [(epoch, index) for stage, epoch, index in component.step.seen if stage == "train"]
    assert train == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert {stage for stage, _, _ in component.step.seen} == {"train", "val"}  # sanity: val


def test_generators_are_keyed_by_stream_and_coordinates() -> None:
    context = StepContext("train", seed=1, epoch=2, global_rank=0, batch_index=3)

    def draw(c: StepContext, stream: str) -> torch.Tensor:
        return torch.rand(5, generator=c.generator("cpu", stream))

    assert torch.equal(draw(context, "a"), draw(context, "a"))
    assert not torch.equal(draw(context, "a"), draw(context, "b"))
    for other in (
        StepContext("train", seed=1, epoch=3, global_rank=0, batch_index=3),
        StepContext("train", seed=1, epoch=2, global_rank=1, batch_index=3),
        StepContext("train", seed=1, epoch=2, global_rank=0, batch_index=4),
        StepContext("train", seed=2, epoch=2, global_rank=0, batch_index=3),
    ):
        assert not torch.equal(draw(other, "a"), draw(context, "a"))
    # keyed draws: a function of (seed, stream, key) only, whatever the batch holds
    cells = torch.tensor([5, 9, 2])
    both = context.keyed_normal(cells, 4, "noise")
    alone = StepContext("predict", seed=1).keyed_normal(torch.tensor([9]), 4, "noise")
    assert torch.equal(both[1], alone[0])
    many = context.keyed_normal(torch.arange(20_000), 8, "noise").double()
    assert abs(float(many.mean())) < 0.01 and abs(float(many.std()) - 1) < 0.01
    uniform = context.keyed_uniform(torch.arange(20_000), 2, "u")
    assert float(uniform.min()) > 0 and float(uniform.max()) < 1


# ------------------------------------------------------------------ declarative DataModules
def test_a_datamodule_is_its_component_list() -> None:
    import inspect

    from enhanced_dm.cli import schema_from_signature

    class NoisyDataModule(BaseEnhancedDataModule):
        component_classes = (CountThinningComponent, RunningMeanComponent)

    parameters = inspect.signature(NoisyDataModule.__init__).parameters
    assert list(parameters)[:4] == ["self", "data", "keep", "decay"]
    assert parameters["batch_size"].default == 256 and "components" in parameters
    fields = schema_from_signature(NoisyDataModule).__dataclass_fields__
    assert fields["keep"].default == 0.5 and fields["decay"].default == 0.9
    with pytest.raises(ConfigError, match=r"NoisyDataModule: option keep=2.0 is invalid"):
        NoisyDataModule(str(shared_data(PBMC)), keep=2.0)
    dm = NoisyDataModule(str(shared_data(PBMC)), keep=0.3, decay=0.5, **OPTIONS)
    assert dm.component(CountThinningComponent).keep == 0.3 and dm.decay == 0.5
    dm.setup("fit")
    assert dm.get_running_mean_stats() == {} and dm.get_count_thinning_stats() == {}
    assert type(BaseEnhancedDataModule.__init__) is type(NoisyDataModule.__init__)
    assert "keep" not in inspect.signature(BaseEnhancedDataModule.__init__).parameters


def test_an_option_name_means_one_thing_everywhere() -> None:
    from enhanced_dm.options import Option, merge_options

    same = Option("gene_symbol_key", None, str | None)
    assert len(merge_options([(same,), (same,)])) == 1
    other = Option("gene_symbol_key", "symbol", str)
    with pytest.raises(ConfigError, match="'gene_symbol_key' is declared twice"):
        merge_options([(same,), (other,)])
