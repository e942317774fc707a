"""Measurement helpers shared by the runner and by peers that run in another venv.

Only the standard library and numpy are imported here, so the annbatch worker (Python 3.12, its
own venv) can use the very same measurement loop as the in-process loaders.

A loader under test is a zero-argument callable that returns an iterator over one epoch of
:class:`Minibatch` objects; :func:`measure` calls it again when an epoch ends.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Minibatch:
    """What every adapter yields: the rows as the loader built them, and cell-type codes.

    ``rows`` is kept (not only counted) so the loader cannot skip materializing the data;
    ``nnz`` is read from it so a loader that silently reads less than the others is noticed.
    """

    rows: Any
    cell_type_n: np.ndarray


EpochFactory = Callable[[], Iterator[Minibatch]]
NONZERO_SAMPLE_EVERY = 8


def _spin(started: Any) -> None:
    started.set()
    while True:
        pass


@contextlib.contextmanager
def busy_neighbour(enabled: bool = True) -> Iterator[None]:
    """A process spinning on one core for the duration of the block (when ``enabled``): real
    training nodes are never idle, so speed is also measured beside a busy neighbour."""
    if not enabled:
        yield
        return
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    neighbour = context.Process(target=_spin, args=(started,), daemon=True)
    neighbour.start()
    started.wait(timeout=60)  # a spawned interpreter takes a moment: measure only once it spins
    try:
        yield
    finally:
        neighbour.terminate()
        neighbour.join()


def machine(**versions: str) -> dict[str, Any]:
    """Platform, CPU count, torch version and threads (torch imported here, not at module level:
    the annbatch worker imports this module without it), plus ``versions`` of the peers."""
    import torch

    return {
        "platform": platform.platform(),
        "cpus": multiprocessing.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **versions,
    }


SYNTHETIC_DATA = Path(__file__).resolve().parent / "data" / "synthetic_100000x20000_2000.h5ad"


def run_benchmark(
    doc: str,
    measure: Callable[[argparse.Namespace], dict[str, Any]],
    options: Sequence[tuple[str, type, Any]] = (),
    data: Path = SYNTHETIC_DATA,
) -> None:
    """The command line of a benchmark script on ``data`` (default: the synthetic file):
    ``--busy``, ``--out`` and ``options`` (flag, type, default); ``measure(arguments)`` runs
    beside a busy neighbour when asked, and its result is written as JSON with the settings and
    the machine."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, kind, default in options:
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    if not data.exists():
        raise SystemExit(
            f"{data} is missing: python benchmarks/make_synthetic.py --cells 100000 "
            "--genes 20000 --nnz 2000"
        )
    with busy_neighbour(arguments.busy):
        result = measure(arguments)
    settings = {key: value for key, value in vars(arguments).items() if key != "out"}
    document = {"settings": {"data": data.name, **settings}, "environment": machine()}
    arguments.out.write_text(json.dumps({**document, **result}, indent=1))


def median_batch_ms(
    normalizers: dict[str, Callable[[dict[str, Any]], Any]],
    batches: list[dict[str, Any]] | dict[str, list[dict[str, Any]]],
    rounds: int = 3,
) -> dict[str, float]:
    """Median milliseconds of each ``normalize(batch)`` over ``rounds`` passes over ``batches``
    (after one warm-up call each). The configurations take turns round by round, so a drift of
    the machine (this VM's speed wanders by 10-30 % over minutes) hits them alike; each call
    gets a shallow copy, so stamped keys survive. ``batches`` may be one list per configuration
    (the same cells read by each, when their batches carry different keys)."""
    batches_of = batches if isinstance(batches, dict) else dict.fromkeys(normalizers, batches)
    times: dict[str, list[float]] = {name: [] for name in normalizers}
    for name, normalize in normalizers.items():
        normalize(dict(batches_of[name][0]))
    for _ in range(rounds):
        for name, normalize in normalizers.items():
            for batch in batches_of[name]:
                started = time.perf_counter()
                normalize(dict(batch))
                times[name].append(time.perf_counter() - started)
    return {name: 1e3 * float(np.median(values)) for name, values in times.items()}


