"""Monitors merged across processes: DataLoader workers publish their states, the main process
merges them.

A DataLoader worker normalizes with a copy of the DataModule's monitors, so what it counts never
reaches the main process. :class:`WorkerMonitorStates` lets each worker publish the cumulative
state of its copy after every batch (one flat float64 vector, :func:`state_vector`, in a file
of its own in a temporary directory owned by the main process), and lets the main process read
them back and merge them into a copy of its own monitors (:func:`merged`) with torchmetrics'
``Metric.merge_state``: each state is reduced by its ``dist_reduce_fx`` (sums added, minima and
maxima taken), exactly as DDP ranks are.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric

__all__ = ["WorkerMonitorStates", "merged", "monitor_metrics", "state_vector"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_HEADER = 8  # bytes: the int64 sequence number that starts each published file
_READ_TIMEOUT_S = 10.0  # a worker's write takes microseconds; longer means it died mid-write


def monitor_metrics(module: nn.Module) -> list[Metric]:
    """The metrics of ``module`` in registration order (the same in every copy of it); a
    metric with a list state (``dist_reduce_fx="cat"``) is refused: it has no fixed layout."""
    metrics = [metric for metric in module.modules() if isinstance(metric, Metric)]
    for metric in metrics:
        for name, value in metric.metric_state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{type(metric).__name__}.{name} is a list state; only tensor states can "
                    "be merged across processes"
                )
    return metrics


def _tensor_states(metric: Metric) -> dict[str, torch.Tensor]:
    """``metric.metric_state``, typed: :func:`monitor_metrics` refuses list states."""
    return metric.metric_state  # type: ignore[return-value]


def state_vector(metrics: Sequence[Metric]) -> np.ndarray:
    """The update count of each metric, then each metric's states flattened, as one float64
    vector (on the CPU).

    Counts and sums stay exact below 2**53. :func:`merged` reads it with the layout of its own
    copy of the monitor, so both must hold the same metrics with states of equal shapes. One
    concatenation, no per-state conversion: this runs after every batch of a worker.
    """
    states = [state for metric in metrics for state in _tensor_states(metric).values()]
    device = states[0].device if states else None
    counts = torch.tensor([m.update_count for m in metrics], dtype=torch.float64, device=device)
    flat = torch.cat([counts, *(state.reshape(-1) for state in states)])
    return flat.to("cpu", torch.float64).numpy()


def merged(module: ModuleT, vectors: Sequence[np.ndarray]) -> ModuleT:
    """A copy of ``module`` whose metrics hold their own states merged with each vector's
    (:func:`state_vector` of copies of the module); ``module`` is left as it is."""
    result = copy.deepcopy(module)
    metrics = monitor_metrics(result)
    expected = len(metrics) + sum(
        state.numel() for metric in metrics for state in _tensor_states(metric).values()
    )
    for vector in vectors:
        if vector.shape != (expected,):
            raise ValueError(
                f"a published monitor state has {vector.size} values, this monitor's layout "
                f"{expected}: the processes do not share one monitor"
            )
        values = torch.from_numpy(vector)
        offset = len(metrics)
        for metric, updates in zip(metrics, vector[: len(metrics)].tolist(), strict=True):
            incoming = {}
            for name, state in _tensor_states(metric).items():
                part = values[offset : offset + state.numel()].reshape(state.shape)
                incoming[name] = part.to(device=state.device, dtype=state.dtype)
                offset += state.numel()
            metric.merge_state(incoming)
            # merge_state (torchmetrics 1.x) neither adds the incoming update count nor drops
            # the cached compute() result; compute() needs both to see the merge.
            metric._update_count += int(updates)
            metric._computed = None
    return result


@dataclass
class _Writer:
    """A worker's published file for one generation: the metrics it copies and the seqlock."""

    generation: int
    fd: int | None  # None when the owner's directory is gone: nobody reads any more
    metrics: list[Metric]
    sequence: int = 0


