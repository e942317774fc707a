"""annbatch, measured inside its own Python >= 3.12 venv; prints one JSON line per result.

Run by :mod:`peers.annbatch_loader` as
``benchmarks/.venv-annbatch/bin/python benchmarks/peers/annbatch_worker.py --h5ad ... --zarr ...``.
It converts the ``.h5ad`` once into annbatch's pre-shuffled, sharded zarr collection
(``DatasetCollection.add_adatas``, annbatch's defaults: shuffled, lz4 blosc, 64 cells per chunk),
then times ``annbatch.Loader`` with the same :func:`common.measure` loop as every other loader.
A ``complete`` marker beside the store lets later runs reuse the conversion.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import EpochFactory, Minibatch, measure


def convert(h5ad: Path, store: Path) -> float:
    """Convert ``h5ad`` into an annbatch collection at ``store``; return seconds (0 if cached)."""
    import anndata
    from annbatch import DatasetCollection

    marker = store.with_name(store.name + ".complete")
    if marker.exists() and store.exists():
        return 0.0
    if store.exists():
        shutil.rmtree(store)
    started = time.perf_counter()

    def load(path: object) -> anndata.AnnData:
        # X and the one obs column the benchmark needs, read in memory (the file fits).
        adata = anndata.read_h5ad(path)
        return anndata.AnnData(X=adata.X, obs=adata.obs[["cell_type"]], var=adata.var)

    DatasetCollection(str(store)).add_adatas([str(h5ad)], load_adata=load)
    seconds = time.perf_counter() - started
    marker.write_text(f"{seconds:.1f}\n")
    return seconds


def loader(
    store: Path,
    batch_size: int,
    chunk_size: int,
    preload_nchunks: int,
    seed: int,
    cell_type_key: str,
) -> EpochFactory:
    """``annbatch.Loader(chunk_size, preload_nchunks, shuffle=True)`` over the collection."""
    import anndata
    import numpy as np
    import zarr
    from annbatch import DatasetCollection, Loader

    try:
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    except Exception:  # zarrs is optional; annbatch says it matters for local disks
        warnings.warn("zarrs is not installed: annbatch runs on zarr's Python codecs", stacklevel=1)

    def load_columns(group: zarr.Group) -> anndata.AnnData:
        return anndata.AnnData(
            X=anndata.io.sparse_dataset(group["X"]),
            obs=anndata.io.read_elem(group["obs"])[[cell_type_key]],
        )

    with anndata.settings.override(remove_unused_categories=False):
        batches = Loader(
            batch_size=batch_size,
            chunk_size=chunk_size,
            preload_nchunks=preload_nchunks,
            shuffle=True,
            rng=np.random.default_rng(seed),
        ).use_collection(DatasetCollection(str(store), mode="r"), load_adata=load_columns)

    def epoch() -> Iterator[Minibatch]:
        for batch in batches:
            codes = batch["obs"][cell_type_key].cat.codes.to_numpy()
            yield Minibatch(batch["X"], codes)

    return epoch


def main() -> None:
    """Parse arguments, convert if needed, measure each chunk configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--h5ad", type=Path, required=True)
    parser.add_argument("--zarr", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunks", default="64x64", help="comma list of CHUNKxPRELOAD")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--min-batches", type=int, default=300)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cell-type-key", default="cell_type")
    parser.add_argument("--convert-only", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    convert(args.h5ad, args.zarr)
    if args.convert_only:
        print("RESULT " + json.dumps({"conversion_s": time.perf_counter() - started}), flush=True)
        return
    import annbatch

    for spec in args.chunks.split(","):
        chunk_size, preload_nchunks = (int(part) for part in spec.split("x"))
        options = {
            "chunk_size": chunk_size,
            "preload_nchunks": preload_nchunks,
            "store": "pre-shuffled zarr (annbatch DatasetCollection)",
            "conversion_s": float(args.zarr.with_name(args.zarr.name + ".complete").read_text()),
            "annbatch": annbatch.__version__,
            "python": sys.version.split()[0],
        }
        result = measure(
            f"annbatch c{chunk_size} p{preload_nchunks} (zarr)",
            lambda c=chunk_size, p=preload_nchunks: loader(
                args.zarr, args.batch_size, c, p, args.seed, args.cell_type_key
            ),
            seconds=args.seconds,
            min_batches=args.min_batches,
            warmup_s=args.warmup_s,
            options=options,
        )
        print("RESULT " + json.dumps(result.to_dict()), flush=True)


if __name__ == "__main__":
    main()
