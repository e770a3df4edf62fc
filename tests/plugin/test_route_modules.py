"""The route modules' pure parts: parameters, JSON encoding, TensorBoard's errors in the shell."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorboard import errors

from tb_bn_plugin.plugin import loader
from tb_bn_plugin.plugin.routes import encoding, params


def test_required_parameter():
    assert params.required({"run": "train"}, "run") == "train"
    for args in ({}, {"run": ""}):
        with pytest.raises(errors.InvalidArgumentError, match="missing parameter 'run'") as info:
            params.required(args, "run")
        assert info.value.http_code == 400


def test_required_list_parameter():
    from werkzeug.datastructures import MultiDict

    assert params.required_list(MultiDict([("run", "a"), ("run", "b")]), "run") == ["a", "b"]
    with pytest.raises(errors.InvalidArgumentError, match="missing parameter 'run'"):
        params.required_list(MultiDict(), "run")
    with pytest.raises(errors.InvalidArgumentError, match="'run' must not be empty"):
        params.required_list(MultiDict([("run", "a"), ("run", "")]), "run")


@pytest.mark.parametrize(
    "raw, message",
    [
        ("abc", "parameter 'n' must be an integer, got 'abc'"),
        ("1.5", "must be an integer"),
        ("0x10", "must be an integer"),
        ("1", "parameter 'n' must be between 2 and 10, got 1"),
        ("11", "must be between 2 and 10"),
    ],
)
def test_int_parameter_rejects(raw, message):
    with pytest.raises(errors.InvalidArgumentError, match=message):
        params.int_param({"n": raw}, "n", 5, 2, 10)


def test_int_parameter_accepts():
    assert params.int_param({}, "n", 5, 2, 10) == 5
    assert params.int_param({"n": ""}, "n", None, 0) is None
    assert params.int_param({"n": "10"}, "n", 5, 2, 10) == 10
    assert params.int_param({"n": "123456"}, "n", 5, 0) == 123456
    with pytest.raises(errors.InvalidArgumentError, match="must be at least 0, got -1"):
        params.int_param({"n": "-1"}, "n", None, 0)


def _previous_json_values(values):
    """The routes' encoder before it was built on ``formatting.json_safe``: the reference."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    out = encoding.round_significant(np.where(finite, array, 0.0)).astype(object)
    out[~finite] = None
    return out.tolist()


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).normal(size=(7, 5)) * 10.0 ** np.arange(-12, 23, 7),
        np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, 1e300]),
        np.float32([0.1, 0.2, 1 / 3]),
        np.float64(2.0 / 3.0),
        np.float32(np.nan),
        [[1.25, None], [3.0, 4.0]],
        np.zeros((0, 4)),
    ],
)
def test_json_values_bytes_are_those_of_the_previous_encoder(values):
    new, old = encoding.json_values(values), _previous_json_values(values)
    dumped = json.dumps(new, allow_nan=False, separators=(",", ":"))
    assert dumped == json.dumps(old, allow_nan=False, separators=(",", ":"))


def test_json_values_round_to_seven_digits_with_null_for_non_finite():
    assert encoding.json_values([1.0, np.nan, np.inf, -np.inf, 0.0]) == [1.0, None, None, None, 0.0]
    assert encoding.json_values([0.28268021345, -3.14159265e-8, 12345678.9]) == [
        0.2826802,
        -3.141593e-08,
        12345680.0,
    ]
    assert encoding.json_values(np.float32(0.1)) == 0.1  # a scalar stays a scalar
    assert encoding.last(np.array([1.0, 2.0])) == 2.0 and encoding.last(np.array([])) is None


def test_json_value_lists_encode_each_array_as_json_values_does():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=64) * 1e3, np.array([]), np.array([np.nan]), [0.28268021345], []]
    assert encoding.json_value_lists(arrays) == [encoding.json_values(a) for a in arrays]
    assert encoding.json_value_lists([]) == []


def test_the_shell_answers_tensorboard_errors_with_the_bare_message():
    assert loader.error_message(errors.NotFoundError("unknown run 'a: b'")) == "unknown run 'a: b'"
    assert loader.error_message(errors.InvalidArgumentError("bad")) == "bad"
    assert loader.error_message(errors.NotFoundError()) == "Not found"


def test_the_graph_message_names_a_public_function():
    import tb_bn_plugin
    from tb_bn_plugin import summary

    assert tb_bn_plugin.write_graph is summary.write_graph
    assert "write_graph" in tb_bn_plugin.__all__
