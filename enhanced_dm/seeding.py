"""Counter-based pseudo-random numbers: splitmix64 on int64 tensors, and seeds mixed from keys.

Values that must be a fixed function of a key (a cell's subsample priority, a cell's noise
input at inference) are hashed from (seed, key) rather than drawn from a generator, so they do
not depend on batch order, batch size, workers, devices or the number of DDP ranks.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

__all__ = ["mix_seed", "shift_right", "signed", "splitmix64", "stream_id"]

_MASK64 = (1 << 64) - 1


def signed(value: int) -> int:
    """The int64 whose two's-complement bits are ``value`` (taken modulo 2**64)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finalizer on int64 tensors (wrapping arithmetic), bit-identical to uint64."""
    x = x + signed(0x9E3779B97F4A7C15)
    x = (x ^ shift_right(x, 30)) * signed(0xBF58476D1CE4E5B9)
    x = (x ^ shift_right(x, 27)) * signed(0x94D049BB133111EB)
    return x ^ shift_right(x, 31)


def stream_id(name: str) -> int:
    """A stable 32-bit number for a stream name (crc32: the same in every process and run)."""
    return zlib.crc32(name.encode("utf-8"))


def mix_seed(*entropy: int) -> int:
    """A 63-bit seed mixed from non-negative integers (numpy's ``SeedSequence``): changing any
    of them gives an unrelated seed."""
    words = np.random.SeedSequence([int(value) for value in entropy]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])
