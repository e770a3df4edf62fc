"""Demo: small conv nets on synthetic data, one run per BatchNorm pitfall.

    python demo/train.py --logdir runs/demo [--scenarios healthy momentum-one ...] [--quiet]
                         [--backend {tensorflow,jax,torch}] [--size {demo,test}]

``--backend`` (or ``KERAS_BACKEND``) picks Keras 3's backend: on ``jax`` and
``torch`` TensorFlow is not imported, and every scenario runs there too (its
custom train steps in that backend's form). ``--size test`` runs them at the
tests' size (seconds each).

Each scenario is one run (a subfolder of the logdir) logged with
``BatchNormCallback``; data is made on the fly (no downloads). All scenarios
take a few minutes on two CPU cores. Then::

    tb-bn report runs/demo
    tensorboard --logdir runs/demo        (tab: BN Internals)

Scenarios (see ``SCENARIOS``) reproduce, in Keras 3, the train/inference
pitfalls the diagnostics look for. Every scenario function takes a ``Size``
so the tests (``tests/test_diagnostics_real.py``) run the same code smaller.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("tensorflow", "jax", "torch")


def _backend_argument(argv: list[str]) -> str | None:
    """The value of ``--backend`` in ``argv`` (read before Keras is imported), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
    return None


if __name__ == "__main__" and _backend_argument(sys.argv[1:]) in BACKENDS:
    # Keras reads KERAS_BACKEND once, when it is first imported.
    os.environ["KERAS_BACKEND"] = _backend_argument(sys.argv[1:])

import numpy as np  # noqa: E402

from tb_bn_plugin import BatchNormCallback, PreciseStatsMonitor  # noqa: E402

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    import tensorflow as tf  # noqa: E402

    keras = tf.keras  # Keras 3, or tf-keras under TF_USE_LEGACY_KERAS=1
else:
    import keras  # noqa: E402

BACKEND = (
    keras.backend.backend() if callable(getattr(keras.backend, "backend", None)) else "tensorflow"
)


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a scenario runs: the demo uses ``DEMO``, the tests ``TEST``.

    Attributes:
      samples: training samples per epoch.
      image: image height and width.
      width: filters of the first conv layer (the second has twice as many).
      epochs: epochs of the main fit.
      batch: batch size of the scenarios with ordinary batches.
    """

    samples: int = 1024
    image: int = 16
    width: int = 16
    epochs: int = 4
    batch: int = 64

    def log_every(self, batch: int | None = None) -> int:
        """A logging cadence giving about 6 logged steps per epoch."""
        steps = max(1, self.samples // (batch or self.batch))
        return max(1, steps // 6)


DEMO = Size()
TEST = Size(samples=512, image=8, width=4, epochs=2, batch=32)
SIZES = {"demo": DEMO, "test": TEST}


# -- data and models ---------------------------------------------------------------


def synthetic_images(
    n: int,
    seed: int = 0,
    size: int = 16,
    classes: int = 4,
    alpha: bool = False,
    label_noise: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent blobs on noise: learnable, with non-zero means and unequal channel scales.

    ``alpha=True`` adds a fourth, constant channel (an opaque RGBA alpha channel).
    ``label_noise``: fraction of labels drawn at random, so the loss stays away from 0.
    """
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, size=n)
    noisy = rng.rand(n) < label_noise
    labels = np.where(noisy, rng.randint(0, classes, size=n), y)
    yy, xx = np.mgrid[0:size, 0:size] / size
    centers = rng.rand(classes, 2)
    blobs = np.exp(
        -((yy[None] - centers[y, 0, None, None]) ** 2 + (xx[None] - centers[y, 1, None, None]) ** 2)
        * 20
    )
    x = (
        rng.randn(n, size, size, 3) * 0.5
        + blobs[..., None] * np.array([2.0, -1.0, 4.0])
        + np.array([3.0, 0.5, -2.0])
    )
    if alpha:
        x = np.concatenate([x, np.ones((n, size, size, 1))], axis=-1)
    return x.astype("float32"), labels


