"""LightningDataModules: the base and one short file per biological DataModule."""

from enhanced_dm.datamodules.base import BaseEnhancedDataModule

__all__ = ["BaseEnhancedDataModule"]
