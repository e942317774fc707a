"""Streaming statistics (torchmetrics), the fitting driver and the on-disk statistics cache."""

from enhanced_dm.fitting.cache import StatsCache, fingerprint
from enhanced_dm.fitting.driver import fit_pipeline, fitted_states, load_fitted_states
from enhanced_dm.fitting.moments import GroupedMomentsMetric, moments_to_mean_std
from enhanced_dm.fitting.totals import MedianTotalMetric

__all__ = [
    "GroupedMomentsMetric",
    "MedianTotalMetric",
    "StatsCache",
    "fingerprint",
    "fit_pipeline",
    "fitted_states",
    "load_fitted_states",
    "moments_to_mean_std",
]
