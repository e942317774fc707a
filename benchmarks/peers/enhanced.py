"""enhanced-dm's own configurations: THE SLOT FOR OUR LOADER.

Rows: in memory and backed, block sizes 1 / 16 / 64 / 256, loader only (``normalization_type
="none"``, no per-cell / per-gene step); backed with ``direct_read=False`` (h5py span reads, what
compressed files get; an uncompressed file is read directly by default); plus backed block 64
with the base pipeline run on the CPU (total-count -> log1p -> z-score, i.e.
``dm.normalize(batch)`` on each batch), with dense counts (the default) and
with ``dense_counts=False``; and the floor of that row: loader batches made into one dense
float32 matrix and nothing else. Batches are dicts with ``counts_ng`` (torch sparse CSR),
``cell_type_n`` and ``cell_index_n``.

While ``enhanced_dm`` cannot be imported the rows are skipped with a note, so the runner still
measures the peers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from common import EpochFactory, Minibatch

from peers import LoaderConfig, Settings

BLOCK_SIZES = (1, 16, 64, 256)
NORMALIZATION_BLOCK_SIZE = 64
LOADER_ONLY = {
    "normalization_type": "none",
    "per_cell_normalization": False,
    "per_gene_normalization": False,
    "log1p": False,
}
CPU_PIPELINE = {
    "normalization_type": "z_score",
    "per_cell_normalization": True,
    "per_gene_normalization": True,
    "log1p": True,
}


def import_error() -> str:
    """Empty when ``enhanced_dm.BaseEnhancedDataModule`` imports, else why it does not."""
    try:
        from enhanced_dm import BaseEnhancedDataModule  # noqa: F401
    except Exception as error:  # any import-time failure of a library under construction
        return f"enhanced_dm is not importable yet ({type(error).__name__}: {error})"
    return ""


def enhanced_loader(
    settings: Settings,
    backed: bool,
    block_size: int,
    normalize: bool = False,
    num_workers: int = 0,
    stats_cache_dir: str | None = None,
    dense_output_only: bool = False,
    dense_counts_too: bool = False,
    data: Any = None,
    **options: Any,
) -> EpochFactory:
    """Build and set up ``BaseEnhancedDataModule``; each epoch iterates ``train_dataloader()``.

    With ``normalize`` every batch also goes through ``dm.normalize`` on the CPU
    and the yielded rows are the normalized dense ``x_ng``. The statistics cache is
    ``stats_cache_dir`` (the runner's, filled by its fitting measurement, so this row measures
    throughput, not fitting again) or a fresh temporary folder (fitting counted in the setup).
    With ``dense_output_only`` the loader-only batches are made into one dense float32 matrix
    the way a z-score writes its output (a background row per gene, stored values copied in) and
    nothing else: the least work any dense ``x_ng`` costs, the floor of the normalization row;
    with ``dense_counts_too`` the counts are also made dense (zeros + stored values), the floor of
    the default normalization row (which hands the model dense counts too). ``data`` replaces the file (another copy of the same cells: zarr stores, a SOMA experiment).
    """
    from enhanced_dm import BaseEnhancedDataModule
    from enhanced_dm.transforms import functional as F

    cache = stats_cache_dir or tempfile.mkdtemp(prefix="enhanced_dm_bench_")
    datamodule = BaseEnhancedDataModule(
        data=str(settings.path) if data is None else data,
        backed=backed,
        block_size=block_size,
        batch_size=settings.batch_size,
        val_fraction=0.0,
        num_workers=num_workers,
        cell_type_key=settings.cell_type_key,
        seed=settings.seed,
        stats_cache_dir=cache,
        progress=False,
        **(CPU_PIPELINE if normalize else LOADER_ONLY),
        **options,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    epochs = 0

    def epoch() -> Iterator[Minibatch]:
        nonlocal epochs
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epochs)
        epochs += 1
        background_g = torch.full((datamodule.store.n_genes,), -1.0)
        for batch in loader:
            if normalize:
                batch = datamodule.normalize(batch)
                yield Minibatch(batch["x_ng"], batch["cell_type_n"].numpy())
            elif dense_output_only:
                counts = batch["counts_ng"]
                values = F.map_stored_values(counts, counts.values().to(torch.float32))
                x_ng = F.densify(values, background_g)
                if dense_counts_too:
                    batch["counts_ng"] = F.densify(counts)
                yield Minibatch(x_ng, batch["cell_type_n"].numpy())
            else:
                yield Minibatch(batch["counts_ng"], batch["cell_type_n"].numpy())

    return epoch


def configs(
    settings: Settings, num_workers: int = 0, stats_cache_dir: str | None = None
) -> list[LoaderConfig]:
    """The enhanced-dm rows; skipped with the import error while the library is not ready.

    ``... buffer1`` sets ``shuffle_buffer=1`` (each batch = whole shuffled blocks), the
    randomness of the plain h5py block-shuffle reader, for a matched comparison.
    """
    reason = import_error()
    rows = []
    for backed in (True, False):
        for block_size in BLOCK_SIZES:
            mode = "backed" if backed else "in memory"
            rows.append(
                LoaderConfig(
                    f"enhanced-dm {mode} b{block_size}",
                    "enhanced",
                    setup=lambda b=backed, s=block_size: enhanced_loader(
                        settings, b, s, num_workers=num_workers
                    ),
                    skip=reason,
                    options={"backed": backed, "block_size": block_size, **LOADER_ONLY},
                )
            )
    for block_size in (1, 64):  # the h5py reader, which compressed files get
        rows.append(
            LoaderConfig(
                f"enhanced-dm backed b{block_size} h5py",
                "enhanced",
                setup=lambda s=block_size: enhanced_loader(
                    settings, True, s, num_workers=num_workers, direct_read=False
                ),
                skip=reason,
                options={
                    "backed": True,
                    "block_size": block_size,
                    "direct_read": False,
                    **LOADER_ONLY,
                },
            )
        )
    rows.append(
        LoaderConfig(
            "enhanced-dm backed b64 buffer1",
            "enhanced",
            setup=lambda: enhanced_loader(
                settings, True, 64, num_workers=num_workers, shuffle_buffer=1
            ),
            skip=reason,
            options={"backed": True, "block_size": 64, "shuffle_buffer": 1, **LOADER_ONLY},
        )
    )
    for suffix, dense_counts in (("", True), (", sparse counts", False)):
        rows.append(
            LoaderConfig(
                f"enhanced-dm backed b{NORMALIZATION_BLOCK_SIZE} + CPU normalization{suffix}",
                "enhanced",
                setup=lambda dense=dense_counts: enhanced_loader(
                    settings,
                    True,
                    NORMALIZATION_BLOCK_SIZE,
                    normalize=True,
                    num_workers=num_workers,
                    stats_cache_dir=stats_cache_dir,
                    dense_counts=dense,
                ),
                skip=reason,
                options={
                    "backed": True,
                    "block_size": NORMALIZATION_BLOCK_SIZE,
                    "dense_counts": dense_counts,
                    **CPU_PIPELINE,
                },
            )
        )
    for name, counts_too in (("one dense x_ng", False), ("dense x_ng + dense counts_ng", True)):
        rows.append(
            LoaderConfig(
                f"enhanced-dm backed b{NORMALIZATION_BLOCK_SIZE} + {name} (floor)",
                "enhanced",
                setup=lambda too=counts_too: enhanced_loader(
                    settings,
                    True,
                    NORMALIZATION_BLOCK_SIZE,
                    num_workers=num_workers,
                    dense_output_only=True,
                    dense_counts_too=too,
                ),
                skip=reason,
                options={"backed": True, "block_size": NORMALIZATION_BLOCK_SIZE, **LOADER_ONLY},
            )
        )
    return rows
