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
    and are moved into place with ``os.replace``, so readers and concurrent writers only ever see a
    whole file.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """The cached statistics for ``key``, or None when absent or not trustworthy."""
        path = self.path(key)
        if not path.exists():
            return None
        raw = path.read_bytes()
        header, _, payload = raw.partition(b"\n")
        fields = header.split(b" ")
        expected = [_MAGIC, str(CACHE_FORMAT_VERSION).encode(), key.encode()]
        if len(fields) != 4 or fields[:3] != expected:
            warnings.warn(f"statistics cache {path} has a foreign header; refitting", stacklevel=2)
            return None
        if hashlib.sha256(payload).hexdigest().encode() != fields[3]:
            warnings.warn(
                f"statistics cache {path} is corrupted (checksum); refitting", stacklevel=2
            )
            return None
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)

    def save(self, key: str, states: Mapping[str, Mapping[str, torch.Tensor]]) -> Path:
        """Write ``states`` atomically; returns the final path."""
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
