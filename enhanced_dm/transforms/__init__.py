"""Normalization transforms: one ``nn.Module`` per step, pure kernels in ``functional``."""

from enhanced_dm.transforms.base import FittableTransform, Pipeline, Transform
from enhanced_dm.transforms.center_scale import CenterScaleTransform
from enhanced_dm.transforms.densify import Densify, DensifyExpression
from enhanced_dm.transforms.grouped import GroupedTransform
from enhanced_dm.transforms.log1p import Log1p
from enhanced_dm.transforms.normalize_total import NormalizeTotal
from enhanced_dm.transforms.pearson import PearsonResiduals
from enhanced_dm.transforms.quantile import QuantileNormalize
from enhanced_dm.transforms.robust import RobustScale
from enhanced_dm.transforms.z_score import ZScore

__all__ = [
    "CenterScaleTransform",
    "Densify",
    "DensifyExpression",
    "FittableTransform",
    "GroupedTransform",
    "Log1p",
    "NormalizeTotal",
    "PearsonResiduals",
    "Pipeline",
    "QuantileNormalize",
    "RobustScale",
    "Transform",
    "ZScore",
]
