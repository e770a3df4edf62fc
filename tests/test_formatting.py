"""The shared encodings: JSON numbers under both conventions, text tables."""

from __future__ import annotations

import json
import math

import numpy as np

from tb_bn_plugin.formatting import json_safe, text_table


def test_non_finite_as_strings_by_default():
    value = {"a": float("nan"), 2: [np.float32(np.inf), -math.inf, np.float64(1.5)]}
    assert json_safe(value) == {"a": "nan", "2": ["inf", "-inf", 1.5]}
    json.dumps(json_safe(value), allow_nan=False)


def test_non_finite_as_null_for_the_routes():
    value = np.array([[1.0, np.nan], [np.inf, 2.0]])
    assert json_safe(value, non_finite=None) == [[1.0, None], [None, 2.0]]
    assert json.dumps(json_safe({"x": np.nan}, non_finite=None), allow_nan=False) == '{"x": null}'


def test_numpy_scalars_become_python_numbers():
    out = json_safe([np.int64(3), np.bool_(True), np.float32(0.25), (1, 2), "text", None])
    assert out == [3, True, 0.25, [1, 2], "text", None]
    assert [type(v) for v in out[:3]] == [int, bool, float]


def test_text_table_aligns_columns_and_strips_trailing_blanks():
    lines = text_table([("bn_1", "16"), ("block/bn_long", "8")], ("layer", "ch"), indent="  ")
    assert lines == [
        "  layer          ch",
        "  bn_1           16",
        "  block/bn_long  8",
    ]


def test_text_table_of_no_rows_is_its_header():
    assert text_table([], ("layer", "count")) == ["layer  count"]
