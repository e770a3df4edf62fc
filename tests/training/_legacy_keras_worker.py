"""Run by test_legacy_keras.py in a fresh process with ``TF_USE_LEGACY_KERAS=1`` (tf-keras).

``stats <[layer kwargs, log_every_n_steps] as JSON>``: one BatchNormalization layer on the
model input, trained with the callback on known batches; prints what was logged, what the
layer holds, and its precise statistics before / moving statistics after ``recalibrate``
and, for virtual batches, why a 6-sample probe batch is refused.
``shared <fused as JSON>``: one BatchNormalization layer called on two towers' inputs per
step (fused or not); prints each call's logged batch mean and the numpy means of its input.
``identical``: a model with every BN variant trained with and without the callback under
op determinism; prints whether the state matches bit for bit.
"""

import json
import os
import sys
import tempfile
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras
assert keras.__name__.startswith("tf_keras"), keras.__name__

from tb_bn_plugin import BatchNormCallback, precise_stats, recalibrate  # noqa: E402
from tb_bn_plugin.reading.load import load_runs  # noqa: E402
from tb_bn_plugin.reading.provider import open_logdir  # noqa: E402
from tb_bn_plugin.training.capture import find_batchnorm_layers  # noqa: E402
from tb_bn_plugin.training.compat import flavour_of  # noqa: E402
from tb_bn_plugin.training.gap_probe import GapProbe  # noqa: E402
from tb_bn_plugin.training.probe_batch import probe_batch_from_data  # noqa: E402


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    x = (rng.randn(n, 4, 4, 3) * [1, 2, 3] + [1, 2, 3]).astype("float32")
    return x, rng.randn(n, 1).astype("float32")


def stats(layer_kwargs: dict, log_every_n_steps: int = 1) -> dict:
    x, y = _data(32)
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 4, 3))
    bn = keras.layers.BatchNormalization(name="bn", momentum=0.8, **layer_kwargs)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(bn(inp)))
    model = keras.Model(inp, out)
    model.compile("sgd", "mse", metrics=["mae"])
    log_dir = tempfile.mkdtemp()
    callback = BatchNormCallback(log_dir, log_every_n_steps=log_every_n_steps)
    due: list[bool] = []  # per step: did the fused path measure the batch moments?

    class Due(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            due.append(callback._capture._due_value)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[callback, Due()]
        )
    run = load_runs(open_logdir(log_dir))["train"]
    layer, gap = run.layers["bn"], run.gap
    logged = {
        "layer_moving_mean": bn.moving_mean.numpy().ravel().tolist(),
        "layer_moving_variance": bn.moving_variance.numpy().ravel().tolist(),
        "layer_gamma": bn.gamma.numpy().ravel().tolist(),
        "layer_beta": bn.beta.numpy().ravel().tolist(),
    }
    if "virtual_batch_size" in layer_kwargs:
        refs = find_batchnorm_layers(model)
        try:
            GapProbe(model, refs, refs, probe_batch_from_data((x[:6], y[:6]), 6))
        except ValueError as err:
            logged["probe_error"] = str(err)
    precise = precise_stats(model, x, batch_size=16, progress=False)["bn"]
    recalibrate(model, x, batch_size=16, progress=False)
    return {
        **logged,
        "precise_mean": precise["mean"].tolist(),
        "precise_variance": precise["variance"].tolist(),
        "recalibrated_mean": bn.moving_mean.numpy().ravel().tolist(),
        "recalibrated_variance": bn.moving_variance.numpy().ravel().tolist(),
        "fused": bool(bn.fused),
        "flavours": [type(flavour_of(obj)).__name__ for obj in (model, bn)],
        "callback_base_is_tf_keras": issubclass(BatchNormCallback, keras.callbacks.Callback),
        "due": due,
        "warnings": [str(w.message) for w in caught if "BatchNormCallback" in str(w.message)],
        "steps": layer.steps.tolist(),
        "count": layer.info["count"].tolist(),
        **{
            stat: layer.channels[stat].tolist()
            for stat in ("batch_mean", "batch_variance", "moving_mean", "moving_variance")
        },
        "gap_steps": gap.steps.tolist(),
        "gap_local": gap.local["bn"].tolist(),
        "gap_local_derived": gap.local_derived["bn"].tolist(),
        "gap_train_loss": gap.train_loss.tolist(),
        "gap_inference_loss": gap.inference_loss.tolist(),
        "x": x.tolist(),
    }


