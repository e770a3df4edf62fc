"""The ``tb-bn`` command line: ``tb-bn report`` (``report``), ``tb-bn graph`` (``graph``).

Owns argument parsing, rendering for the terminal and exit statuses. May
import every layer below it (``reading``, ``diagnostics``, ``graph``, the
contract modules, ``numerics``); never ``training`` or ``plugin``.
TensorFlow's C++ start-up logging is silenced here, before anything can load
TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tb_bn_plugin.cli.main import main  # noqa: E402 (after the logging setting)

__all__ = ["main"]
