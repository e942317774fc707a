"""DDP on CPU (gloo, 2 processes): sharding, statistics merged across ranks, cache, exact resume.

Two launches keep the file short: ``torch.multiprocessing`` ranks that drive the DataModule by
hand (no Trainer), and a script run the way a user runs it, where Lightning's ``strategy="ddp"``
starts rank 1 by re-running the script. Every process writes only under ``tmp_path`` and is
killed if it outlives its timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import enhanced_dm.fitting.fit_or_load as base_module
from enhanced_dm import BaseEnhancedDataModule, BlockShuffleSampler
from enhanced_dm.fitting.driver import fitted_states
from tests.helpers import REPO_ROOT, shared_data

pytestmark = [pytest.mark.ddp, pytest.mark.slow]  # minutes on 2 busy cores: process launches

WU2020 = "singlecell/wu2020_tcells_counts.h5ad"
WORLD_SIZE = 2
TIMEOUT_S = 600  # only a guard against hangs; nothing is asserted about time
# 343 cells, 35 for validation: 308 train cells, 154 per rank, 5 batches of <= 32 per rank.
OPTIONS: dict[str, Any] = dict(
    val_fraction=0.102,
    batch_size=32,
    block_size=8,
    shuffle_buffer=4,
    seed=5,
    target_sum=1e4,
    batch_key="batch",
    batch_aware_normalization=True,
    progress=False,
)

MEDIAN_OPTIONS = {**OPTIONS, "target_sum": "median", "per_gene_normalization": False}


# ------------------------------------------------------------------------------ launching
def run_ranks(function: Callable[..., None], *args: Any) -> None:
    """Run ``function(rank, *args)`` in WORLD_SIZE spawned processes; kill them on timeout."""
    context = mp.start_processes(
        function, args=args, nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks still running after {TIMEOUT_S} s (a hang?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def init_gloo(rank: int, tmp_path: Path) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp_path / 'rendezvous'}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),  # a missing rank fails, it does not hang
    )


def fitted_by(factory: Callable[[], BaseEnhancedDataModule]) -> dict[str, dict[str, torch.Tensor]]:
    """The fitted statistics of the DataModule ``factory`` makes, set up (warnings muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = factory()
        dm.setup("fit")
    assert dm.pipeline is not None
    return fitted_states(dm.pipeline)


def _fit_and_save(rank: int, tmp_path: Path, factory: Callable[[], Any]) -> None:
    init_gloo(rank, tmp_path)
    try:
        torch.save(fitted_by(factory), tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def assert_ranks_fit_like_one_process(
    factory: Callable[[], BaseEnhancedDataModule], tmp_path: Path, tolerance: float = 1e-10
) -> dict[str, dict[str, torch.Tensor]]:
    """Two gloo ranks set up ``factory()`` (picklable: e.g. a ``functools.partial`` of the
    class) and each fits statistics equal to one process's within ``tolerance``; returns them."""
    run_ranks(_fit_and_save, tmp_path, factory)
    expected = fitted_by(factory)
    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for step, state in expected.items():
            for key, value in state.items():
                torch.testing.assert_close(
                    got[step][key].double(),
                    value.double(),
                    rtol=tolerance,
                    atol=tolerance,
                    msg=f"rank {rank}: {step}.{key}",
                )
    return expected


def as_numpy(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, np.ndarray]]:
    return {name: {k: v.numpy() for k, v in state.items()} for name, state in states.items()}


def assert_states_close(
    got: dict[str, dict[str, np.ndarray]], want: dict[str, dict[str, np.ndarray]]
) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].keys() == want[name].keys()
        for key in want[name]:
            np.testing.assert_allclose(got[name][key], want[name][key], rtol=0, atol=1e-10)


def predict_stats(dm: BaseEnhancedDataModule) -> dict[str, dict[str, float]]:
    """Run every cell of this rank's predict share through the pipeline; global monitor stats."""
    for batch in dm.predict_dataloader():
        dm.normalize(batch)
    return dm.get_normalization_stats()


