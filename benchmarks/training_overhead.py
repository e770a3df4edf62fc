"""Training overhead of BatchNormCallback on a CIFAR-style ResNet-20 (Keras 3 ``fit`` on CPU).

Configurations, all measured in this one process, alternating per round in
rotating order (each has its own identically built model, traced before timing):

* ``bare``: ``fit`` with no logging callback;
* ``bn_default``: ``BatchNormCallback`` with its default settings;
* ``bn_every_step``: ``BatchNormCallback(log_every_n_steps=1)``;
* ``tensorboard_hist``: ``keras.callbacks.TensorBoard(histogram_freq=1)`` (reference).

Each configuration runs ONE ``fit(epochs=rounds + 1, steps_per_epoch=K)`` on a
repeated synthetic dataset, in its own thread; only one thread runs at a
time and the main thread hands the turn around epoch by epoch
(``harness.InterleavedFits`` with one window per epoch), so rounds
alternate (A B C D, B C D A, ...) like separate runs would, without the
per-``fit`` re-tracing of separate runs. Epoch 0 is an untimed warm-up (tracing;
its time is reported). A timed window is one whole epoch, from the turn
reaching the configuration to after every callback's ``on_epoch_end`` (the last
epoch's: ``on_train_end``): K steady-state steps plus the per-epoch work
(epoch-end log, histograms). Ratios to ``bare`` are taken pair by pair
within each round (wall clock and process CPU time) and summarised by medians.

Components, because a 1-2% overhead is below the run-to-run noise of whole
epochs on a shared machine (the same bare epoch's CPU time varies by ±10%):

* per-step capture cost: the train function of a model with the capture
  wrappers installed vs. one without, called in alternating blocks of a few
  steps (CPU ratio, median over blocks);
* per-epoch callback work: process CPU time inside ``BatchNormCallback``'s
  logs and gap evaluations during the timed epochs of the ``bn_*`` runs above;
* composed ratio for an epoch of K steps: ``step_ratio + epoch_work / (K *
  bare step CPU)``, at the timed K and at a CIFAR-10 epoch (782 steps at batch 64).

Run: ``python benchmarks/training_overhead.py [--quick | --smoke] [--out PATH]``.
"""

from __future__ import annotations

import contextlib
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
from tb_bn_plugin.training.capture import StatsCapture, find_batchnorm_layers  # noqa: E402

keras = tf.keras

TARGETS = {"bn_default": 1.02, "bn_every_step": 1.15}
MODES = {
    # steps per epoch K (a multiple of the default log cadence 50), rounds of one timed epoch each
    "full": dict(steps=100, rounds=4, batch=64, blocks=3, width=16),
    "quick": dict(steps=50, rounds=2, batch=16, blocks=3, width=16),
    "smoke": dict(steps=4, rounds=2, batch=8, blocks=1, width=4, image=16),
}
# Per-step capture cost: alternating blocks of this many train-function calls, this many rounds.
STEP_BLOCKS = {"full": (5, 8), "quick": (5, 8), "smoke": (2, 2)}
CIFAR_EPOCH_STEPS = 782  # CIFAR-10's 50,000 images at batch 64


def dataset(batch: int, image: int, n: int = 512, seed: int = 0) -> tf.data.Dataset:
    rng = np.random.RandomState(seed)
    x = rng.randn(n, image, image, 3).astype("float32")
    y = rng.randint(0, 10, size=(n,)).astype("int32")
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(2)
    )


