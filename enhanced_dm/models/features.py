"""What the reference models read from a batch: ``x_ng`` plus the per-cell context features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from enhanced_dm.errors import ConfigError

__all__ = ["CONTEXT_SUFFIXES", "context_keys", "input_features"]

# Axis suffixes (DESIGN.md "The batch") of per-cell feature matrices a biological DataModule adds:
# pathways / gene sets, compartments, regulators, feature dimensions.
CONTEXT_SUFFIXES: tuple[str, ...] = ("_np", "_nk", "_nr", "_nd")


def context_keys(
    batch: Mapping[str, object], suffixes: Sequence[str] = CONTEXT_SUFFIXES
) -> list[str]:
    """Sorted keys of ``batch`` that hold per-cell context features (2-D, one row per cell)."""
    return sorted(
        key
        for key, value in batch.items()
        if key.endswith(tuple(suffixes)) and isinstance(value, torch.Tensor) and value.ndim == 2
    )


def input_features(
    batch: Mapping[str, torch.Tensor],
    input_key: str = "x_ng",
    suffixes: Sequence[str] = CONTEXT_SUFFIXES,
) -> torch.Tensor:
    """``[x_ng | context_1 | context_2 | ...]`` as one float32 ``(n, g + sum of context dims)`` matrix.

    Context keys are taken in sorted order, so the columns are the same in every batch.
    """
    if input_key not in batch:
        raise ConfigError(
            f"the batch has no {input_key!r} (keys: {sorted(batch)}); the model reads the "
            "normalized expression that the DataModule's pipeline writes"
        )
    x_ng = batch[input_key]
    if x_ng.ndim != 2:
        raise ConfigError(
            f"batch[{input_key!r}] has shape {tuple(x_ng.shape)}; the reference models take one "
            "row per cell (2-D)"
        )
    parts = [x_ng] + [batch[key] for key in context_keys(batch, suffixes)]
    return torch.cat([part.to(torch.float32) for part in parts], dim=1)