def identical() -> dict:
    tf.config.experimental.enable_op_determinism()
    x, _ = _data(96)
    labels = np.random.RandomState(1).randint(0, 3, size=96)
    kwargs = {
        "log_every_n_steps": 1,
        "gap_every_n_steps": 2,
        "gap_attribution": True,
        "gap_scope": "model",
        "probe_size": 16,
    }
    log_dir = tempfile.mkdtemp()

    def train(with_callback: bool) -> tuple[list, dict, list[str]]:
        keras.utils.set_random_seed(7)
        inp = keras.Input((4, 4, 3))
        h = keras.layers.Conv2D(6, 3, padding="same")(inp)
        h = keras.layers.BatchNormalization(name="fused", momentum=0.9)(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Dropout(0.3)(h)
        h = keras.layers.BatchNormalization(name="unfused", fused=False, scale=False)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        h = keras.layers.Dense(8)(h)
        h = keras.layers.BatchNormalization(name="virtual", virtual_batch_size=8)(h)
        h = keras.layers.BatchNormalization(name="renorm", renorm=True)(h)
        model = keras.Model(inp, keras.layers.Dense(3)(h))
        model.compile(
            keras.optimizers.Adam(1e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        callbacks = [BatchNormCallback(log_dir, **kwargs)] if with_callback else []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(
                x,
                labels,
                batch_size=16,
                epochs=3,
                validation_split=0.25,
                verbose=0,
                callbacks=callbacks,
            )
        optimizer_variables = model.optimizer.variables
        if callable(optimizer_variables):
            optimizer_variables = optimizer_variables()
        state = (
            model.variables
            + list(optimizer_variables)
            + [v for m in model.metrics for v in m.variables]
        )
        messages = [str(w.message) for w in caught if "BatchNormCallback" in str(w.message)]
        return [v.numpy() for v in state], history.history, messages

    without, history_without, _ = train(False)
    with_cb, history_with, messages = train(True)
    run = load_runs(open_logdir(log_dir))["train"]
    return {
        "n_state": len(without),
        "identical": len(without) == len(with_cb)
        and all(np.array_equal(a, b) for a, b in zip(without, with_cb)),
        "same_history": history_without == history_with,
        "layers": sorted(run.layers),
        "training": {path: layer.info["training"].tolist() for path, layer in run.layers.items()},
        "gap_steps": run.gap.steps.tolist(),
        "attribution": {k: v.tolist() for k, v in run.gap.attribution.items()},
        "warnings": messages,
    }


def shared(fused):
    d = 4
    rng = np.random.default_rng(3)
    # Rank 4 (the fused kernel's): two towers' images side by side in the channels.
    x = np.concatenate(
        [rng.normal(0.5, 1.0, (8, 3, 3, d)), rng.normal(-2.0, 3.0, (8, 3, 3, d))], axis=-1
    ).astype("float32")
    inp = keras.Input((3, 3, 2 * d))
    bn = keras.layers.BatchNormalization(name="shared_bn", fused=fused)
    h = keras.layers.Concatenate()([bn(inp[..., :d]), bn(inp[..., d:])])
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    model.compile("sgd", "mse")
    with tempfile.TemporaryDirectory() as logdir:
        model.fit(
            x,
            rng.normal(size=(8, 1)).astype("float32"),
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[BatchNormCallback(logdir, log_every_n_steps=1)],
        )
        calls = next(iter(load_runs(open_logdir(logdir)).values())).layers["shared_bn"].calls
    return {
        "steps": calls.steps.tolist(),
        "mean": calls.mean.tolist(),
        "expected": [
            x[..., :d].mean(axis=(0, 1, 2)).tolist(),
            x[..., d:].mean(axis=(0, 1, 2)).tolist(),
        ],
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "stats":
        result = stats(*json.loads(sys.argv[2]))
    elif mode == "shared":
        result = shared(json.loads(sys.argv[2]))
    else:
        result = identical()
    print("RESULT " + json.dumps(result))
