"""Text and JSON encodings shared by every layer: pure Python, imports nothing of the package.

Two JSON conventions exist on purpose, each a published contract:
``json_safe(value)`` writes non-finite floats as the strings ``"nan"``,
``"inf"``, ``"-inf"`` (findings, ``tb-bn report --json``), and
``json_safe(value, non_finite=None)`` writes them as ``null`` (the plugin's
routes, ``frontend/API.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Marker: non-finite floats become their ``str`` ("nan", "inf", "-inf").
AS_STRING = "string"


def json_safe(value: Any, non_finite: Any = AS_STRING) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, keys as strings.

    Non-finite floats become ``str(value)`` when ``non_finite`` is ``AS_STRING``
    (the default), else ``non_finite`` itself (``None`` gives JSON ``null``).
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v, non_finite) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return _numeric_array(value, non_finite)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v, non_finite) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isfinite(number):
            return number
        return str(number) if non_finite == AS_STRING else non_finite
    return value


def _numeric_array(array: np.ndarray, non_finite: Any) -> Any:
    """``json_safe`` of a bool, integer or float array (any rank), without a call per element."""
    if array.ndim == 0:
        return json_safe(array[()], non_finite)
    if array.dtype.kind != "f":
        return array.tolist()
    finite = np.isfinite(array)
    if finite.all():
        return array.tolist()
    out = array.astype(object)
    bad = ~finite
    out[bad] = [str(float(v)) for v in array[bad]] if non_finite == AS_STRING else non_finite
    return out.tolist()


def text_table(rows: Sequence[Sequence[Any]], header: Sequence[str], indent: str = "") -> list[str]:
    """Left-aligned columns separated by two spaces, header first; trailing blanks removed."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return [
        indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
        for row in (header, *rows)
    ]
