"""Reading cells: stores over h5ad/AnnData, the block-shuffle sampler and CSR batches."""

from enhanced_dm.data.collate import CellBatchDataset, make_dataloader
from enhanced_dm.data.sampler import BlockShuffleSampler
from enhanced_dm.data.soma_source import SomaSource
from enhanced_dm.data.store import CellStore

__all__ = [
    "BlockShuffleSampler",
    "CellBatchDataset",
    "CellStore",
    "SomaSource",
    "make_dataloader",
]
