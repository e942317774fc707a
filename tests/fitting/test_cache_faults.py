"""The statistics cache: a corrupted or foreign file is detected and refitted, never loaded;
two processes fitting the same key concurrently leave one whole, correct file."""

from __future__ import annotations

import io
import multiprocessing as mp
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from enhanced_dm import BaseEnhancedDataModule
from enhanced_dm.fitting import fit_or_load as base_module
from enhanced_dm.fitting.cache import _MAGIC, CACHE_FORMAT_VERSION, StatsCache
from tests.helpers import shared_data

PBMC = "singlecell/pbmc68k_reduced_counts.h5ad"


def make_dm(cache_dir: Path, data: str | None = None) -> BaseEnhancedDataModule:
    """A pipeline whose only fitted statistic is the median library size of the train cells."""
    return BaseEnhancedDataModule(
        data=data or str(shared_data(PBMC)),
        normalization_type="none",
        target_sum="median",
        stats_cache_dir=cache_dir,
        batch_size=128,
        progress=False,
    )


def fitted_target(dm: BaseEnhancedDataModule) -> float:
    return float(dm.state_dict()["fitted"]["normalize_total"]["target_sum"])


def write_raw(path: Path, version: int, key: str, payload: bytes) -> None:
    """A cache file with a correct checksum over ``payload`` and the given header fields."""
    import hashlib

    header = b" ".join(
        [_MAGIC, str(version).encode(), key.encode(), hashlib.sha256(payload).hexdigest().encode()]
    )
    path.write_bytes(header + b"\n" + payload)


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


WRONG = {"normalize_total": {"target_sum": torch.tensor(12345.0, dtype=torch.float64)}}


def truncate(path: Path, key: str) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_payload_byte(path: Path, key: str) -> None:
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))


def flip_header_byte(path: Path, key: str) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(_MAGIC) + 5] ^= 0x01  # inside the key field
    path.write_bytes(bytes(raw))


def empty(path: Path, key: str) -> None:
    path.write_bytes(b"")


def other_key(path: Path, key: str) -> None:
    """A whole, checksummed file written for another key, with other statistics."""
    StatsCache(path.parent / "elsewhere").save("0" * 64, WRONG)
    (path.parent / "elsewhere" / f"{'0' * 64}.pt").replace(path)


def other_version(path: Path, key: str) -> None:
    write_raw(path, CACHE_FORMAT_VERSION + 1, key, torch_bytes(WRONG))


def not_a_torch_file(path: Path, key: str) -> None:
    write_raw(path, CACHE_FORMAT_VERSION, key, b"\x80\x04garbage that is not a zip archive")


def wrong_structure(path: Path, key: str) -> None:
    write_raw(path, CACHE_FORMAT_VERSION, key, torch_bytes([1, 2, 3]))


def foreign_transform(path: Path, key: str) -> None:
    write_raw(path, CACHE_FORMAT_VERSION, key, torch_bytes({"robust": {"a": torch.zeros(2)}}))


FAULTS: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "truncated": (truncate, "is corrupted \\(checksum"),
    "payload byte flipped": (flip_payload_byte, "is corrupted \\(checksum"),
    "header byte flipped": (flip_header_byte, "written for another key"),
    "empty file": (empty, "has a foreign header"),
    "other key": (other_key, "written for another key"),
    "other format version": (other_version, f"has format version '{CACHE_FORMAT_VERSION + 1}'"),
    "payload not a torch file": (not_a_torch_file, "does not load"),
    "payload of another shape": (wrong_structure, "does not hold"),
    "statistics of another pipeline": (foreign_transform, "does not fit this pipeline"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, str]:
    """The fitted median and the cache key of the clean fit."""
    dm = make_dm(tmp_path_factory.mktemp("clean"))
    dm.setup("fit")
    assert dm.stats_cache_path is not None
    return fitted_target(dm), dm.stats_cache_path.stem


@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_or_foreign_cache_is_refitted_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: tuple[float, str], fault: str
) -> None:
    expected, key = reference
    first = make_dm(tmp_path)
    first.setup("fit")
    path = tmp_path / f"{key}.pt"
    assert first.stats_cache_path == path
    damage, message = FAULTS[fault]
    damage(path, key)

    fits = []
    real_fit = base_module.fit_pipeline
    monkeypatch.setattr(
        base_module, "fit_pipeline", lambda *a, **k: fits.append(1) or real_fit(*a, **k)
    )
    second = make_dm(tmp_path)
    with pytest.warns(UserWarning, match=f"statistics cache .*{key}.pt .*{message}.*refitting"):
        second.setup("fit")
    assert len(fits) == 1
    assert fitted_target(second) == expected != 12345.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is whole again
        reloaded = StatsCache(tmp_path).load(key)
    assert reloaded is not None
    assert float(reloaded["normalize_total"]["target_sum"]) == expected


def test_a_clean_cache_is_loaded_without_refitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: tuple[float, str]
) -> None:
    make_dm(tmp_path).setup("fit")
    monkeypatch.setattr(base_module, "fit_pipeline", lambda *a, **k: pytest.fail("refitted"))
    second = make_dm(tmp_path)
    second.setup("fit")
    assert fitted_target(second) == reference[0]


def _fit_and_rewrite(cache_dir: str, data: str, barrier, queue, rewrites: int) -> None:
    """Child process: fit (both start together), then keep rewriting the same cache key."""
    torch.set_num_threads(1)  # as DataLoader workers do: a forked OpenMP pool would deadlock
    barrier.wait(timeout=120)
    dm = make_dm(Path(cache_dir), data)
    dm.setup("fit")
    key = dm.cache_key()
    states = dm.state_dict()["fitted"]
    for _ in range(rewrites):
        StatsCache(cache_dir).save(key, states)
    queue.put((key, fitted_target(dm)))


def test_two_processes_fitting_the_same_cache_do_not_corrupt_it(
    tmp_path: Path, reference: tuple[float, str]
) -> None:
    expected, key = reference
    # fork where there is one (no re-import of torch: fast); two real processes either way.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.get_context(method)
    barrier, queue = context.Barrier(2), context.Queue()
    data = str(shared_data(PBMC))
    workers = [
        context.Process(target=_fit_and_rewrite, args=(str(tmp_path), data, barrier, queue, 30))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    cache, reads = StatsCache(tmp_path), 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a half-written file would warn (checksum) here
        give_up = time.monotonic() + 300  # a hang guard, not a timing assertion
        while any(worker.is_alive() for worker in workers) and time.monotonic() < give_up:
            if cache.load(key) is not None:
                reads += 1
            time.sleep(0.002)  # leave the CPU to the writers
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
        assert [worker.exitcode for worker in workers] == [0, 0]
        results = [queue.get(timeout=10) for _ in workers]
        final = cache.load(key)
    assert results == [(key, expected), (key, expected)]
    assert final is not None and float(final["normalize_total"]["target_sum"]) == expected
    assert list(tmp_path.glob("*.tmp")) == []  # no temporary file left behind


def test_an_unwritable_cache_directory_warns_and_training_goes_on(tmp_path) -> None:
    from enhanced_dm import BaseEnhancedDataModule
    from tests.helpers import shared_data

    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be")
    dm = BaseEnhancedDataModule(
        data=shared_data("singlecell/pbmc68k_reduced_counts.h5ad"),
        stats_cache_dir=not_a_directory,
        progress=False,
    )
    with pytest.warns(UserWarning, match="cannot be written"):
        dm.setup("fit")
    assert dm.stats_cache_path is None
    assert dm.state_dict()["fitted"]["z_score"]["scale_g"].gt(0).all()
