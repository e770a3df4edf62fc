"""``graph.layers.site_layers``: graph sites named by op scope, mapped to the logged layer paths.

Over real traced graphs (``trace_model_graph``, as the callback writes them):
``keras.applications`` ResNet50 and MobileNetV2 (``weights=None``, nothing
downloads), a ``Sequential`` whose auto-named layers' scopes collide with
each other's names, nested sub-models with equally named layers, custom
layers holding a BN, a shared layer; and a step-functions run (JAX/PyTorch),
whose sites are named by layer path.
"""

from __future__ import annotations

import pytest

from tb_bn_plugin.graph.layers import site_layers
from tb_bn_plugin.graph.model import BNSite
from tb_bn_plugin.graph.sites import find_sites
from tb_bn_plugin.graph.step_functions import sites_of
from tb_bn_plugin.series import StepFunctions
from tb_bn_plugin.training.capture import find_batchnorm_layers
from tb_bn_plugin.training.graph_trace import trace_model_graph


def _traced(model):
    """The model's sites as the callback's graph gives them, and its logged layer paths."""
    sites = find_sites(trace_model_graph(model, train_step=False)).sites
    return sites, [ref.path for ref in find_batchnorm_layers(model)]


def _by_moving_variables(sites, paths, model_scope=""):
    """Independent answer for models whose variable paths are ``model_scope`` + layer path
    (layers built at the top level): the layer owning each site's moving mean."""
    owners = {}
    for site in sites:
        (mean,) = [v for v in site.moving_variables if v.endswith("/moving_mean")]
        owner = mean.removeprefix("variables/" + model_scope).removesuffix("/moving_mean")
        assert owner in paths
        owners[site.name] = owner
    return owners


@pytest.mark.parametrize("application", ["ResNet50", "MobileNetV2"])
def test_keras_applications(keras, application):
    model = getattr(keras.applications, application)(
        input_shape=(32, 32, 3), weights=None, classes=4
    )
    sites, paths = _traced(model)
    assert len(sites) == len(paths) == {"ResNet50": 53, "MobileNetV2": 52}[application]
    # The scopes are not the layer paths (model scope first, uniquified segments).
    assert not set(site.name for site in sites) & set(paths)
    mapped = site_layers(sites, paths)
    assert mapped == _by_moving_variables(sites, paths)
    assert sorted(mapped.values()) == sorted(paths)  # one site per layer, every layer
    if application == "ResNet50":
        assert mapped["resnet50_1/conv1_bn_1"] == "conv1_bn"


def test_sequential_auto_names_collide_with_scopes(keras):
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(4),
            layers.BatchNormalization(),
            layers.Dense(4),
            layers.BatchNormalization(),
            layers.BatchNormalization(name="bn_1"),
            layers.BatchNormalization(name="bn"),
        ]
    )
    sites, paths = _traced(model)
    mapped = site_layers(sites, paths)
    # The scope `batch_normalization_1` is the layer `batch_normalization`: names alone mislead.
    scoped_as_other = [name for name, path in mapped.items() if name.endswith("/" + path + "_1")]
    assert scoped_as_other
    assert mapped == _by_moving_variables(sites, paths, model_scope="sequential/")
    assert sorted(mapped.values()) == sorted(paths)


def test_nested_models_with_equal_layer_names(keras):
    layers = keras.layers

    def block(name, width):
        x = keras.Input((width,))
        return keras.Model(x, layers.BatchNormalization(name="bn")(layers.Dense(4)(x)), name=name)

    x = keras.Input((8,))
    y = layers.BatchNormalization(name="bn")(block("decoder", 4)(block("encoder", 8)(x)))
    sites, paths = _traced(keras.Model(x, y, name="outer"))
    assert sorted(paths) == ["bn", "decoder/bn", "encoder/bn"]
    # Every moving variable is `bn/...` (built outside the sub-models): only the scopes tell.
    assert {v.split("/")[1] for site in sites for v in site.moving_variables} == {"bn"}
    expected = {
        site.name: "encoder/bn"
        if "encoder" in site.name
        else "decoder/bn"
        if "decoder" in site.name
        else "bn"
        for site in sites
    }
    assert sorted(expected.values()) == sorted(paths)
    assert site_layers(sites, paths) == expected


def test_custom_layers_and_a_shared_layer(keras):
    layers = keras.layers

    class Block(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = layers.Dense(4)
            self.norm = layers.BatchNormalization(name="norm")

        def call(self, x, training=None):
            return self.norm(self.dense(x), training=training)

    x = keras.Input((8,))
    sites, paths = _traced(keras.Model(x, Block(name="block2")(Block(name="block")(x))))
    assert site_layers(sites, paths) == {
        site.name: "block2/norm" if "block2" in site.name else "block/norm" for site in sites
    }

    shared = layers.BatchNormalization(name="shared")
    x = keras.Input((8,))
    y = layers.Add()([shared(layers.Dense(8)(x)), shared(layers.Dense(8)(x))])
    sites, paths = _traced(keras.Model(x, y))
    assert len(sites) == 2  # one site per call, both the one layer's
    assert site_layers(sites, paths) == {site.name: "shared" for site in sites}


def test_step_function_sites_are_named_by_layer_path():
    described = StepFunctions(
        backend="jax",
        train_function="jax.jit(Sequential.train_step)",
        inference_function="jax.jit(Sequential.predict_step)",
        step=1,
        layers=["bn", "bn_1", "encoder/bn"],
        momentum=[0.99, 0.99, 0.99],
        moving_variables=[
            [f"{p}/moving_mean", f"{p}/moving_variance"] for p in ["bn", "bn_1", "bn"]
        ],
        updates_applied=[True, True, True],
    )
    sites = sites_of(described)
    assert site_layers(sites, described.layers) == {p: p for p in described.layers}


def test_unknown_and_ambiguous_sites_stay_unmapped():
    def site(name, *variables):
        return BNSite(name, "unswitched", [], [], moving_variables=list(variables))

    sites = [
        site("model_1/other_bn_1"),  # no such layer
        site("model_1/bn_1_1"),  # `bn_1` or `bn`, both read with one suffix off: no guess
        site("model_1/bn_2", "variables/bn/moving_mean"),  # the variable's owner decides
        site("model_1/x_1", "variables/y/moving_mean"),  # the name and the owner disagree
    ]
    assert site_layers(sites, ["bn", "bn_1", "x", "y"]) == {"model_1/bn_2": "bn"}
    assert site_layers(sites, []) == {}
