"""Run by test_distribute.py in a fresh process: 2 logical CPUs must be set before TF starts."""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
keras = tf.keras

from tb_bn_plugin import BatchNormCallback  # noqa: E402
from tb_bn_plugin.diagnostics import diagnose  # noqa: E402
from tb_bn_plugin.reading.load import load_runs  # noqa: E402
from tb_bn_plugin.reading.provider import open_logdir  # noqa: E402


def main(synchronized: bool) -> dict:
    rng = np.random.RandomState(0)
    x = (rng.randn(32, 3) * [1, 2, 3] + [1, 2, 3]).astype("float32")
    x[8:16] += 5  # the two replicas see clearly different shares of the first batch
    y = rng.randn(32, 1).astype("float32")

    def run(with_callback: bool):
        keras.utils.set_random_seed(1)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            inp = keras.Input((3,))
            h = keras.layers.BatchNormalization(name="bn", momentum=0.8, synchronized=synchronized)(
                inp
            )
            model = keras.Model(inp, keras.layers.Dense(1)(h))
            model.compile("sgd", "mse")
        log_dir = tempfile.mkdtemp()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        callbacks = [BatchNormCallback(log_dir, log_every_n_steps=1)] if with_callback else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(ds, epochs=2, verbose=0, callbacks=callbacks)
        return [w.numpy() for w in model.weights], log_dir, model

    plain, _, _ = run(False)
    logged, log_dir, model = run(True)
    from tb_bn_plugin.training.precise import precise_stats, recalibrate

    precise = precise_stats(model, x, batch_size=16, progress=False)["bn"]
    recalibrate(model, x, batch_size=16, progress=False)
    bn = model.get_layer("bn")
    run = load_runs(open_logdir(log_dir))["train"]
    layer = run.layers["bn"]
    replicas = layer.replicas
    global_moments = replicas.global_moments() if replicas is not None else None
    return {
        "findings": {f.code: f.evidence for f in diagnose(run)},
        "replicas": None
        if replicas is None
        else {
            "steps": replicas.steps.tolist(),
            "count": replicas.count.tolist(),
            "mean": replicas.mean.tolist(),
            "variance": replicas.variance.tolist(),
            "global_count": global_moments.count.tolist(),
            "global_mean": global_moments.mean.tolist(),
            "global_variance": global_moments.variance.tolist(),
        },
        "identical": all(np.array_equal(a, b) for a, b in zip(plain, logged)),
        "steps": layer.steps.tolist(),
        "count": layer.info["count"].tolist(),
        "batch_mean": layer.channels["batch_mean"].tolist(),
        "batch_variance": layer.channels["batch_variance"].tolist(),
        "moving_mean": layer.channels["moving_mean"].tolist(),
        "precise_mean": precise["mean"].tolist(),
        "precise_variance": precise["variance"].tolist(),
        "recalibrated_mean": bn.moving_mean.numpy().tolist(),
        "recalibrated_variance": bn.moving_variance.numpy().tolist(),
        "x": x.tolist(),
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1] == "sync")))
