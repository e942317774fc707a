"""annbatch, run in its own venv (it needs Python >= 3.12; the project runs on 3.11).

Set up once with::

    /root/.pyenv/versions/3.12.1/bin/python -m venv benchmarks/.venv-annbatch
    benchmarks/.venv-annbatch/bin/pip install "annbatch[zarrs]"

annbatch does not need torch (its ``to="torch"`` output is optional and unused here), so none is
installed there. Each configuration runs :mod:`peers.annbatch_worker` in a fresh subprocess, which
times itself with the same loop and prints ``RESULT {json}``; the conversion of the ``.h5ad`` to
annbatch's pre-shuffled zarr collection is done once beforehand and cached in the data folder.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from common import Measurement

from peers import LoaderConfig, Settings

VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv-annbatch" / "bin" / "python"
WORKER = Path(__file__).resolve().parent / "annbatch_worker.py"
CHUNK_CONFIGS = ((64, 64), (32, 256))
"""(chunk_size, preload_nchunks): 64 x 64 buffers 16 batches of 256 like scDataset's fetch
factor 16; 32 x 256 is the README example of annbatch."""


def zarr_path(settings: Settings) -> Path:
    """Where the converted collection of ``settings.path`` is cached."""
    return settings.data_directory / f"{settings.path.stem}.annbatch.zarr"


def _worker(settings: Settings, extra: list[str], timeout_s: float) -> list[dict]:
    command = [
        str(VENV_PYTHON),
        str(WORKER),
        "--h5ad",
        str(settings.path),
        "--zarr",
        str(zarr_path(settings)),
        "--batch-size",
        str(settings.batch_size),
        "--seed",
        str(settings.seed),
        "--cell-type-key",
        settings.cell_type_key,
        *extra,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    results = [
        json.loads(line.removeprefix("RESULT "))
        for line in completed.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if completed.returncode != 0 or not results:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"annbatch worker failed ({completed.returncode}): {' | '.join(tail)}")
    return results


def convert(settings: Settings) -> float:
    """Convert the file once (cached); return the seconds this call spent."""
    return float(_worker(settings, ["--convert-only"], timeout_s=3600)[0]["conversion_s"])


def run_config(settings: Settings, chunk_size: int, preload_nchunks: int) -> Measurement:
    """Time one chunk configuration in a fresh worker process."""
    extra = [
        "--chunks",
        f"{chunk_size}x{preload_nchunks}",
        "--seconds",
        str(settings.seconds),
        "--min-batches",
        str(settings.min_batches),
        "--warmup-s",
        str(settings.warmup_s),
    ]
    payload = _worker(settings, extra, timeout_s=600 + 4 * settings.seconds)[0]
    options = payload.pop("options")
    measurement = Measurement(**{k: (float("nan") if v is None else v) for k, v in payload.items()})
    measurement.options = options
    return measurement


def configs(settings: Settings) -> list[LoaderConfig]:
    """One row per chunk configuration, or skipped rows when the venv is missing."""
    rows = []
    for chunk_size, preload_nchunks in CHUNK_CONFIGS:
        name = f"annbatch c{chunk_size} p{preload_nchunks} (zarr)"
        if not VENV_PYTHON.exists():
            rows.append(
                LoaderConfig(name, "peer", skip=f"no annbatch venv at {VENV_PYTHON.parent.parent}")
            )
            continue
        rows.append(
            LoaderConfig(
                name,
                "peer",
                run=lambda s, c=chunk_size, p=preload_nchunks: run_config(s, c, p),
                options={"chunk_size": chunk_size, "preload_nchunks": preload_nchunks},
            )
        )
    return rows
