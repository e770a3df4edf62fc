"""``reading.provider``: tensor decoding against TensorBoard's own, and the read sample."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.util import tensor_util

from tb_bn_plugin.reading.provider import decode_tensor, evenly_spaced


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
