"""The routes' JSON encoding of numbers: ``formatting.json_safe``, NaN/Inf as ``null``, rounded.

Values are rounded to ``SIGNIFICANT_DIGITS``, the precision of the float32
records they come from: shorter JSON, and serialising it is faster.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def json_value_lists(arrays: Sequence[Any]) -> list[Any]:
    """``json_values`` of each 1-D array (or scalar, as a 1-element list), encoded in one pass.

    An overview encodes five short series per layer of 1,000: one call per
    array was a tenth of its time.
    """
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    encoded = json_values(np.concatenate(flat)) if flat else []
    ends = np.cumsum([len(a) for a in flat]).tolist()
    return [encoded[end - len(a) : end] for a, end in zip(flat, ends)]


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
