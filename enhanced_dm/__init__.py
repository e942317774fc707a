"""enhanced-dm: Lightning DataModules that feed single-cell RNA-seq to PyTorch models."""

from enhanced_dm.callbacks import NormalizationStatsCallback
from enhanced_dm.components import (
    CompartmentComponent,
    Component,
    PathwayComponent,
    RegulatoryComponent,
    ResourceComponent,
    TemporalComponent,
)
from enhanced_dm.data import BlockShuffleSampler, CellStore
from enhanced_dm.datamodules import (
    BaseEnhancedDataModule,
    HierarchicalDataModule,
    RegulatoryDataModule,
    ResourceDataModule,
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
    RegulatoryDataLoader,
    ResourceDataLoader,
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
    "NonFiniteOutputError",
    "NormalizationStatsCallback",
    "PathwayComponent",
    "RegulatoryComponent",
    "RegulatoryDataLoader",
    "RegulatoryDataModule",
    "ResourceComponent",
    "ResourceDataLoader",
    "ResourceDataModule",
    "TemporalComponent",
    "TemporalDataLoader",
    "TemporalDataModule",
]