def count_nonzeros(rows: Any) -> int:
    """Nonzeros of a scipy sparse matrix, a torch sparse/dense tensor or a numpy array."""
    if hasattr(rows, "nnz"):
        return int(rows.nnz)
    if hasattr(rows, "layout") and hasattr(rows, "values") and rows.layout != _torch_strided():
        return int(rows.values().numel())
    return int(np.count_nonzero(np.asarray(rows)))


def _torch_strided() -> Any:
    import torch

    return torch.strided


def shannon_entropy_bits(codes_n: np.ndarray) -> float:
    """Shannon entropy (bits) of the label distribution of one batch.

    .. math:: H = -\\sum_t p_t \\log_2 p_t, \\quad p_t = n_t / n
    """
    counts = np.bincount(np.asarray(codes_n, dtype=np.int64))
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log2(probabilities)).sum())


def reference_entropies(codes: np.ndarray, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Mean per-batch entropy of a fully random and of a sequential order, for scale."""
    rng = np.random.default_rng(seed)
    n_batches = min(200, max(1, codes.shape[0] // batch_size))
    random_entropy = np.mean(
        [
            shannon_entropy_bits(rng.choice(codes, batch_size, replace=False))
            for _ in range(n_batches)
        ]
    )
    sequential_entropy = np.mean(
        [
            shannon_entropy_bits(codes[start : start + batch_size])
            for start in range(0, codes.shape[0] - batch_size + 1, batch_size)
        ]
    )
    return {
        "random_order_entropy_bits": float(random_entropy),
        "sequential_order_entropy_bits": float(sequential_entropy),
        "max_entropy_bits": float(math.log2(len(np.unique(codes)))),
    }


# ------------------------------------------------------------------------------------------------
# Memory of the process tree
# ------------------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    """Map pid -> child pids, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants (from /proc)."""
    children = _children_map()
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, ()))
    return pids


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def tree_rss_bytes(root: int | None = None) -> int:
    """Resident set size of a process and all its descendants (DataLoader workers included).

    Uses psutil when it is installed, else /proc. Shared pages (e.g. copy-on-write after fork) are
    counted once per process, as ``ps`` does, so this is an upper bound.
    """
    root = os.getpid() if root is None else root
    try:
        import psutil
    except ImportError:
        return sum(_rss_bytes(pid) for pid in _tree_pids(root))
    try:
        process = psutil.Process(root)
        processes = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in processes:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


# ------------------------------------------------------------------------------------------------
# CPU used by other processes (the machine may be shared)
# ------------------------------------------------------------------------------------------------


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat, idle and iowait excluded)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s() -> float:
    """CPU seconds of this process, its reaped children and its live descendants."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    for pid in _tree_pids(os.getpid())[1:]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class ForeignCpuMeter:
    """Average number of cores that processes OUTSIDE this process tree kept busy.

    A benchmark on a shared machine is only as good as this number is small; it is stored with
    every row so a contaminated measurement can be recognised.
    """

    def __enter__(self) -> ForeignCpuMeter:
        self._started = time.perf_counter()
        self._busy = _machine_busy_s()
        self._own = _tree_cpu_s()
        self.foreign_cores = float("nan")
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self._started
        busy = _machine_busy_s() - self._busy
        own = _tree_cpu_s() - self._own
        self.foreign_cores = max(0.0, busy - own) / max(elapsed, 1e-9)


def foreign_cores_now(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over the next ``seconds`` (this process sleeps)."""
    with ForeignCpuMeter() as meter:
        time.sleep(seconds)
    return meter.foreign_cores


def tree_anonymous_bytes(root: int | None = None) -> int:
    """Anonymous resident memory (``RssAnon``: heap, buffers) of a process and its descendants.

    Unlike RSS it leaves out file pages mapped into the process: a memory-mapped file shows in
    RSS as the pages read so far, yet those are the kernel's page cache, shared and reclaimable.
    """
    total = 0
    for pid in _tree_pids(os.getpid() if root is None else root):
        try:
            with open(f"/proc/{pid}/status", "rb") as handle:
                total += next(
                    (
                        int(line.split()[1]) * 1024
                        for line in handle
                        if line.startswith(b"RssAnon:")
                    ),
                    0,
                )
        except OSError:
            pass
    return total


class PeakMemorySampler:
    """Sample the process tree's RSS and anonymous memory in a background thread; keep maxima."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.peak_anonymous_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes())
        self.peak_anonymous_bytes = max(self.peak_anonymous_bytes, tree_anonymous_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemorySampler:
        self.baseline_bytes = tree_rss_bytes()
        self.peak_bytes = self.baseline_bytes
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ------------------------------------------------------------------------------------------------
# The measurement loop
# ------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """Result of one loader configuration (all rates are per second of wall clock)."""

    name: str
    cells_per_s: float = float("nan")
    batches_per_s: float = float("nan")
    time_to_first_batch_s: float = float("nan")
    setup_s: float = float("nan")
    peak_rss_mb: float = float("nan")
    peak_rss_delta_mb: float = float("nan")
    peak_anonymous_mb: float = float("nan")
    mean_batch_entropy_bits: float = float("nan")
    mean_batch_size: float = float("nan")
    nnz_per_cell: float = float("nan")
    measured_s: float = float("nan")
    foreign_cpu_cores: float = float("nan")
    measured_batches: int = 0
    warmup_batches: int = 0
    epochs_started: int = 0
    status: str = "ok"
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return {
            key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in asdict(self).items()
        }


def measure(
    name: str,
    setup: Callable[[], EpochFactory],
    seconds: float,
    min_batches: int = 300,
    warmup_s: float = 2.0,
    warmup_batches: int = 20,
    max_seconds: float | None = None,
    options: dict[str, Any] | None = None,
) -> Measurement:
    """Time one loader: setup and first batch, warm-up, then steady state.

    ``setup`` opens files and builds the loader (counted in the time to first batch, and also
    reported alone as ``setup_s``); it returns the epoch factory.

    Steady state starts after ``warmup_batches`` batches AND ``warmup_s`` seconds, and runs until
    both ``seconds`` have passed and ``min_batches`` batches were timed, or ``max_seconds``
    (default ``3 * seconds``) have passed. An exhausted epoch is restarted (its restart cost
    counts, as in training). Peak RSS is sampled over the whole run, first batch included.
    """
    max_seconds = 3 * seconds if max_seconds is None else max_seconds
    result = Measurement(name=name, options=options or {})
    gc.collect()
    with PeakMemorySampler() as memory, ForeignCpuMeter() as foreign:
        started = time.perf_counter()
        make_epoch = setup()
        result.setup_s = time.perf_counter() - started
        iterator = make_epoch()
        result.epochs_started = 1
        first = next(iterator)
        result.time_to_first_batch_s = time.perf_counter() - started

        def next_batch() -> Minibatch:
            nonlocal iterator
            try:
                return next(iterator)
            except StopIteration:
                iterator = make_epoch()
                result.epochs_started += 1
                return next(iterator)

        del first
        warmup_started = time.perf_counter()
        warmed = 0
        while warmed < warmup_batches or time.perf_counter() - warmup_started < warmup_s:
            next_batch()
            warmed += 1
        result.warmup_batches = warmed

        cells = nonzeros = nonzero_cells = batches = 0
        entropy_sum = 0.0
        steady_started = time.perf_counter()
        elapsed = 0.0
        while (elapsed < seconds or batches < min_batches) and elapsed < max_seconds:
            batch = next_batch()
            n_cells = int(batch.cell_type_n.shape[0])
            cells += n_cells
            if batches % NONZERO_SAMPLE_EVERY == 0:  # counting a dense batch is not free
                nonzeros += count_nonzeros(batch.rows)
                nonzero_cells += n_cells
            entropy_sum += shannon_entropy_bits(batch.cell_type_n)
            batches += 1
            elapsed = time.perf_counter() - steady_started
        del iterator
    result.measured_s = elapsed
    result.foreign_cpu_cores = foreign.foreign_cores
    result.measured_batches = batches
    result.cells_per_s = cells / elapsed
    result.batches_per_s = batches / elapsed
    result.mean_batch_entropy_bits = entropy_sum / batches
    result.mean_batch_size = cells / batches
    result.nnz_per_cell = nonzeros / max(nonzero_cells, 1)
    result.peak_rss_mb = memory.peak_bytes / 2**20
    result.peak_rss_delta_mb = (memory.peak_bytes - memory.baseline_bytes) / 2**20
    result.peak_anonymous_mb = memory.peak_anonymous_bytes / 2**20
    if elapsed >= max_seconds and batches < min_batches:
        result.note = f"stopped at max_seconds={max_seconds:.0f} with {batches} batches"
    return result
