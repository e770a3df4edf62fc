"""tb_bn_plugin: make BatchNormalization internals visible in TensorBoard.

Public API:
  * ``BatchNormCallback``: a Keras callback logging BN internals during ``fit``.
  * ``read_stats``: read logged per-channel statistics back as numpy arrays.
"""

from tb_bn_plugin.callback import BatchNormCallback, NoBatchNormWarning
from tb_bn_plugin.data import read_stats

__all__ = ["BatchNormCallback", "NoBatchNormWarning", "read_stats"]