def synthetic_features(
    n: int, seed: int = 0, features: int = 8, classes: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent Gaussian feature vectors (no spatial extent)."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, size=n)
    centers = rng.randn(classes, features) * 2.0
    x = centers[y] + rng.randn(n, features) + 5.0
    return x.astype("float32"), y


def conv_net(
    size: int = 16,
    classes: int = 4,
    momentum: float = 0.99,
    name: str = "convnet",
    width: int = 16,
    channels: int = 3,
    model_class: type = keras.Model,
) -> keras.Model:
    """input BN, two conv/BN/ReLU/pool blocks, a dense BN layer: four BN layers."""
    inp = keras.Input((size, size, channels))
    h = keras.layers.BatchNormalization(momentum=momentum, name="input_bn")(inp)
    for i, filters in enumerate((width, 2 * width)):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(momentum=momentum, name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(2 * width, use_bias=False, name="dense")(h)
    h = keras.layers.BatchNormalization(momentum=momentum, name="dense_bn")(h)
    out = keras.layers.Dense(classes, name="logits")(keras.layers.ReLU()(h))
    return model_class(inp, out, name=name)


def dense_net(
    features: int = 8, classes: int = 4, width: int = 16, momentum: float = 0.9
) -> keras.Model:
    """Dense/BN/ReLU x 2: BN over feature vectors, one value per channel and sample."""
    inp = keras.Input((features,))
    h = inp
    for i in range(2):
        h = keras.layers.Dense(width, use_bias=False, name=f"dense{i}")(h)
        h = keras.layers.BatchNormalization(momentum=momentum, name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
    return keras.Model(inp, keras.layers.Dense(classes, name="logits")(h), name="densenet")


def _compile(model: keras.Model, learning_rate: float = 1e-2, optimizer=None) -> keras.Model:
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


_CALLBACK_OPTIONS = set(inspect.signature(BatchNormCallback.__init__).parameters)
GAP_LOGGING = "gap_every_n_epochs" in _CALLBACK_OPTIONS


def bn_callback(run_dir: str, log_every_n_steps: int, **gap_options) -> BatchNormCallback:
    """The callback for one scenario; gap options are passed only where the callback has them."""
    options = {k: v for k, v in gap_options.items() if k in _CALLBACK_OPTIONS}
    return BatchNormCallback(run_dir, log_every_n_steps=log_every_n_steps, run_name=".", **options)


# -- scenarios ----------------------------------------------------------------------


def healthy(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """Momentum 0.9 and ordinary batches: the moving statistics track the batches."""
    x, y = synthetic_images(size.samples, size=size.image)
    model = _compile(conv_net(size.image, momentum=0.9, width=size.width), learning_rate=3e-3)
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every())],
    )


class SkipMovingStatsUpdate(keras.Model):
    """A model whose custom ``train_step`` discards the BN moving-statistic updates.

    The Keras 3 equivalent of TF1's forgotten ``tf.GraphKeys.UPDATE_OPS``: the
    forward pass normalises with batch statistics (training=True), but the
    moving mean/variance are snapshotted before and restored after the step,
    as if the update ops never ran.
    """

    def train_step(self, data):
        moving = [
            v
            for layer in self._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        saved = [keras.ops.copy(v.value) for v in moving]
        logs = super().train_step(data)
        for variable, value in zip(moving, saved):
            variable.assign(value)
        return logs


class KeepNonTrainableState(keras.Model):
    """JAX's stateless ``train_step(state, data)`` returning the non-trainable state it got.

    The JAX form of ``SkipMovingStatsUpdate`` and ``DroppedStatelessUpdates``: the
    step computes the updated moving statistics and drops them, so they keep
    their initial 0 and 1.
    """

    def train_step(self, state, data):
        logs, (trainable, _updated, optimizer_values, metric_values) = super().train_step(
            state, data
        )
        return logs, (trainable, state[1], optimizer_values, metric_values)


def stale_moving_stats(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """Custom train_step restores the moving statistics: the TF1 'UPDATE_OPS never run' bug."""
    x, y = synthetic_images(size.samples, size=size.image)
    model_class = KeepNonTrainableState if BACKEND == "jax" else SkipMovingStatsUpdate
    model = _compile(conv_net(size.image, width=size.width, model_class=model_class))
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every())],
    )


def momentum_one(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """BatchNormalization(momentum=1.0): TF1 decay=1, the moving statistics never move."""
    x, y = synthetic_images(size.samples, size=size.image)
    model = _compile(conv_net(size.image, momentum=1.0, width=size.width))
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every())],
    )


def slow_momentum(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """momentum=0.999 (TF1's default decay) for a few dozen steps: the EMA lags far behind."""
    x, y = synthetic_images(size.samples, size=size.image)
    model = _compile(conv_net(size.image, momentum=0.999, width=size.width))
    # The EMA-vs-precise error on a held sample each epoch shows how far the EMA lags.
    monitor = PreciseStatsMonitor(run_dir, x[: 4 * size.batch], run_name=".", batch_size=size.batch)
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every()), monitor],
    )


