"""Loader adapters for the benchmark: each module offers ``configs(settings) -> list[LoaderConfig]``.

An adapter turns one loader into the common shape the runner times: a setup callable that
opens files / builds the loader once (counted in the time to first batch) and returns an epoch
factory, i.e. a zero-argument callable yielding :class:`~common.Minibatch` objects for one epoch.
Peers that need another interpreter provide ``run`` instead, which returns a finished
:class:`~common.Measurement` (the annbatch worker measures itself with the same loop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import EpochFactory, Measurement

__all__ = ["LoaderConfig", "Settings"]


@dataclass(frozen=True)
class Settings:
    """What every configuration shares: the file, the batch size, the timing budget."""

    path: Path
    batch_size: int = 256
    seed: int = 0
    seconds: float = 30.0
    min_batches: int = 300
    warmup_s: float = 2.0
    cell_type_key: str = "cell_type"
    data_directory: Path = Path(__file__).resolve().parent.parent / "data"


@dataclass
class LoaderConfig:
    """One row of the results table.

    ``kind`` is ``"enhanced"`` (ours), ``"peer"`` (another library) or ``"limit"`` (plain h5py
    reads, the hardware bound). Exactly one of ``setup`` / ``run`` is set unless ``skip`` says
    why the configuration cannot run here.
    """

    name: str
    kind: str
    setup: Callable[[], EpochFactory] | None = None
    run: Callable[[Settings], Measurement] | None = None
    skip: str = ""
    options: dict[str, Any] = field(default_factory=dict)
