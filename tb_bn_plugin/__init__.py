"""tb_bn_plugin: make BatchNormalization internals visible in TensorBoard.

Public API:
  * ``BatchNormCallback``: a Keras callback logging BN internals during ``fit``.
  * ``BatchNormLogger``: the same for hand-written loops (``tf.GradientTape``, JAX, PyTorch).
  * ``read_stats`` / ``read_gap``: read logged statistics and gaps back as numpy arrays.
  * ``analyze_graph``: find BatchNorm sites and their train/inference switch in a GraphDef.
  * ``write_graph``: store a GraphDef as a run's graph (what the BN Internals graph view reads).
  * ``precise_stats`` / ``recalibrate`` / ``PreciseStatsMonitor``: population statistics.

Names are imported on first use, so ``tb_bn_plugin.cli`` (the ``tb-bn`` command)
 can configure TensorFlow's logging before TensorFlow loads.
"""

import importlib
from typing import Any

_EXPORTS = {
    "BatchNormCallback": "tb_bn_plugin.training.callback",
    "NoBatchNormWarning": "tb_bn_plugin.training.callback",
    "BatchNormLogger": "tb_bn_plugin.training.logger",
    "read_stats": "tb_bn_plugin.reading.load",
    "read_gap": "tb_bn_plugin.reading.load",
    "analyze_graph": "tb_bn_plugin.diagnostics.graph",
    "report_graph": "tb_bn_plugin.diagnostics.graph",
    "trace_model_graph": "tb_bn_plugin.training.graph_trace",
    "load_graph_def": "tb_bn_plugin.graph.load",
    "write_graph": "tb_bn_plugin.summary",
    "EmaError": "tb_bn_plugin.numerics.ema",
    "RecalibrationReport": "tb_bn_plugin.numerics.ema",
    "PreciseStatsMonitor": "tb_bn_plugin.training.precise",
    "precise_stats": "tb_bn_plugin.training.precise",
    "recalibrate": "tb_bn_plugin.training.precise",
    "GapProbeWarning": "tb_bn_plugin.training.gap_probe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tb_bn_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