def tiny_batch(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """Batch size 2 on a dense/BN net: 2 values per channel for each batch statistic."""
    n = max(64, size.samples // 4)
    x, y = synthetic_features(n)
    model = _compile(dense_net(width=size.width * 2), learning_rate=1e-3)
    model.fit(
        x,
        y,
        batch_size=2,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, max(1, n // 2 // 6))],
    )


def shifted_batches(size: Size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every batch carries its own brightness offset and gain (non-iid batches).

    Like data read shard by shard from different cameras or sessions: within a
    batch the offset is constant, so training-mode BN removes it, while the
    moving statistics average over all batches and inference keeps it.
    """
    x, y = synthetic_images(size.samples, seed=seed, size=size.image)
    rng = np.random.RandomState(seed + 1)
    batches = size.samples // size.batch
    offset = rng.randn(batches, 1, 1, 1, 3) * 6.0
    gain = np.exp(rng.randn(batches, 1, 1, 1, 3) * 0.7)
    xb = x[: batches * size.batch].reshape(batches, size.batch, size.image, size.image, 3)
    xb = xb * gain + offset
    return xb.reshape(-1, size.image, size.image, 3).astype("float32"), y[: batches * size.batch]


def train_inference_gap(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """Per-batch offsets (non-iid batches): batch statistics differ from the population's."""
    x, y = shifted_batches(size)
    model = _compile(conv_net(size.image, momentum=0.9, width=size.width))
    # The probe batch (by default the first training batch) carries its own offset.
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        shuffle=False,
        callbacks=[
            bn_callback(run_dir, size.log_every(), gap_every_n_epochs=1, gap_attribution=True)
        ],
    )


def frozen_bn(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """Fine-tuning a pretrained-like base with its BN layers set non-trainable."""
    x, y = synthetic_images(size.samples, size=size.image)
    base = _compile(conv_net(size.image, momentum=0.9, width=size.width, name="pretrained"))
    base.fit(x, y, batch_size=size.batch, epochs=1, verbose=0)  # "pretraining", not logged
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    # New task: 2 classes, a new head on the pretrained features.
    features = base.get_layer("dense_bn").output
    head = keras.layers.Dense(2, name="new_head")(keras.layers.ReLU()(features))
    model = _compile(keras.Model(base.input, head, name="finetune"), learning_rate=1e-3)
    x2, y2 = synthetic_images(size.samples, seed=1, size=size.image, classes=2)
    model.fit(
        x2,
        y2,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every())],
    )


class DroppedStatelessUpdates(keras.Model):
    """A JAX-style custom train_step that forgets to write back the non-trainable variables
    (TensorFlow; on JAX the same bug is ``KeepNonTrainableState``, on PyTorch the scenario uses
    ``SkipMovingStatsUpdate``).

    ``stateless_call`` returns the updated moving statistics (the 'update ops')
    instead of assigning them; this step never assigns them, so the moving
    statistics keep their initial 0 and 1.
    """

    def train_step(self, data):
        x, y = data
        trainable = [v.value for v in self.trainable_variables]
        non_trainable = [v.value for v in self.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            y_pred, _new_non_trainable = self.stateless_call(
                trainable, non_trainable, x, training=True
            )
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, trainable)
        self.optimizer.apply(grads, self.trainable_variables)
        # BUG (on purpose): _new_non_trainable is dropped.
        return self.compute_metrics(x, y, y_pred)


def uninitialized_moving_stats(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """Raw 0..255 pixels; the updated moving statistics are never written back: they stay 0/1."""
    x, y = synthetic_images(size.samples, size=size.image)
    x = np.clip(x * 40.0 + 60.0, 0, 255).astype("float32")  # raw pixel values
    model_class = {"jax": KeepNonTrainableState, "torch": SkipMovingStatsUpdate}.get(
        BACKEND, DroppedStatelessUpdates
    )
    model = _compile(conv_net(size.image, width=size.width, model_class=model_class))
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every())],
    )


def dead_channels(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """RGBA input with an opaque (constant) alpha channel: a BN channel without variance."""
    x, y = synthetic_images(size.samples, size=size.image, alpha=True)
    model = _compile(conv_net(size.image, momentum=0.9, width=size.width, channels=4))
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        callbacks=[bn_callback(run_dir, size.log_every())],
    )


