"""torchmetrics that watch transform outputs; ``get_normalization_stats()`` reads them."""

from enhanced_dm.monitors.input_stats import InputStatsMetric
from enhanced_dm.monitors.output_stats import OutputStatsMetric
from enhanced_dm.monitors.pipeline_monitor import PipelineMonitor

__all__ = ["InputStatsMetric", "OutputStatsMetric", "PipelineMonitor"]
