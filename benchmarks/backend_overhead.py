"""Training overhead of BatchNormCallback per Keras 3 backend (tensorflow, jax, torch).

For each backend, in its own subprocess (``KERAS_BACKEND`` is fixed when Keras
is imported): a model (``--model convnet``, the default: a small conv net of
``blocks`` conv/BN/ReLU blocks, 16x16 inputs, batch 64, 10-25 ms steps, where the
callback's fixed cost per log shows; ``--model resnet20``: the ResNet-20 of
``training_overhead.py``, 21 BN layers at 32x32, the long fit the 1.02 target
is about, at batch 32) trained by ``fit`` on CPU without a callback (``bare``)
and with ``BatchNormCallback`` at its defaults (``bn_default``: two logs per
100 steps, the train/inference gap each epoch), ONE ``fit`` of ``epochs``
epochs of ``steps`` steps per configuration, the two running in turns of
``window`` steps (``harness.InterleavedFits``: each fit in its own thread, only
the one holding the turn runs, the order rotating), so the windows of the two
fits over the same steps run seconds apart and the machine's drifts, ±10%
between whole epochs a minute apart, cancel in their ratio.

A window holds every hook of its steps, the callback's included: an epoch's
last window its epoch-end work (the epoch's last log, the gap, the flush), the
fit's last window its ``on_train_end`` (the final log). Epoch 0 (tracing,
compiling; from the callback's ``on_train_begin``) is one window per
configuration, one after the other. Reported per backend:

* ``cpu_ratio`` / ``wall_ratio``: the timed epochs (1 on) of each fit summed,
  with the callback over without: a long fit's steady cost, per-step and
  per-epoch work together; ``epoch_cpu_ratios`` the same per epoch,
  ``window_cpu_ratio_median`` and its quartiles per pair of windows;
* ``whole_fit_cpu_ratio`` / ``whole_fit_wall_ratio``: every window, epoch 0
  included: this fit as a user pays it, the one-time tracing of the
  callback's functions included (``first_epoch_cpu_s`` per configuration);
* ``extra_cpu_per_epoch_s`` (median over the timed epochs of the difference)
  and ``hooks_cpu_per_epoch_s``: the process CPU time spent inside the
  callback's hooks per timed epoch, measured directly (no difference of two
  fits), the host-side part of the cost; the rest of the difference is spent
  inside the train steps. On JAX the hooks' CPU overstates the callback's
  work: Keras dispatches JAX steps asynchronously, and a hook that waits for
  the steps dispatched so far (a logged step's ``settle``) is charged the CPU
  the XLA threads spend computing them meanwhile (process CPU time counts
  every thread); compare ``extra_cpu_per_epoch_s`` there.

(Until 2026-11-30 every round trained a new pair of models and compared one
whole epoch of each, a minute apart: the rounds' ratios spread over ±10%.)

Every backend runs its kernels on ``--threads`` threads (default 1) in both
configurations: on a shared 2-core machine PyTorch's and XLA's spinning worker
threads otherwise burn CPU time while waiting for a core (PyTorch: 0.55 s CPU
per step on 2 threads against 0.03 s on 1, measured under load 8), and that
noise, not the callback, decided earlier PyTorch ratios (1.80 and 0.71).

Run: ``python benchmarks/backend_overhead.py [--quick | --smoke] [--out PATH]
[--backends jax,torch] [--threads N] [--model convnet|resnet20]``.
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
# Per ``--model``, per mode: the sizes. ``convnet``: the small net, 10-25 ms steps, where the
# callback's fixed cost per log shows; ``resnet20``: training_overhead.py's ResNet-20 (21 BN
# layers) at 32x32, the long-fit case the 1.02 target is about.
MODELS = {
    "convnet": {
        "full": {
            "steps": 200,
            "epochs": 4,
            "window": 20,
            "blocks": 3,
            "width": 16,
            "image": 16,
            "batch": 64,
        },
        "quick": {
            "steps": 100,
            "epochs": 3,
            "window": 20,
            "blocks": 3,
            "width": 16,
            "image": 16,
            "batch": 64,
        },
        "smoke": {
            "steps": 4,
            "epochs": 2,
            "window": 2,
            "blocks": 2,
            "width": 8,
            "image": 16,
            "batch": 64,
        },
    },
    "resnet20": {
        "full": {
            "steps": 300,
            "epochs": 3,
            "window": 20,
            "blocks": 3,
            "width": 16,
            "image": 32,
            "batch": 32,
        },
        "quick": {
            "steps": 50,
            "epochs": 3,
            "window": 10,
            "blocks": 3,
            "width": 16,
            "image": 32,
            "batch": 32,
        },
        "smoke": {
            "steps": 2,
            "epochs": 2,
            "window": 1,
            "blocks": 1,
            "width": 4,
            "image": 16,
            "batch": 64,
        },
    },
}
TARGET = 1.02
CONFIGS = ("bare", "bn_default")


def child(model_name: str, mode: str, threads: int) -> dict:
    """One backend (this process's ``KERAS_BACKEND``): the two fits, interleaved by window."""
    harness.limit_threads(threads)
    import keras
    import numpy as np

    from tb_bn_plugin import BatchNormCallback

    p = MODELS[model_name][mode]

    class HookTimedCallback(BatchNormCallback):
        """``BatchNormCallback`` that adds the process CPU time of its hooks to ``hooks_cpu``
        (per epoch; ``on_train_begin``/``on_train_end`` under their names)."""

        hooks_cpu: dict = {}
        epoch = 0

        def _timed(self, key, hook, *args, **kwargs):
            started = time.process_time()
            try:
                return hook(*args, **kwargs)
            finally:
                self.hooks_cpu[key] = self.hooks_cpu.get(key, 0.0) + time.process_time() - started

        def on_train_begin(self, logs=None):
            self.hooks_cpu = {}
            self._timed("train_begin", super().on_train_begin, logs)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self._timed(epoch, super().on_epoch_begin, epoch, logs)

        def on_train_batch_begin(self, batch, logs=None):
            self._timed(self.epoch, super().on_train_batch_begin, batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self._timed(epoch, super().on_epoch_end, epoch, logs)

        def on_train_end(self, logs=None):
            self._timed("train_end", super().on_train_end, logs)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(p["batch"] * p["steps"], p["image"], p["image"], 3)).astype("float32")
    y = rng.integers(0, 10, p["batch"] * p["steps"])
    fits = harness.InterleavedFits(keras, CONFIGS, p["steps"], p["epochs"], p["window"])
    with tempfile.TemporaryDirectory() as logdir:
        hooked = HookTimedCallback(logdir)
        for name in CONFIGS:
            keras.utils.set_random_seed(0)
            if model_name == "resnet20":
                model = harness.resnet(p["blocks"], p["width"], p["image"])
            else:
                model = harness.conv_bn_net(p["blocks"], p["width"])
            model.compile(
                keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            first, last = fits.callbacks(name)
            callbacks = [first, *([hooked] if name == "bn_default" else []), last]
            fits.start(
                name,
                lambda model=model, callbacks=callbacks: model.fit(
                    x,
                    y,
                    batch_size=p["batch"],
                    epochs=p["epochs"],
                    shuffle=False,
                    verbose=0,
                    callbacks=callbacks,
                ),
            )
        samples = fits.run(progress=False)
    return {
        "backend": keras.backend.backend(),
        "threads": threads,
        **summarise(samples, hooked.hooks_cpu),
    }


def summarise(samples: dict[str, list[dict]], hooks_cpu: dict) -> dict:
    """Ratios of the two fits' times: the timed epochs (1 on) summed, per epoch and per window,
    and the whole fit; the callback's cost per epoch and in its hooks."""

    def total(name: str, key: str, timed: bool = True) -> float:
        return sum(s[key] for s in samples[name] if s["epoch"] > 0 or not timed)

    def by_epoch(name: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for s in samples[name]:
            if s["epoch"] > 0:
                out[s["epoch"]] = out.get(s["epoch"], 0.0) + s["cpu"]
        return out

    bare, bn = by_epoch("bare"), by_epoch("bn_default")
    epochs = sorted(bare)
    epoch_ratios = [bn[e] / bare[e] for e in epochs]
    timed = {n: [s for s in rows if s["epoch"] > 0] for n, rows in samples.items()}
    window_ratios = harness.pairwise_ratios(timed, "bare", "cpu")["bn_default"]["per_round"]
    bare_epoch = harness.median([bare[e] for e in epochs])
    hooks = harness.median([hooks_cpu.get(e, 0.0) for e in epochs])
    first = {n: samples[n][0] for n in CONFIGS}
    return {
        "samples": samples,
        "cpu_ratio": total("bn_default", "cpu") / total("bare", "cpu"),
        "wall_ratio": total("bn_default", "wall") / total("bare", "wall"),
        "epoch_cpu_ratios": epoch_ratios,
        "window_cpu_ratio_median": harness.median(window_ratios),
        "window_cpu_ratio_quartiles": harness.quartiles(window_ratios),
        "whole_fit_cpu_ratio": total("bn_default", "cpu", timed=False)
        / total("bare", "cpu", timed=False),
        "whole_fit_wall_ratio": total("bn_default", "wall", timed=False)
        / total("bare", "wall", timed=False),
        "first_epoch_cpu_s": {n: first[n]["cpu"] for n in CONFIGS},
        "bare_epoch_cpu_s": bare_epoch,
        "extra_cpu_per_epoch_s": harness.median([bn[e] - bare[e] for e in epochs]),
        "hooks_cpu_per_epoch_s": hooks,
        "hooks_cpu_ratio": 1 + hooks / bare_epoch,
        "hooks_cpu_train_begin_end_s": hooks_cpu.get("train_begin", 0.0)
        + hooks_cpu.get("train_end", 0.0),
    }


def add_arguments(parser) -> None:
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated Keras backends"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="kernel threads per backend, both configurations"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="convnet")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    started = time.perf_counter()
    args = harness.parse_args(
        "backend_overhead", __doc__.splitlines()[0], argv, add_arguments=add_arguments
    )
    backends = tuple(args.backends.split(","))
    threads = args.threads
    p = MODELS[args.model][args.mode]
    print(
        f"model={args.model} mode={args.mode} {p} backends={backends} "
        f"threads={threads} load={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = {}
    for backend in backends:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", args.model, args.mode, str(threads)],
            env=harness.backend_env(backend, threads),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{backend}: failed\n{proc.stderr[-2000:]}", flush=True)
            results[backend] = {"error": proc.stderr[-2000:]}
            continue
        results[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[backend]
        low, high = min(r["epoch_cpu_ratios"]), max(r["epoch_cpu_ratios"])
        q1, q3 = r["window_cpu_ratio_quartiles"]
        print(
            f"{backend}: epoch CPU bare {r['bare_epoch_cpu_s']:.2f} s, "
            f"+{r['extra_cpu_per_epoch_s']:.3f} s with the callback, of it "
            f"{r['hooks_cpu_per_epoch_s']:.3f} s in its hooks (ratio {r['hooks_cpu_ratio']:.3f}); "
            f"CPU ratio {r['cpu_ratio']:.3f} (epochs {low:.3f}-{high:.3f}; windows median "
            f"{r['window_cpu_ratio_median']:.3f}, quartiles {q1:.3f}-{q3:.3f}), wall ratio "
            f"{r['wall_ratio']:.3f}; whole fit incl. epoch 0 {r['whole_fit_cpu_ratio']:.3f} "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    harness.write_json(
        args,
        {
            "params": {**p, "model": args.model, "threads": threads},
            "target": TARGET,
            "backends": results,
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
