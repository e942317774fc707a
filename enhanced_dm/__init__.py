"""enhanced-dm: Lightning DataModules that feed single-cell RNA-seq to PyTorch models."""

from enhanced_dm.callbacks import NormalizationStatsCallback
from enhanced_dm.components import (
    CompartmentComponent,
    Component,
    MemoryComponent,
    PathwayComponent,
    RegulatoryComponent,
    ResourceComponent,
    StochasticComponent,
    TemporalComponent,
)
from enhanced_dm.data import BlockShuffleSampler, CellStore
from enhanced_dm.datamodules import (
    BaseEnhancedDataModule,
    HierarchicalDataModule,
    MemoryDataModule,
    RegulatoryDataModule,
    ResourceDataModule,
    StochasticDataModule,
    TemporalDataModule,
)
from enhanced_dm.errors import (
    AnnotationFileError,
    ConfigError,
    DataFileError,
    EnhancedDMError,
    FittingError,
    NonFiniteOutputError,
)
from enhanced_dm.loaders import (
    BaseEnhancedLoader,
    HierarchicalDataLoader,
    MemoryDataLoader,
    RegulatoryDataLoader,
    ResourceDataLoader,
    StochasticDataLoader,
    TemporalDataLoader,
)

__all__ = [
    "AnnotationFileError",
    "BaseEnhancedDataModule",
    "BaseEnhancedLoader",
    "BlockShuffleSampler",
    "CellStore",
    "CompartmentComponent",
    "Component",
    "ConfigError",
    "DataFileError",
    "EnhancedDMError",
    "FittingError",
    "HierarchicalDataLoader",
    "HierarchicalDataModule",
    "MemoryComponent",
    "MemoryDataLoader",
    "MemoryDataModule",
    "NonFiniteOutputError",
    "NormalizationStatsCallback",
    "PathwayComponent",
    "RegulatoryComponent",
    "RegulatoryDataLoader",
    "RegulatoryDataModule",
    "ResourceComponent",
    "ResourceDataLoader",
    "ResourceDataModule",
    "StochasticComponent",
    "StochasticDataLoader",
    "StochasticDataModule",
    "TemporalComponent",
    "TemporalDataLoader",
    "TemporalDataModule",
]
