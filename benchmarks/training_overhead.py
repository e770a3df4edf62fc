"""Training overhead of BatchNormCallback on a CIFAR-style ResNet-20 (Keras 3 ``fit`` on CPU).

Configurations, all measured in this one process, alternating per round in
rotating order (each has its own identically built model, traced before timing):

* ``bare``: ``fit`` with no logging callback;
* ``bn_default``: ``BatchNormCallback`` with its default settings;
* ``bn_every_step``: ``BatchNormCallback(log_every_n_steps=1)``;
* ``tensorboard_hist``: ``keras.callbacks.TensorBoard(histogram_freq=1)`` (reference).

A round runs ``fit(epochs=2, steps_per_epoch=K)`` per configuration on a
repeated synthetic dataset. The timed window is the whole second epoch, from
before every callback's ``on_epoch_begin`` to after every callback's
``on_epoch_end``: K steady-state steps plus the per-epoch work (epoch-end log,
histograms). The first epoch absorbs per-``fit`` warm-up (BatchNormCallback
re-traces the train function and its snapshot function in every ``fit``).
The whole ``fit`` call is timed too and reported separately (it includes the
per-``fit`` setup and re-tracing). Ratios to ``bare`` are taken pair by pair
within each round (wall clock and process CPU time) and summarised by medians.

Run: ``python benchmarks/training_overhead.py [--quick | --smoke] [--out PATH]``.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tb_bn_plugin import BatchNormCallback  # noqa: E402

keras = tf.keras

TARGETS = {"bn_default": 1.02, "bn_every_step": 1.15}
MODES = {
    # steps per epoch K (a multiple of the default log cadence 50; the 2nd epoch is timed), rounds
    "full": dict(steps=100, rounds=7, batch=64, blocks=3, width=16),
    "quick": dict(steps=50, rounds=3, batch=64, blocks=3, width=16),
    "smoke": dict(steps=4, rounds=2, batch=8, blocks=1, width=4, image=16),
}


def resnet(blocks_per_stage: int = 3, width: int = 16, image: int = 32, classes: int = 10, seed: int = 0):
    """CIFAR ResNet-(6n+2) with projection shortcuts: ResNet-20 (n=3) has 21 BatchNormalization layers."""
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input((image, image, 3))
    h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init)(inputs)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, kernel_initializer=init)(h)
            h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
            h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=init)(h)
            h = keras.layers.BatchNormalization()(h)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_initializer=init)(shortcut)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            h = keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(h)
    return keras.Model(inputs, outputs, name="resnet")


def dataset(batch: int, image: int, n: int = 512, seed: int = 0) -> tf.data.Dataset:
    rng = np.random.RandomState(seed)
    x = rng.randn(n, image, image, 3).astype("float32")
    y = rng.randint(0, 10, size=(n,)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache().repeat().prefetch(2)


class _WindowStart(keras.callbacks.Callback):
    """First callback: starts the clock at the beginning of the last epoch (before the others' hooks)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.wall0, self.cpu0 = time.perf_counter(), time.process_time()


class _WindowStop(keras.callbacks.Callback):
    """Last callback: stops the clock after every other callback's ``on_epoch_end`` of the last epoch."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.wall1, self.cpu1 = time.perf_counter(), time.process_time()


def main(argv=None) -> int:
    started = time.perf_counter()
    args = harness.parse_args("training_overhead", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    image = p.get("image", 32)
    steps = p["steps"]
    tmp = tempfile.mkdtemp(prefix="bench_overhead_")
    signature = {
        name: (repr(par.default) if par.default is not inspect.Parameter.empty else None)
        for name, par in inspect.signature(BatchNormCallback.__init__).parameters.items()
        if name != "self"
    }
    print(f"mode={args.mode} steps/epoch={steps} (2 epochs per fit, 2nd timed) rounds={p['rounds']} batch={p['batch']}")
    print(f"BatchNormCallback signature defaults: {signature}")

    data = dataset(p["batch"], image)
    callbacks = {
        "bare": lambda d: [],
        "bn_default": lambda d: [BatchNormCallback(d)],
        "bn_every_step": lambda d: [BatchNormCallback(d, log_every_n_steps=1)],
        "tensorboard_hist": lambda d: [keras.callbacks.TensorBoard(d, histogram_freq=1)],
    }
    runs = {}
    n_bn = None
    for name, make in callbacks.items():
        keras.utils.set_random_seed(0)
        model = resnet(p["blocks"], p["width"], image)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        n_bn = sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
        start, stop = _WindowStart(1), _WindowStop(1)
        cbs = [start] + make(os.path.join(tmp, name)) + [stop]
        runs[name] = (model, cbs, start, stop)

    def run_once(name):
        model, cbs, start, stop = runs[name]

        def go():
            model.fit(data, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=cbs)
            return {"wall": stop.wall1 - start.wall0, "cpu": stop.cpu1 - start.cpu0}

        return go

    print(f"model: ResNet-{6 * p['blocks'] + 2}, {n_bn} BatchNormalization layers, "
          f"{runs['bare'][0].count_params():,} parameters")
    print("warm-up (one fit per configuration, traces the train functions)...", flush=True)
    for name in runs:
        w, c, _ = harness.time_call(run_once(name))
        print(f"  {name}: {w:.2f} s", flush=True)

    print("timed rounds (rotating order):", flush=True)
    samples = harness.alternate({n: run_once(n) for n in runs}, p["rounds"])
    summary = harness.summarize(samples, "bare")
    call_wall = harness.pairwise_ratios(samples, "bare", "call_wall")
    call_cpu = harness.pairwise_ratios(samples, "bare", "call_cpu")
    for name, s in summary.items():
        s["steps_per_s"] = steps / s["median_wall_s"]
        s["fit_call"] = {
            "median_wall_s": harness.median([r["call_wall"] for r in samples[name]]),
            "wall_ratio": call_wall[name],
            "cpu_ratio": call_cpu[name],
        }
        if name in TARGETS:
            s["target_ratio"] = TARGETS[name]
            s["meets_target_wall"] = s["wall_ratio"]["median"] <= TARGETS[name]
            s["meets_target_cpu"] = s["cpu_ratio"]["median"] <= TARGETS[name]

    rows = [
        [
            name,
            s["steps_per_s"],
            s["wall_ratio"]["median"],
            s["cpu_ratio"]["median"],
            f"{s['wall_ratio']['min']:.3f}..{s['wall_ratio']['max']:.3f}",
            s["fit_call"]["wall_ratio"]["median"],
            s.get("target_ratio", "-"),
        ]
        for name, s in summary.items()
    ]
    print()
    print(harness.format_table(
        ["config", "steps/s", "wall_ratio", "cpu_ratio", "wall_range", "whole_fit_wall_ratio", "target"], rows
    ))
    shutil.rmtree(tmp, ignore_errors=True)
    harness.write_json(args, {
        "params": {**p, "image": image, "model": f"ResNet-{6 * p['blocks'] + 2}", "bn_layers": n_bn,
                   "window": "2nd epoch of fit(epochs=2, steps_per_epoch=K), incl. all on_epoch_begin/end hooks"},
        "callback_signature_defaults": signature,
        "targets": TARGETS,
        "configs": summary,
    }, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