# ------------------------------------------------- ranks driven by hand (no Trainer)
def _rank_main(rank: int, tmp_path: Path, data: str) -> None:
    torch.set_num_threads(1)
    init_gloo(rank, tmp_path)
    fit_cells: list[int] = []
    real_fit = base_module.fit_pipeline

    def recording_fit(pipeline: Any, train_batches: Any, *args: Any, **kwargs: Any) -> Any:
        for batch in train_batches():
            fit_cells.extend(batch["cell_index_n"].tolist())
        return real_fit(pipeline, train_batches, *args, **kwargs)

    base_module.fit_pipeline = recording_fit
    # 1. Fit under DDP (each rank its share, torchmetrics merges); rank 0 writes the cache.
    dm = BaseEnhancedDataModule(
        data, **OPTIONS, num_workers=2, stats_cache_dir=tmp_path / "shared_cache"
    )
    dm.setup("fit")
    epochs = []
    loader = dm.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        epochs.append([batch["cell_index_n"].tolist() for batch in loader])
    stats = predict_stats(dm)

    # 2. Node-local caches: only rank 0's directory holds the statistics; rank 1 must not refit
    # (it would wait forever for rank 0 in the merge) nor read its own, empty directory.
    def refuse_to_fit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"rank {rank} refitted instead of using rank 0's cache")

    base_module.fit_pipeline = refuse_to_fit
    local = BaseEnhancedDataModule(data, **OPTIONS, stats_cache_dir=tmp_path / f"node{rank}")
    local.setup("fit")

    # 3. The median library size: a "cat" state (every train total), gathered across ranks.
    base_module.fit_pipeline = real_fit
    median = BaseEnhancedDataModule(data, **MEDIAN_OPTIONS)
    try:
        median.setup("fit")
        median_fitted: Any = as_numpy(fitted_states(median.pipeline))
    except RuntimeError as error:  # both ranks fail at the same point: nobody waits
        median_fitted = f"{type(error).__name__}: {error}"

    # 4. Several files, opened lazily (backed) through a glob, with a bound on open handles.
    files = BaseEnhancedDataModule(str(tmp_path / "part_*.h5ad"), **OPTIONS, backed=True)
    files.setup("fit")
    files.store.max_open_files = 2
    files_stats = predict_stats(files)  # in this process: three files, at most two open
    open_handles = sum(source._file is not None for source in files.store.sources)
    files.num_workers = 2
    files_epoch = [batch["cell_index_n"].tolist() for batch in files.train_dataloader()]

    torch.save(
        {
            "fitted": as_numpy(fitted_states(dm.pipeline)),
            "fit_cells": fit_cells,
            "epochs": epochs,
            "stats": stats,
            "var_names": dm.var_names,
            "categories": dm.categories,
            "split": {name: cells.tolist() for name, cells in dm.split.items()},
            "local_fitted": as_numpy(fitted_states(local.pipeline)),
            "local_cache_path": str(local.stats_cache_path),
            "median_fitted": median_fitted,
            "files_fitted": as_numpy(fitted_states(files.pipeline)),
            "files_stats": files_stats,
            "files_open_handles": open_handles,
            "files_epoch": files_epoch,
        },
        tmp_path / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Everything both ranks reported, and the folder they worked in."""
    tmp_path = tmp_path_factory.mktemp("ddp_ranks")
    adata = ad.read_h5ad(shared_data(WU2020))
    for part, rows in enumerate(np.array_split(np.arange(adata.n_obs), 3)):
        adata[rows].copy().write_h5ad(tmp_path / f"part_{part}.h5ad")
    # The 1-rank fit fills node 0's cache; node 1's stays empty.
    reference(str(shared_data(WU2020)), stats_cache_dir=tmp_path / "node0").setup("fit")
    (tmp_path / "node1").mkdir()
    run_ranks(_rank_main, tmp_path, str(shared_data(WU2020)))
    return tmp_path, [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def reference(data: str, **options: Any) -> BaseEnhancedDataModule:
    return BaseEnhancedDataModule(data, **{**OPTIONS, **options})


def test_two_ranks_fit_the_statistics_of_one(ranks: Any) -> None:
    _, reports = ranks
    one = reference(str(shared_data(WU2020)))
    one.setup("fit")
    want = as_numpy(fitted_states(one.pipeline))
    train = set(one.split["train"].tolist())
    shares = [set(report["fit_cells"]) for report in reports]
    assert len(reports[0]["fit_cells"]) + len(reports[1]["fit_cells"]) == len(train)
    assert shares[0] | shares[1] == train and not shares[0] & shares[1]  # each cell once
    for report in reports:
        assert_states_close(report["fitted"], want)


def test_two_ranks_fit_the_median_library_size_of_one(ranks: Any) -> None:
    _, reports = ranks
    one = reference(str(shared_data(WU2020)), **MEDIAN_OPTIONS)
    one.setup("fit")
    want = as_numpy(fitted_states(one.pipeline))
    for report in reports:
        assert isinstance(report["median_fitted"], dict), report["median_fitted"]
        assert_states_close(report["median_fitted"], want)


def test_ranks_build_the_same_genes_categories_and_split(ranks: Any) -> None:
    _, (first, second) = ranks
    assert first["var_names"] == second["var_names"]
    assert first["categories"] == second["categories"]
    assert first["split"] == second["split"]


def test_each_epoch_is_split_between_ranks_without_overlap(ranks: Any) -> None:
    _, reports = ranks
    train = sorted(reports[0]["split"]["train"])
    assert len(train) % WORLD_SIZE == 0  # so the drop policy drops nothing here
    for epoch in range(2):
        per_rank = [[cell for batch in r["epochs"][epoch] for cell in batch] for r in reports]
        assert len(reports[0]["epochs"][epoch]) == len(reports[1]["epochs"][epoch])
        assert sorted(per_rank[0] + per_rank[1]) == train  # the union, no cell twice
    assert reports[0]["epochs"][0] != reports[0]["epochs"][1]  # reshuffled per epoch


def test_workers_split_a_rank_share_without_changing_it(ranks: Any) -> None:
    """Two DataLoader workers per rank yield exactly the sampler's batches, in order."""
    _, reports = ranks
    train = reports[0]["split"]["train"]
    for rank, report in enumerate(reports):
        sampler = BlockShuffleSampler(
            train, 32, block_size=8, shuffle_buffer=4, seed=5, num_replicas=2, rank=rank
        )
        for epoch in range(2):
            sampler.set_epoch(epoch)
            assert report["epochs"][epoch] == list(sampler)


def test_monitor_statistics_are_global_on_every_rank(ranks: Any) -> None:
    _, (first, second) = ranks
    one = reference(str(shared_data(WU2020)))
    one.setup("fit")
    want = predict_stats(one)
    assert first["stats"] == second["stats"]  # the same synced figures on both ranks
    for name, stats in want.items():
        for key, value in stats.items():
            # The monitors sum squares per batch in float32 (torch.dot): how the cells are cut
            # into batches moves the std by ~1e-7 relative, on one rank as on two.
            assert first["stats"][name][key] == pytest.approx(value, rel=1e-5, abs=1e-12), key


def test_only_rank_zero_touches_the_cache(ranks: Any) -> None:
    tmp_path, (first, second) = ranks
    assert len(list((tmp_path / "shared_cache").glob("*.pt"))) == 1  # written once
    assert not list((tmp_path / "shared_cache").glob(".*.tmp"))  # no half-written leftovers
    assert not list((tmp_path / "node1").iterdir())  # rank 1 never wrote its own
    assert first["local_cache_path"] == second["local_cache_path"]  # rank 0's file, broadcast
    assert Path(first["local_cache_path"]).parent == tmp_path / "node0"
    assert_states_close(second["local_fitted"], first["fitted"])


def test_several_backed_files_work_under_ddp(ranks: Any) -> None:
    _, (first, second) = ranks
    assert_states_close(first["files_fitted"], first["fitted"])
    assert_states_close(second["files_fitted"], first["fitted"])
    assert first["files_stats"] == second["files_stats"]
    cells = [cell for r in (first, second) for batch in r["files_epoch"] for cell in batch]
    assert sorted(cells) == sorted(first["split"]["train"])


def test_open_file_handles_stay_within_the_bound(ranks: Any) -> None:
    _, reports = ranks
    assert all(report["files_open_handles"] <= 2 for report in reports)


# ------------------------------------------- Lightning's own launcher: trainer.fit(ddp)
DDP_SCRIPT = textwrap.dedent(
    '''
    """tests/test_ddp.py runs this; Lightning starts rank 1 by running it again."""

    import json
    import sys
    from pathlib import Path

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from enhanced_dm import BaseEnhancedDataModule, NormalizationStatsCallback
    from tests.test_resume import RecordingModule

    data, out, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])


    def run(name, ckpt_path=None, **trainer_options):
        model = RecordingModule()
        dm = BaseEnhancedDataModule(data, **options)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_epochs=2,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
            **trainer_options,
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        report = {
            "records": model.records,
            "stats": dm.get_normalization_stats(),  # every rank: the monitors sync here
            "train": dm.split["train"].tolist(),
        }
        (out / f"{name}_rank{trainer.global_rank}.json").write_text(json.dumps(report))


    run(
        "full",
        logger=CSVLogger(out / "logs", name="ddp"),
        callbacks=[
            NormalizationStatsCallback(log_every_n_steps=2),
            ModelCheckpoint(
                dirpath=out / "checkpoints", filename="{step}", every_n_train_steps=3,
                save_top_k=-1,
            ),
        ],
    )
    for step in (3, 6):
        checkpoint = out / "checkpoints" / f"step={step}.ckpt"
        run(f"resume_{step}", ckpt_path=checkpoint, logger=False, enable_checkpointing=False)
    '''
)


@pytest.fixture(scope="module")
def lightning_ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the script under Lightning's DDP launcher; returns its output folder."""
    tmp_path = tmp_path_factory.mktemp("lightning_ddp")
    script = tmp_path / "fit_ddp.py"
    script.write_text(DDP_SCRIPT)
    launcher_variables = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in launcher_variables}
    env |= {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    # No DataLoader workers in the Lightning-launched ranks: forking a rank process that runs
    # threads (gloo, queue feeders) deadlocked the child about one run in four here, inside
    # Python 3.11's PyOS_AfterFork_Child (a CPython lock held by another thread at the fork).
    # Workers under DDP are covered by the torchrun-style tests above (num_workers=2).
    options = json.dumps({**OPTIONS, "num_workers": 0})
    command = [sys.executable, str(script), str(shared_data(WU2020)), str(tmp_path), options]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # rank 1 joins this process group, so one kill ends both
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the DDP run hung; its output:\n{output.decode()[-4000:]}")
    assert process.returncode == 0, output.decode()[-4000:]
    return tmp_path


def ddp_report(tmp_path: Path, name: str, rank: int) -> dict[str, Any]:
    return json.loads((tmp_path / f"{name}_rank{rank}.json").read_text())


def test_trainer_ddp_fit_runs_and_writes_one_set_of_logs(lightning_ddp: Path) -> None:
    metrics = sorted(lightning_ddp.rglob("metrics.csv"))
    assert metrics == [lightning_ddp / "logs" / "ddp" / "version_0" / "metrics.csv"]
    header = metrics[0].read_text().splitlines()[0].split(",")
    assert "normalization/z_score/mean" in header
    assert not (lightning_ddp / "lightning_logs").exists()
    first, second = (ddp_report(lightning_ddp, "full", rank) for rank in (0, 1))
    assert first["stats"] == second["stats"]  # the global statistics on both ranks
    assert len(first["records"]) == len(second["records"]) == 10
    epoch_0 = [c for r in (first, second) for e, _, batch in r["records"] if e == 0 for c in batch]
    assert sorted(epoch_0) == sorted(first["train"])


@pytest.mark.parametrize("step", [3, 6], ids=["mid_first_epoch", "mid_second_epoch"])
def test_trainer_ddp_resume_reproduces_the_remaining_batches(
    lightning_ddp: Path, step: int
) -> None:
    for rank in (0, 1):
        full = ddp_report(lightning_ddp, "full", rank)["records"]
        resumed = ddp_report(lightning_ddp, f"resume_{step}", rank)["records"]
        assert resumed == full[step:]
