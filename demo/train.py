"""Demo: train small conv nets on synthetic data with BatchNormCallback.

    python demo/train.py --logdir runs/demo [--scenarios healthy ...]

Each scenario is one run (a subfolder of the logdir). Data is made on the
fly: no downloads.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tb_bn_plugin import BatchNormCallback  # noqa: E402

keras = tf.keras


def synthetic_images(n: int, seed: int = 0, size: int = 16, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent blobs on noise: learnable, with non-zero means and unequal channel scales."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, classes, size=n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    centers = rng.rand(classes, 2)
    blobs = np.exp(-((yy[None] - centers[y, 0, None, None]) ** 2 + (xx[None] - centers[y, 1, None, None]) ** 2) * 20)
    x = rng.randn(n, size, size, 3) * 0.5 + blobs[..., None] * np.array([2.0, -1.0, 4.0]) + np.array([3.0, 0.5, -2.0])
    return x.astype("float32"), y


def conv_net(size: int = 16, classes: int = 4, momentum: float = 0.99, name: str = "convnet") -> keras.Model:
    inp = keras.Input((size, size, 3))
    h = keras.layers.BatchNormalization(momentum=momentum, name="input_bn")(inp)
    for i, filters in enumerate((16, 32)):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(momentum=momentum, name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(32, use_bias=False)(h)
    h = keras.layers.BatchNormalization(momentum=momentum, name="dense_bn")(h)
    out = keras.layers.Dense(classes)(keras.layers.ReLU()(h))
    return keras.Model(inp, out, name=name)


@dataclasses.dataclass
class Scenario:
    """One demo run: what it shows and how it trains."""

    name: str
    description: str
    run: Callable[[str, int], None]


def _compile(model: keras.Model, learning_rate: float = 1e-2) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def healthy(run_dir: str, verbose: int) -> None:
    x, y = synthetic_images(1024)
    model = _compile(conv_net(momentum=0.9))
    model.fit(x, y, batch_size=64, epochs=4, verbose=verbose,
              callbacks=[BatchNormCallback(run_dir, log_every_n_steps=4, run_name=".")])


SCENARIOS = {s.name: s for s in [
    Scenario("healthy", "momentum 0.9, batch 64: moving statistics track the batches", healthy),
]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", default="runs/demo", help="where each scenario's run is written")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS),
                        help="scenarios to run (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress bars")
    args = parser.parse_args(argv)
    for i, name in enumerate(args.scenarios, 1):
        scenario = SCENARIOS[name]
        print(f"[{i}/{len(args.scenarios)}] {name}: {scenario.description}", flush=True)
        keras.utils.set_random_seed(i)
        scenario.run(os.path.join(args.logdir, name), 0 if args.quiet else 1)
        keras.backend.clear_session()
    print(f"Done. Open it with: tensorboard --logdir {args.logdir}  (tab: BN Internals)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