def non_finite(run_dir: str, verbose: int, size: Size = DEMO) -> None:
    """A corrupt sample (Inf pixels) late in epoch 1: NaN statistics; TerminateOnNaN stops."""
    x, y = synthetic_images(size.samples, size=size.image)
    steps = size.samples // size.batch
    corrupt = (steps * 2 // 3) * size.batch  # first sample of a batch after a few logged steps
    x[corrupt, : size.image // 2] = np.inf
    model = _compile(conv_net(size.image, momentum=0.9, width=size.width))
    model.fit(
        x,
        y,
        batch_size=size.batch,
        epochs=size.epochs,
        verbose=verbose,
        shuffle=False,
        callbacks=[bn_callback(run_dir, size.log_every()), keras.callbacks.TerminateOnNaN()],
    )


@dataclasses.dataclass
class Scenario:
    """One demo run: what it shows and how it trains."""

    name: str
    description: str
    run: Callable[..., None]  # (run_dir, verbose, size=DEMO)
    codes: tuple[str, ...] = ()  # diagnostic codes it is meant to trigger


SCENARIOS = {
    s.name: s
    for s in [
        Scenario(
            "healthy",
            "momentum 0.9, batch 64, lr 3e-3: moving statistics track the batches",
            healthy,
        ),
        Scenario(
            "stale-moving-stats",
            "custom train_step restores the moving statistics (TF1 UPDATE_OPS not run)",
            stale_moving_stats,
            ("stale-moving-stats",),
        ),
        Scenario(
            "momentum-one",
            "BatchNormalization(momentum=1.0): moving statistics never move",
            momentum_one,
            ("momentum-one",),
        ),
        Scenario(
            "slow-momentum",
            "momentum 0.999 for a few dozen steps: the EMA lags",
            slow_momentum,
            ("slow-momentum", "ema-error"),
        ),
        Scenario(
            "tiny-batch",
            "batch size 2 on a dense/BN net: 2 values per channel",
            tiny_batch,
            ("tiny-batch",),
        ),
        Scenario(
            "train-inference-gap",
            "per-batch brightness offsets: batch stats differ from the population",
            train_inference_gap,
            ("train-inference-gap",),
        ),
        Scenario(
            "frozen-bn",
            "fine-tuning a pretrained base with non-trainable BN layers",
            frozen_bn,
            ("frozen-bn",),
        ),
        Scenario(
            "uninitialized-moving-stats",
            "raw pixels, moving-statistic updates never written back (0/1)",
            uninitialized_moving_stats,
            ("uninitialized-moving-stats",),
        ),
        Scenario(
            "dead-channels",
            "RGBA input with a constant alpha channel",
            dead_channels,
            ("dead-channels",),
        ),
        Scenario(
            "non-finite",
            "Inf pixels in one sample: NaN statistics, stopped by TerminateOnNaN",
            non_finite,
            ("non-finite",),
        ),
    ]
}


def run_scenario(name: str, logdir: str, verbose: int = 0, size: Size = DEMO, seed: int = 1) -> str:
    """Run one scenario into ``logdir/name``; returns the run directory."""
    run_dir = os.path.join(logdir, name)
    keras.utils.set_random_seed(seed)
    try:
        SCENARIOS[name].run(run_dir, verbose, size)
    finally:
        keras.backend.clear_session()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--logdir", default="runs/demo", help="where each scenario's run is written"
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=list(SCENARIOS),
        default=list(SCENARIOS),
        metavar="SCENARIO",
        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress bars")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BACKEND,
        help="Keras 3 backend (default: KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--size", choices=SIZES, default="demo", help="demo (minutes) or test (seconds)"
    )
    args = parser.parse_args(argv)
    if args.backend != BACKEND:
        parser.error(
            f"--backend {args.backend}: Keras already runs on {BACKEND} in this process "
            "(KERAS_BACKEND is read when Keras is first imported)"
        )
    print(f"Keras backend: {BACKEND}", flush=True)
    start = time.monotonic()
    for i, name in enumerate(args.scenarios, 1):
        scenario = SCENARIOS[name]
        print(f"[{i}/{len(args.scenarios)}] {name}: {scenario.description}", flush=True)
        began = time.monotonic()
        run_scenario(name, args.logdir, 0 if args.quiet else 1, SIZES[args.size])
        print(f"    {name} done in {time.monotonic() - began:.0f} s", flush=True)
    print(
        f"Done in {time.monotonic() - start:.0f} s. Diagnose with: tb-bn report {args.logdir}\n"
        f"Open it with: tensorboard --logdir {args.logdir}  (tab: BN Internals)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
