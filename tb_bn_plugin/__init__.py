"""tb_bn_plugin: make BatchNormalization internals visible in TensorBoard.

Public API:
  * ``BatchNormCallback``: a Keras callback logging BN internals during ``fit``.
  * ``BatchNormLogger``: the same for custom ``tf.GradientTape`` loops.
  * ``read_stats`` / ``read_gap``: read logged statistics and gaps back as numpy arrays.
  * ``analyze_graph``: find BatchNorm sites and their train/inference switch in a GraphDef.
  * ``precise_stats`` / ``recalibrate`` / ``PreciseStatsMonitor``: population statistics.
"""

from tb_bn_plugin.callback import BatchNormCallback, NoBatchNormWarning
from tb_bn_plugin.data import read_gap, read_stats
from tb_bn_plugin.graph_analysis import analyze_graph
from tb_bn_plugin.logger import BatchNormLogger
from tb_bn_plugin.population import EmaError, RecalibrationReport
from tb_bn_plugin.precise import PreciseStatsMonitor, precise_stats, recalibrate
from tb_bn_plugin.probe import GapProbeWarning

__all__ = [
    "BatchNormCallback",
    "BatchNormLogger",
    "EmaError",
    "GapProbeWarning",
    "NoBatchNormWarning",
    "PreciseStatsMonitor",
    "RecalibrationReport",
    "analyze_graph",
    "precise_stats",
    "read_gap",
    "read_stats",
    "recalibrate",
]
