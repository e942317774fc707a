"""MemoryDataModule: the base plus moving per-state statistics and a bank of recent cells."""

from __future__ import annotations

from typing import ClassVar

from enhanced_dm.components.base import Component
from enhanced_dm.components.memory import MemoryComponent
from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = ["MemoryDataModule"]


class MemoryDataModule(BaseEnhancedDataModule):
    """Base DataModule plus a :class:`~enhanced_dm.components.memory.MemoryComponent`.

    ``x_ng`` is z-scored with per-state statistics that start from the train split's and move
    with training (exponential moving averages, ``memory_decay_rate`` the weight of the past;
    frozen outside training; saved in checkpoints). Batches carry ``memory_state_n``,
    ``memory_type_n``, ``memory_embedding_nd``, the bank (``memory_md``, ``memory_type_m``,
    ``memory_age_m``, ``memory_valid_m``, ``memory_weight_m``) and each cell's
    ``num_neighbors`` most similar slots of its memory type (``memory_neighbor_slot_nj``,
    ``memory_neighbor_cell_nj``, ``memory_neighbor_similarity_nj``). Training batches are
    written into the bank after retrieval. ``get_memory_stats()`` reports fill and age per bank,
    the drift of the moving statistics, the updates applied and the retrieval similarities.
    """

    component_classes: ClassVar[tuple[type[Component], ...]] = (MemoryComponent,)

    @property
    def memory(self) -> MemoryComponent:
        return self.component(MemoryComponent)
