"""Atlas-format rows: enhanced-dm backed block 64 on annbatch's own zarr collection of the
benchmark file (the annbatch rows read the same store), on a TileDB-SOMA experiment of it, and
tiledbsoma-ml's ``ExperimentDataset`` on the same experiment at matched randomness.

The experiment is ingested once with ``tiledbsoma.io.from_h5ad`` (cached beside the file, X layer
``raw``). Matched randomness: tiledbsoma-ml shuffles chunks of 64 consecutive joinids and deals
IO batches of 1,024 cells (16 chunks) into minibatches, which is enhanced-dm's block 64 with a
pool of 16 blocks; both return sparse X (``return_sparse_X=True``; enhanced-dm: CSR). Rows are
skipped with a note where tiledbsoma or tiledbsoma-ml is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from common import EpochFactory, Minibatch

from peers import LoaderConfig, Settings, annbatch_loader
from peers.enhanced import LOADER_ONLY, enhanced_loader, import_error

BLOCK, POOL_BLOCKS = 64, 16


def soma_path(settings: Settings) -> Path:
    """Where the experiment made from ``settings.path`` is cached."""
    return settings.data_directory / f"{settings.path.stem}.soma"


def ingest(settings: Settings) -> float:
    """Ingest the file once (cached; a ``.complete`` marker); return the seconds spent now."""
    import tiledbsoma.io

    uri, marker = soma_path(settings), soma_path(settings).with_suffix(".soma.complete")
    if marker.exists() and uri.exists():
        return 0.0
    started = time.perf_counter()
    tiledbsoma.io.from_h5ad(str(uri), str(settings.path), "RNA", X_layer_name="raw")
    seconds = time.perf_counter() - started
    marker.write_text(f"{seconds:.1f}\n")
    return seconds


def soma_ml_loader(settings: Settings) -> EpochFactory:
    """tiledbsoma-ml's ExperimentDataset through its experiment_dataloader (shuffled)."""
    import tiledbsoma
    from tiledbsoma_ml import ExperimentDataset, experiment_dataloader

    experiment = tiledbsoma.Experiment.open(str(soma_path(settings)))
    query = experiment.axis_query(measurement_name="RNA")
    dataset = ExperimentDataset(
        query,
        layer_name="raw",
        obs_column_names=[settings.cell_type_key],
        batch_size=settings.batch_size,
        io_batch_size=BLOCK * POOL_BLOCKS,
        shuffle=True,
        shuffle_chunk_size=BLOCK,
        seed=settings.seed,
        return_sparse_X=True,
    )
    loader = experiment_dataloader(dataset)
    epochs = 0

    def epoch() -> Iterator[Minibatch]:
        nonlocal epochs
        dataset.set_epoch(epochs)
        epochs += 1
        for x, obs in loader:
            codes = obs[settings.cell_type_key].astype("category").cat.codes.to_numpy()
            yield Minibatch(x, codes)

    return epoch


def _missing(module: str) -> str:
    try:
        __import__(module)
    except ImportError as error:
        return f"{module} is not installed ({error})"
    return ""


def configs(settings: Settings) -> list[LoaderConfig]:
    """Both rows (the ingestion is counted in neither: it happens before, once)."""
    from enhanced_dm.data import SomaSource

    def ours() -> EpochFactory:
        ingest(settings)
        source = SomaSource(str(soma_path(settings)), layer="raw")
        return enhanced_loader(settings, True, BLOCK, data=source)

    def theirs() -> EpochFactory:
        ingest(settings)
        return soma_ml_loader(settings)

    def on_annbatch_zarr() -> EpochFactory:
        stores = sorted(str(path) for path in annbatch_loader.zarr_path(settings).glob("dataset_*"))
        return enhanced_loader(settings, True, BLOCK, data=stores)

    soma = _missing("tiledbsoma")
    converted = annbatch_loader.zarr_path(settings).with_name(
        annbatch_loader.zarr_path(settings).name + ".complete"
    )
    return [
        LoaderConfig(
            f"enhanced-dm backed b{BLOCK} (annbatch's zarr)",
            "enhanced",
            setup=on_annbatch_zarr,
            skip=import_error()
            or ("" if converted.exists() else "annbatch's store is not converted yet"),
            options={"backed": True, "block_size": BLOCK, "source": "zarr", **LOADER_ONLY},
        ),
        LoaderConfig(
            f"enhanced-dm backed b{BLOCK} (SOMA)",
            "enhanced",
            setup=ours,
            skip=import_error() or soma,
            options={"backed": True, "block_size": BLOCK, "source": "SOMA", **LOADER_ONLY},
        ),
        LoaderConfig(
            f"tiledbsoma-ml ExperimentDataset c{BLOCK} io{BLOCK * POOL_BLOCKS} (SOMA)",
            "peer",
            setup=theirs,
            skip=soma or _missing("tiledbsoma_ml"),
            options={"shuffle_chunk_size": BLOCK, "io_batch_size": BLOCK * POOL_BLOCKS},
        ),
    ]
