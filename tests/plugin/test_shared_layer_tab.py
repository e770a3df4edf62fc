"""A shared BatchNormalization layer in the plugin: the layer route's ``calls`` and the tab.

A real ``fit`` of Siamese towers on differently distributed inputs (one BN
layer called twice per step), served by a real ``tensorboard`` on 127.0.0.1:
the route's per-call means match numpy over the batch each call saw, and
headless Chromium shows the calls side by side with the ``shared-layer``
finding.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

import numpy as np
import pytest
from _browser import get_json, plugin_tab, requires_browser, tensorboard

D = 3


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """(logdir, x): a Siamese fit whose ``shared_bn`` sees x[:, :D], then x[:, D:], each step."""
    import tensorflow as tf

    from tb_bn_plugin import BatchNormCallback

    keras = tf.keras
    keras.utils.set_random_seed(0)
    root = str(tmp_path_factory.mktemp("shared"))
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0.5, 1.0, (32, D)), rng.normal(-2.0, 3.0, (32, D))], axis=1
    ).astype("float32")
    inp = keras.Input((2 * D,))
    shared = keras.layers.BatchNormalization(name="shared_bn")
    h = keras.layers.Concatenate()([shared(inp[:, :D]), shared(inp[:, D:])])
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse")
    model.fit(
        x,
        rng.normal(size=(32, 1)).astype("float32"),
        batch_size=32,
        epochs=6,
        shuffle=False,
        verbose=0,
        callbacks=[BatchNormCallback(root, log_every_n_steps=1)],
    )
    return root, x.astype(np.float64)


def test_layer_route_shows_every_call_and_the_finding(shared_run):
    root, x = shared_run
    with tensorboard(root, "false") as base:
        deadline, calls = time.time() + 120, None
        while time.time() < deadline and not calls:
            try:
                calls = get_json(
                    base
                    + "data/plugin/bn_internals/layer?"
                    + urlencode({"run": "train", "layer": "shared_bn"})
                )["calls"]
            except Exception:  # not loaded yet
                time.sleep(1)
    assert calls["steps"] == [1, 2, 3, 4, 5, 6]
    a, b = x[:, :D], x[:, D:]
    # Full batch, unshuffled: per call, the channel-mean of the batch mean is numpy's.
    np.testing.assert_allclose(calls["batch_mean"][0], [a.mean(0).mean()] * 6, rtol=1e-5)
    np.testing.assert_allclose(calls["batch_mean"][1], [b.mean(0).mean()] * 6, rtol=1e-5)
    np.testing.assert_allclose(calls["batch_variance"][1], [b.var(0).mean()] * 6, rtol=1e-4)
    shift = np.abs(a.mean(0) - b.mean(0)) / np.sqrt((a.var(0) + b.var(0)) / 2 + 1e-3)
    np.testing.assert_allclose(calls["mean_shift"], [np.median(shift)] * 6, rtol=1e-4)
    assert calls["finding"]["code"] == "shared-layer"


@requires_browser
def test_layer_detail_draws_the_calls_side_by_side(shared_run, tmp_path):
    root, _ = shared_run
    with tensorboard(root, "false") as base, plugin_tab(base) as (page, frame):
        frame.evaluate(
            "h => { location.hash = h; }",
            urlencode({"view": "layer", "run": "train", "layer": "shared_bn"}),
        )
        frame.wait_for_selector(
            '.layer-detail[data-layer="shared_bn"] [data-chart=calls-mean] canvas'
        )
        assert frame.get_attribute("[data-chart=calls-mean]", "data-series") == "2"
        assert frame.get_attribute("[data-chart=calls-variance]", "data-series") == "2"
        frame.wait_for_selector("[data-chart=calls-divergence] canvas")
        card = frame.wait_for_selector("[data-role=call-finding][data-code=shared-layer]")
        assert card.query_selector(".evidence tr[data-key=mean_shift]")
        page.screenshot(path=str(tmp_path / "shared-layer.png"))
