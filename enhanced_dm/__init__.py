"""enhanced-dm: Lightning DataModules that feed single-cell RNA-seq to PyTorch models."""

from enhanced_dm.callbacks import NormalizationStatsCallback
from enhanced_dm.components import Component
from enhanced_dm.data import BlockShuffleSampler, CellStore
from enhanced_dm.datamodules import BaseEnhancedDataModule
from enhanced_dm.errors import (
    AnnotationFileError,
    ConfigError,
    DataFileError,
    EnhancedDMError,
    FittingError,
    NonFiniteOutputError,
)
from enhanced_dm.loaders import BaseEnhancedLoader

__all__ = [
    "AnnotationFileError",
    "BaseEnhancedDataModule",
    "BaseEnhancedLoader",
    "BlockShuffleSampler",
    "CellStore",
    "Component",
    "ConfigError",
    "DataFileError",
    "EnhancedDMError",
    "FittingError",
    "NonFiniteOutputError",
    "NormalizationStatsCallback",
]