class WorkerMonitorStates:
    """The exchange between a main process and its DataLoader workers for one monitor.

    The main process creates it (with a fresh temporary directory). In a worker, call
    :meth:`start_batch` before normalizing and :meth:`publish` after; in the main process
    :meth:`collect` returns the latest state of every worker and :meth:`reset` forgets them.

    * A worker's first batch resets its copy of the monitor, so what the main process had
      counted before the worker was forked (or pickled, with ``spawn``) is not counted twice.
    * A generation counter in shared memory, bumped by :meth:`reset`, tells persistent workers
      to start over (a new file); a file of an older generation is ignored.
    * Publishing costs one vector of the states and three ``pwrite`` calls: each file starts
      with a sequence number, odd while the worker writes (a seqlock), so a reader never takes
      a half-written state and no file is created per batch.

    Picklable (a worker's copy shares the directory and the counter); a deep copy is a new
    exchange of its own. The directory is removed when the main process's object is
    garbage-collected or the interpreter exits.
    """

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="enhanced-dm-worker-stats-")
        # [generation, whether a worker ever normalized a batch], seen by every worker
        self._shared = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._writer: _Writer | None = None  # in a worker only
        weakref.finalize(self, _remove_directory, self.directory, os.getpid())

    def __deepcopy__(self, memo: dict[int, object]) -> WorkerMonitorStates:
        # Sharing the directory would mix the copy's workers with this one's.
        return WorkerMonitorStates()

    @property
    def workers_used(self) -> bool:
        """Whether a worker has normalized a batch since this exchange was made (even before
        the last :meth:`reset`)."""
        return bool(self._shared[1])

    def start_batch(self, monitor: nn.Module) -> None:
        """In a worker, before a batch: on the first batch and after the main process's
        :meth:`reset`, reset ``monitor`` (this process's copy) and open a new file."""
        generation = int(self._shared[0])
        if self._writer is not None and self._writer.generation == generation:
            return
        self._shared[1] = 1
        metrics = monitor_metrics(monitor)
        for metric in metrics:
            metric.reset()
        if self._writer is not None and self._writer.fd is not None:
            os.close(self._writer.fd)
        name = f"g{generation}-{os.getpid()}-{uuid.uuid4().hex}.f64"
        try:
            fd: int | None = os.open(
                os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
        except FileNotFoundError:
            fd = None
        self._writer = _Writer(generation, fd, metrics)

    def publish(self) -> None:
        """In a worker, after a batch: write the monitor's cumulative state."""
        writer = self._writer
        if writer is None:
            raise RuntimeError("call start_batch() before publish()")
        if writer.fd is None:
            return
        vector = state_vector(writer.metrics)
        writer.sequence += 1  # odd: writing
        os.pwrite(writer.fd, np.int64(writer.sequence).tobytes(), 0)
        os.pwrite(writer.fd, vector.tobytes(), _HEADER)
        writer.sequence += 1  # even: complete
        os.pwrite(writer.fd, np.int64(writer.sequence).tobytes(), 0)

    def collect(self) -> list[np.ndarray]:
        """The latest complete state each worker published since the last :meth:`reset`."""
        prefix = f"g{int(self._shared[0])}-"
        vectors = []
        for entry in self._entries():
            if entry.name.startswith(prefix) and entry.name.endswith(".f64"):
                vector = _read_published(entry.path)
                if vector is not None:
                    vectors.append(vector)
        return vectors

    def reset(self) -> None:
        """Forget every published state; workers start over at their next batch."""
        self._shared[0] += 1
        for entry in self._entries():
            try:
                os.remove(entry.path)
            except FileNotFoundError:
                continue

    def _entries(self) -> list[os.DirEntry[str]]:
        # Gone when this is an unpickled copy that outlived the owner: nothing was published.
        try:
            return list(os.scandir(self.directory))
        except FileNotFoundError:
            return []


def _read_published(path: str) -> np.ndarray | None:
    """The state in a worker's file, or None when it has published nothing yet. A seqlock read:
    taken when the sequence number is even and the same before and after reading the values."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # removed by a reset since it was listed
    try:
        deadline = time.monotonic() + _READ_TIMEOUT_S
        while time.monotonic() < deadline:
            before = os.pread(fd, _HEADER, 0)
            if len(before) < _HEADER or _sequence(before) == 0:
                return None
            if _sequence(before) % 2 == 0:
                values = os.pread(fd, os.fstat(fd).st_size - _HEADER, _HEADER)
                if os.pread(fd, _HEADER, 0) == before:
                    return np.frombuffer(values, dtype=np.float64).copy()
            time.sleep(0.0001)  # the worker is writing (or was descheduled mid-write)
    finally:
        os.close(fd)
    raise RuntimeError(f"{path}: a DataLoader worker stopped while publishing its statistics")


def _sequence(header: bytes) -> int:
    return int(np.frombuffer(header, dtype=np.int64)[0])


def _remove_directory(directory: str, owner_pid: int) -> None:
    # A forked worker inherits the finalizer with its copy of the object: only the owner removes.
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)
