"""Writes run ``mirrored`` into the logdir argv[1]: a MirroredStrategy ``fit`` on 2 logical CPUs.

A fresh process: the logical devices must be set before TensorFlow starts.
Layer ``bn`` is unsynchronised, so the callback logs each replica's batch
statistics; 8 rows per replica make ``replica-batch-too-small`` fire.
"""

import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
keras = tf.keras

from tb_bn_plugin import BatchNormCallback  # noqa: E402

rng = np.random.RandomState(0)
x = (rng.randn(32, 3) * [1, 2, 3] + [1, 2, 3]).astype("float32")
x[8:16] += 5  # the replicas see differently distributed halves of the first batch
y = rng.randn(32, 1).astype("float32")
keras.utils.set_random_seed(1)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inp = keras.Input((3,))
    out = keras.layers.BatchNormalization(name="bn", momentum=0.8)(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(out))
    model.compile("sgd", "mse")
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.fit(
        dataset,
        epochs=2,
        verbose=0,
        callbacks=[BatchNormCallback(sys.argv[1], run_name="mirrored", log_every_n_steps=1)],
    )
