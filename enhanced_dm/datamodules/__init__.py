"""LightningDataModules: the base and one short file per biological DataModule."""

from enhanced_dm.datamodules.base import BaseEnhancedDataModule
from enhanced_dm.datamodules.hierarchical import HierarchicalDataModule

__all__ = ["BaseEnhancedDataModule", "HierarchicalDataModule"]
