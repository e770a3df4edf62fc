"""Training overhead of BatchNormCallback per Keras 3 backend (tensorflow, jax, torch).

For each backend, in its own subprocess (``KERAS_BACKEND`` is fixed when Keras
is imported): a small conv net (``BLOCKS`` conv/BN/ReLU blocks, 16x16 inputs,
batch 64) trained by ``fit`` on CPU with and without ``BatchNormCallback`` at
its defaults (the train/inference gap included where the backend has it), one
long ``fit`` per configuration and fits in ABBA order (bare, bn, bn, bare) so a
drifting machine load cancels. Each epoch is timed by a callback (wall clock and
process CPU); epoch 0 (tracing/compiling) is untimed. The ratio is the median
epoch CPU (and wall) time with the callback over the median without it.

Run: ``python benchmarks/backend_overhead.py [--quick | --smoke] [--out PATH]
[--backends jax,torch]``. PyTorch's eager CPU kernels are slow and, on a loaded
machine, their epoch times spread widely: read its ratio with its per-epoch samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
MODES = {
    "full": {"steps": 100, "epochs": 6, "blocks": 4, "width": 16},
    "quick": {"steps": 40, "epochs": 4, "blocks": 3, "width": 16},
    "smoke": {"steps": 4, "epochs": 2, "blocks": 2, "width": 8},
}
BATCH = 64
TARGET = 1.02


def child(mode: str) -> dict:
    """One backend (this process's ``KERAS_BACKEND``): the ABBA fits, per-epoch times."""
    import keras
    import numpy as np

    from tb_bn_plugin import BatchNormCallback

    p = MODES[mode]

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.samples = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0:  # epoch 0 traces/compiles
                wall, cpu = time.perf_counter() - self.t0[0], time.process_time() - self.t0[1]
                self.samples.append({"wall": wall, "cpu": cpu})

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16, 16, 3))
        h = inputs
        for _ in range(p["blocks"]):
            h = keras.layers.Conv2D(p["width"], 3, padding="same", use_bias=False)(h)
            h = keras.layers.BatchNormalization()(h)
            h = keras.layers.ReLU()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        m = keras.Model(inputs, keras.layers.Dense(10)(h))
        m.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * p["steps"], 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, BATCH * p["steps"])
    samples: dict[str, list] = {"bare": [], "bn_default": []}
    with tempfile.TemporaryDirectory() as logdir:
        for name in ("bare", "bn_default", "bn_default", "bare"):
            timer = EpochTimer()
            callbacks = [timer] + ([BatchNormCallback(logdir)] if name != "bare" else [])
            model().fit(
                x,
                y,
                batch_size=BATCH,
                epochs=p["epochs"],
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            )
            samples[name] += timer.samples
    medians = {
        name: {k: harness.median([s[k] for s in rows]) for k in ("wall", "cpu")}
        for name, rows in samples.items()
    }
    return {
        "backend": keras.backend.backend(),
        "samples": samples,
        "median_epoch_s": medians,
        "cpu_ratio": medians["bn_default"]["cpu"] / medians["bare"]["cpu"],
        "wall_ratio": medians["bn_default"]["wall"] / medians["bare"]["wall"],
    }


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return 0
    started = time.perf_counter()
    backends = BACKENDS
    if argv is None and "--backends" in sys.argv:  # e.g. --backends jax,torch
        at = sys.argv.index("--backends")
        backends = tuple(sys.argv[at + 1].split(","))
        argv = sys.argv[1:at] + sys.argv[at + 2 :]
    args = harness.parse_args("backend_overhead", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    print(f"mode={args.mode} {p} batch={BATCH} backends={backends}", flush=True)
    results = {}
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run(
            [sys.executable, __file__, "--child", args.mode],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{backend}: failed\n{proc.stderr[-2000:]}", flush=True)
            results[backend] = {"error": proc.stderr[-2000:]}
            continue
        results[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[backend]
        print(
            f"{backend}: epoch CPU bare {r['median_epoch_s']['bare']['cpu']:.2f} s, "
            f"with callback {r['median_epoch_s']['bn_default']['cpu']:.2f} s: "
            f"CPU ratio {r['cpu_ratio']:.3f}, wall ratio {r['wall_ratio']:.3f}",
            flush=True,
        )
    harness.write_json(
        args, {"params": {**p, "batch": BATCH}, "target": TARGET, "backends": results}, started
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
