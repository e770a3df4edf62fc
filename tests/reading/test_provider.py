"""``reading.provider``: tensor decoding against TensorBoard's own, and the read sample."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.data import provider as tb_provider
from tensorboard.util import tensor_util

from tb_bn_plugin.reading.provider import TensorEvents, decode_tensor, evenly_spaced


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([1.5, -2.0, np.nan], dtype=np.float16),
        np.float64(3.25),
        np.arange(5, dtype=np.int64),
        np.zeros((0, 3), dtype=np.float32),
    ],
)
def test_decode_tensor_matches_tensorboard(array):
    proto = tensor_util.make_tensor_proto(array)
    decoded = decode_tensor(proto)
    expected = tensor_util.make_ndarray(proto)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(decoded, array)


def test_evenly_spaced():
    assert evenly_spaced(0, 5).tolist() == []
    assert evenly_spaced(3, 5).tolist() == [0, 1, 2]
    assert evenly_spaced(10, 1).tolist() == [9]
    assert evenly_spaced(10, 3).tolist() == [0, 4, 9]
    picked = evenly_spaced(5000, 1000)
    assert (
        len(picked) == len(set(picked.tolist())) == 1000 and picked[0] == 0 and picked[-1] == 4999
    )


def _protos(arrays):
    return [tensor_util.make_tensor_proto(a) for a in arrays]


def test_tensor_events_rows_from_joined_bytes_match_decoding_each_event():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=6).astype(np.float32) for _ in range(5)]
    packed = TensorEvents(range(5), _protos(arrays)).rows(6)
    expected = np.stack([tensor_util.make_ndarray(p) for p in _protos(arrays)]).astype(np.float64)
    assert packed.dtype == np.float64
    np.testing.assert_array_equal(packed, expected)
    # Mixed dtypes (no joined read) and already decoded arrays give the same rows.
    mixed = [*arrays[:2], arrays[2].astype(np.float64), *arrays[3:]]
    np.testing.assert_array_equal(TensorEvents(range(5), _protos(mixed)).rows(6), expected)
    np.testing.assert_array_equal(TensorEvents(range(5), arrays).rows(6), expected)


def test_tensor_events_rows_name_an_event_of_another_size():
    arrays = [np.zeros(4, np.float32), np.zeros(3, np.float32), np.zeros(5, np.float32)]
    with pytest.raises(ValueError, match="event at step 11 holds 3 values, layout expects 4"):
        TensorEvents([10, 11, 12], _protos(arrays)).rows(4)


def test_tensor_events_last_per_step_and_from_tensor_data():
    data = [
        tb_provider.TensorDatum(step, 0.0, np.array([value], np.float32))
        for step, value in [(3, 1.0), (1, 2.0), (3, 3.0), (2, 4.0)]
    ]
    events = TensorEvents.of(data)
    assert events.in_step_order().steps.tolist() == [1, 2, 3, 3]
    kept = events.last_per_step()
    assert kept.steps.tolist() == [1, 2, 3]
    assert kept.rows(1)[:, 0].tolist() == [2.0, 4.0, 3.0]
    assert float(kept.tensor(-1)[0]) == 3.0
