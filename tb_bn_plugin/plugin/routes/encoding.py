"""The routes' JSON encoding of numbers: ``formatting.json_safe``, NaN/Inf as ``null``, rounded.

Values are rounded to ``SIGNIFICANT_DIGITS``, the precision of the float32
records they come from: shorter JSON, and serialising it is faster.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tb_bn_plugin.formatting import json_safe

# float32 records hold about 7 significant digits.
SIGNIFICANT_DIGITS = 7


def json_values(values: Any) -> Any:
    """A float array (any rank) or scalar as nested lists of floats, NaN/Inf as ``None``."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    rounded = np.where(finite, round_significant(np.where(finite, array, 0.0)), array)
    return json_safe(rounded, non_finite=None)


def round_significant(x: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits (the nearest doubles: they print short)."""
    magnitude = np.floor(np.log10(np.abs(x), out=np.zeros_like(x), where=x != 0))
    decimals = digits - 1 - magnitude
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 10.0 ** np.abs(decimals)  # exact up to 10**22; beyond, x stays as it is
        rounded = np.where(decimals >= 0, np.round(x * scale) / scale, np.round(x / scale) * scale)
    return np.where(np.abs(decimals) <= 22, rounded, x)


def last(values: np.ndarray) -> Optional[float]:
    """The last value, encoded (``None`` when there is none or it is not finite)."""
    return json_values(values[-1]) if len(values) else None