def measure(callbacks: dict, p: dict, image: int, scope=contextlib.nullcontext) -> dict:
    """Time ``fit`` per configuration (name -> log_dir -> callbacks), alternating epoch by epoch.

    Models are built and compiled inside ``scope()`` (e.g. a strategy's scope).
    Returns ``{"configs": summary with ratios to "bare", "bn_layers": ..., "params": ...}``.
    """
    steps = p["steps"]
    tmp = tempfile.mkdtemp(prefix="bench_overhead_")
    data = dataset(p["batch"], image)
    epochs = p["rounds"] + 1  # epoch 0 warms up (traces), then one timed epoch per round
    # One window per epoch: every configuration's epochs alternate, the order rotating.
    fits = harness.InterleavedFits(keras, list(callbacks), steps, epochs, window=steps)
    n_bn = n_params = None
    for name, make in callbacks.items():
        keras.utils.set_random_seed(0)
        with scope():
            model = harness.resnet(p["blocks"], p["width"], image)
            model.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        n_bn = sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
        n_params = model.count_params()
        first, last = fits.callbacks(name)
        cbs = [first, *make(os.path.join(tmp, name)), last]
        fits.start(
            name,
            lambda model=model, cbs=cbs: model.fit(
                data, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=cbs
            ),
        )

    print(
        f"model: ResNet-{6 * p['blocks'] + 2}, {n_bn} BatchNormalization layers, "
        f"{n_params:,} parameters"
    )
    print("a warm-up epoch per configuration (traces), then timed epochs in turns ...", flush=True)
    windows = fits.run(progress=False)
    first_epoch = {name: rows[0]["wall"] for name, rows in windows.items()}
    samples = {name: rows[1:] for name, rows in windows.items()}
    summary = harness.summarize(samples, "bare")
    for name, s in summary.items():
        s["steps_per_s"] = steps / s["median_wall_s"]
        s["first_epoch_wall_s"] = first_epoch[name]
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
            first_epoch[name],
            s.get("target_ratio", "-"),
        ]
        for name, s in summary.items()
    ]
    print()
    print(
        harness.format_table(
            [
                "config",
                "steps/s",
                "wall_ratio",
                "cpu_ratio",
                "wall_range",
                "warmup_epoch_s",
                "target",
            ],
            rows,
        )
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return {"configs": summary, "bn_layers": n_bn, "parameters": n_params}


class EpochWork:
    """Process CPU seconds in a ``BatchNormCallback``'s logs and gap evaluations, per epoch."""

    def __init__(self, callback: BatchNormCallback, steps_per_epoch: int) -> None:
        self.by_epoch: dict[int, float] = {}
        for name in ("_log", "_log_gap"):
            original = getattr(callback, name)

            def timed(steps_done, *args, _original=original, **kwargs):
                start = time.process_time()
                try:
                    return _original(steps_done, *args, **kwargs)
                finally:
                    epoch = max(steps_done - 1, 0) // steps_per_epoch
                    self.by_epoch[epoch] = (
                        self.by_epoch.get(epoch, 0.0) + time.process_time() - start
                    )

            setattr(callback, name, timed)

    def timed_epochs(self, rounds: int) -> list[float]:
        """Per timed epoch (1..rounds; epoch 0 is the warm-up)."""
        return [self.by_epoch.get(epoch, 0.0) for epoch in range(1, rounds + 1)]


def step_capture_ratio(p: dict, image: int, block: int, rounds: int) -> dict:
    """Train-function CPU with the capture wrappers vs without, in alternating blocks."""
    data = dataset(p["batch"], image)
    functions = {}
    for name in ("bare", "capture"):
        keras.utils.set_random_seed(0)
        model = harness.resnet(p["blocks"], p["width"], image)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)  # builds the model and optimizer
        if name == "capture":
            StatsCapture(
                find_batchnorm_layers(model), model.optimizer.iterations, model.distribute_strategy
            ).install()
        model.make_train_function(force=True)
        train = model.train_function
        iterator = iter(data)
        train(iterator)  # traces
        functions[name] = (train, iterator)

    def run(name: str) -> None:
        train, iterator = functions[name]
        for _ in range(block):
            train(iterator)

    for name in functions:  # warm-up block: first calls after tracing run slower
        run(name)
    samples = harness.alternate(
        {name: (lambda n=name: run(n)) for name in functions}, rounds, progress=False
    )
    summary = harness.summarize(samples, "bare")
    return {
        "block_steps": block,
        "rounds": rounds,
        "bare_step_cpu_s": summary["bare"]["median_cpu_s"] / block,
        "cpu_ratio": summary["capture"]["cpu_ratio"],
        "wall_ratio": summary["capture"]["wall_ratio"],
    }


