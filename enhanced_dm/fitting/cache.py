"""On-disk cache of fitted statistics: atomic writes, verified reads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CACHE_FORMAT_VERSION", "StatsCache", "fingerprint"]

CACHE_FORMAT_VERSION = 1
_MAGIC = b"ENHANCED-DM-STATS"


def fingerprint(*parts: Any) -> str:
    """Stable sha256 of JSON-serializable parts (data fingerprint, pipeline config, split)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class StatsCache:
    """Fitted statistics stored as ``<directory>/<key>.pt``.

    The file begins with one header line (magic, format version, key, sha256 of the payload), then
    the ``torch.save`` payload. A file whose header, key or checksum does not match is reported and
    ignored (the caller refits), never loaded. Writes go to a temporary file in the same directory
    (unique per writer, ``mkstemp``), are flushed to disk and moved into place with ``os.replace``
    (atomic on POSIX and Windows within one file system), so readers and concurrent writers only
    ever see a whole file: two processes fitting the same key both write, the last rename wins,
    and both files were complete and equal.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """The cached statistics for ``key``, or None when absent or not trustworthy.

        Refused (with a warning naming the file and the reason; the caller refits): an unreadable
        file, a header that is not ours or names another format version or key (a foreign file),
        a payload whose sha256 differs from the header's (truncated or corrupted), and a payload
        that does not unpickle (``weights_only=True``: no code runs) to ``{name: {key: Tensor}}``.
        """
        path = self.path(key)
        if not path.exists():
            return None
        try:
            raw = path.read_bytes()
        except OSError as error:
            return _refuse(path, f"cannot be read ({error})")
        header, _, payload = raw.partition(b"\n")
        fields = header.split(b" ")
        if len(fields) != 4 or fields[0] != _MAGIC:
            return _refuse(path, "has a foreign header (not an enhanced-dm statistics file)")
        if fields[1] != str(CACHE_FORMAT_VERSION).encode():
            return _refuse(
                path,
                f"has format version {fields[1].decode(errors='replace')!r}, "
                f"expected {CACHE_FORMAT_VERSION}",
            )
        if fields[2] != key.encode():
            return _refuse(path, "has a foreign header (written for another key)")
        if hashlib.sha256(payload).hexdigest().encode() != fields[3]:
            return _refuse(path, "is corrupted (checksum mismatch: truncated or altered)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols
                states = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors come in many types
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            return _refuse(path, f"does not load ({type(error).__name__}: {first_line})")
        if not _is_states(states):
            return _refuse(path, "does not hold {transform: {name: tensor}} statistics")
        return states

    def save(self, key: str, states: Mapping[str, Mapping[str, torch.Tensor]]) -> Path | None:
        """Write ``states`` atomically; returns the final path, or None (with a warning) when the
        directory cannot be written: the fitted statistics are still used, only not cached."""
        try:
            return self._write(key, states)
        except OSError as error:
            warnings.warn(
                f"statistics cache {self.directory} cannot be written ({error}); the fitted "
                "statistics are used but not cached",
                stacklevel=2,
            )
            return None

    def _write(self, key: str, states: Mapping[str, Mapping[str, torch.Tensor]]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({name: dict(state) for name, state in states.items()}, buffer)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest()
        header = b" ".join(
            [_MAGIC, str(CACHE_FORMAT_VERSION).encode(), key.encode(), digest.encode()]
        )
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(header + b"\n" + payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path(key))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return self.path(key)


def _refuse(path: Path, reason: str) -> dict[str, dict[str, torch.Tensor]] | None:
    """Warn that the cache file at ``path`` is ignored and why; None tells the caller to refit."""
    warnings.warn(f"statistics cache {path} {reason}; refitting", stacklevel=3)
    return None


def _is_states(states: Any) -> bool:
    """Whether ``states`` has the shape :meth:`StatsCache.save` writes."""
    return isinstance(states, dict) and all(
        isinstance(name, str)
        and isinstance(state, dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
        for name, state in states.items()
    )
