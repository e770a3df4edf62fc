"""``layer_view.at_channel_steps``: per-step values at the snapshot steps, checked one by one."""

from __future__ import annotations

import numpy as np
import pytest

from tb_bn_plugin.diagnostics import layer_view
from tb_bn_plugin.series import LayerConfig, LayerSeries


def _layer(steps, channel_steps) -> LayerSeries:
    config = LayerConfig("bn", 0, 2, -1, 0.99, 1e-3, True, True)
    return LayerSeries(
        config=config,
        steps=np.asarray(steps, dtype=np.int64),
        info={},
        summary={},
        channel_steps=np.asarray(channel_steps, dtype=np.int64),
        channels={},
    )


def _one_by_one(steps, channel_steps, values) -> list[float]:
    """The value at the last position of each snapshot step among ``steps``, else NaN."""
    out = []
    for s in channel_steps:
        positions = [i for i, step in enumerate(steps) if step == s]
        out.append(float(values[positions[-1]]) if positions else float("nan"))
    return out


@pytest.mark.parametrize(
    "steps, channel_steps",
    [
        ([10, 20, 30, 40], [10, 30, 40]),
        ([10, 20, 30], [5, 20, 35]),  # before, between and after the logged steps
        ([30, 10, 20, 20], [20, 10, 30, 15]),  # unsorted, a repeated step: its last value
        ([], [10, 20]),
        ([10, 20], []),
    ],
)
def test_at_channel_steps_matches_a_lookup_per_step(steps, channel_steps):
    values = np.arange(len(steps), dtype=np.float64) * 1.5 + 1
    got = layer_view.at_channel_steps(_layer(steps, channel_steps), values)
    np.testing.assert_array_equal(got, _one_by_one(steps, channel_steps, values))
    assert got.shape == (len(channel_steps),)
