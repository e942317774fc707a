"""The component contract: one piece of biological context a DataModule is built from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enhanced_dm.transforms.base import Transform

if TYPE_CHECKING:
    from enhanced_dm.data.store import CellStore

__all__ = ["Component"]


class Component:
    """Owns its options, reads its annotation files against the data's gene space in ``setup``,
    contributes transforms appended to the base pipeline, holds per-dataset constants (membership
    matrices, adjacency, names) and reports its statistics.

    * ``name``: short name; ``get_<name>_stats()`` on DataModules and loaders reads ``stats()``.
    * ``obs_columns()``: extra obs columns it needs in the batch (batch name -> obs column).
    * ``setup(store)``: read files, build constants; called once, before fitting.
    * ``transforms()``: ``(name, transform)`` pairs appended after the gene-wise normalization.
    * ``config()``: options that change fitted statistics (enters the cache key).
    * ``state_dict()`` / ``load_state_dict()``: constants and moving state saved in checkpoints.
    """

    name: str = "component"

    def obs_columns(self) -> dict[str, str]:
        return {}

    def setup(self, store: CellStore) -> None:
        """Read annotation files and build constants on ``store``'s gene space."""

    def transforms(self) -> list[tuple[str, Transform]]:
        return []

    def config(self) -> dict[str, Any]:
        return {}

    def stats(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
