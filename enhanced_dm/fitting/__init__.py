"""Streaming statistics (torchmetrics), the fitting driver and the on-disk statistics cache."""

from enhanced_dm.fitting.cache import StatsCache, fingerprint
from enhanced_dm.fitting.count_totals import CountTotalsMetric
from enhanced_dm.fitting.driver import fit_pipeline, fitted_states, load_fitted_states
from enhanced_dm.fitting.moments import GroupedMomentsMetric, moments_to_mean_std
from enhanced_dm.fitting.rank_stats import QuantileStatsMetric, RobustStatsMetric
from enhanced_dm.fitting.subsample import CellSubsampleMetric, cell_priority, dkw_epsilon
from enhanced_dm.fitting.totals import MedianTotalMetric

__all__ = [
    "CellSubsampleMetric",
    "CountTotalsMetric",
    "GroupedMomentsMetric",
    "MedianTotalMetric",
    "QuantileStatsMetric",
    "RobustStatsMetric",
    "StatsCache",
    "cell_priority",
    "dkw_epsilon",
    "fingerprint",
    "fit_pipeline",
    "fitted_states",
    "load_fitted_states",
    "moments_to_mean_std",
]