def composed_ratios(step: dict, work: dict[str, list[float]], steps: int) -> dict:
    """``step_ratio + epoch_work / (K * bare step CPU)`` at the timed K and at a CIFAR-10 epoch."""
    out = {}
    for name, per_epoch in work.items():
        epoch_s = harness.median(per_epoch)
        out[name] = {
            "epoch_work_cpu_s": epoch_s,
            "epoch_work_cpu_s_per_round": per_epoch,
            **{
                f"ratio_at_{k}_steps": step["cpu_ratio"]["median"]
                + epoch_s / (k * step["bare_step_cpu_s"])
                for k in (steps, CIFAR_EPOCH_STEPS)
            },
        }
    return out


def callback_defaults() -> dict:
    """``BatchNormCallback``'s constructor defaults, as reprs."""
    return {
        name: (repr(par.default) if par.default is not inspect.Parameter.empty else None)
        for name, par in inspect.signature(BatchNormCallback.__init__).parameters.items()
        if name != "self"
    }


WINDOW = (
    "one epoch of K steps of a long fit, incl. all on_epoch_begin/end hooks; "
    "epoch 0 untimed warm-up"
)


def main(argv=None) -> int:
    started = time.perf_counter()
    args = harness.parse_args("training_overhead", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    image = p.get("image", 32)
    signature = callback_defaults()
    print(f"mode={args.mode} steps/epoch={p['steps']} rounds={p['rounds']} batch={p['batch']}")
    print(f"BatchNormCallback signature defaults: {signature}")
    work: dict[str, EpochWork] = {}

    def bn(name: str, **kwargs):
        def make(log_dir: str) -> list:
            callback = BatchNormCallback(log_dir, **kwargs)
            work[name] = EpochWork(callback, p["steps"])
            return [callback]

        return make

    result = measure(
        {
            "bare": lambda d: [],
            "bn_default": bn("bn_default"),
            "bn_every_step": bn("bn_every_step", log_every_n_steps=1),
            "tensorboard_hist": lambda d: [keras.callbacks.TensorBoard(d, histogram_freq=1)],
        },
        p,
        image,
    )
    print(
        "\ncomponents: per-step capture cost (alternating blocks of train-function calls) ...",
        flush=True,
    )
    block, rounds = STEP_BLOCKS[args.mode]
    step = step_capture_ratio(p, image, block, rounds)
    composed = composed_ratios(
        step, {n: w.timed_epochs(p["rounds"]) for n, w in work.items()}, p["steps"]
    )
    print(
        harness.format_table(
            [
                "config",
                "step_cpu_ratio",
                "epoch_work_cpu_s",
                f"ratio_{p['steps']}_steps",
                f"ratio_{CIFAR_EPOCH_STEPS}_steps",
                "target",
            ],
            [
                [
                    name,
                    step["cpu_ratio"]["median"],
                    c["epoch_work_cpu_s"],
                    c[f"ratio_at_{p['steps']}_steps"],
                    c[f"ratio_at_{CIFAR_EPOCH_STEPS}_steps"],
                    TARGETS[name],
                ]
                for name, c in composed.items()
            ],
        )
    )
    print(
        f"bare step: {1e3 * step['bare_step_cpu_s']:.1f} ms CPU; capture step CPU ratio per round: "
        f"{step['cpu_ratio']['min']:.3f}..{step['cpu_ratio']['max']:.3f}"
    )
    harness.write_json(
        args,
        {
            "params": {
                **p,
                "image": image,
                "model": f"ResNet-{6 * p['blocks'] + 2}",
                "bn_layers": result["bn_layers"],
                "window": WINDOW,
            },
            "callback_signature_defaults": signature,
            "targets": TARGETS,
            "configs": result["configs"],
            "components": {"step_capture": step, "composed": composed},
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
