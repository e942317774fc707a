"""Small reference LightningModules used by the ``enhanced-dm`` command, the notebooks and the tests."""

from enhanced_dm.models.autoencoder import ExpressionAutoencoder
from enhanced_dm.models.classifier import CellTypeClassifier
from enhanced_dm.models.features import CONTEXT_SUFFIXES, input_features
from enhanced_dm.models.hierarchical_gene import HierarchicalGeneModel

__all__ = [
    "CONTEXT_SUFFIXES",
    "CellTypeClassifier",
    "ExpressionAutoencoder",
    "HierarchicalGeneModel",
    "input_features",
]
