"""Training overhead of BatchNormCallback per Keras 3 backend (tensorflow, jax, torch).

For each backend, in its own subprocess (``KERAS_BACKEND`` is fixed when Keras
is imported): a model (``--model convnet``, the default: a small conv net of
``blocks`` conv/BN/ReLU blocks, 16x16 inputs, batch 64, 10-25 ms steps, where the
callback's fixed cost per log shows; ``--model resnet20``: the ResNet-20 of
``training_overhead.py``, 21 BN layers at 32x32, the long fit the 1.02 target
is about, at batch 32) trained by ``fit`` on CPU with and without ``BatchNormCallback`` at
its defaults (the train/inference gap each epoch included), one ``fit`` of
``epochs`` epochs of ``steps`` steps per configuration and round. Rounds
alternate the order (bare then callback, callback then bare, ...) so a
drifting machine load cancels. Each epoch is timed by a callback (process
CPU time and wall clock); epoch 0 (tracing/compiling) is untimed. A round's
ratio is its median epoch time with the callback over its median without;
the result is the median of the per-round ratios (with their spread), by CPU
time and by wall clock. ``extra_cpu_per_epoch_s`` (median over rounds of the
difference) is the callback's cost per epoch, per-step and per-epoch work
together.

An epoch's time runs from the previous epoch's end to its own, taken by a
timer that Keras calls after the callback (callbacks run in list order): it
holds the steps and every hook of the epoch, the callback's epoch-end work
(the epoch's last log, the gap probe, the flush) included. (Until 2026-11-29
the timer ran first, from its on_epoch_begin to its on_epoch_end, and so left
out the callback's epoch-end work; the ratios of that time are per-step only.)
``hooks_cpu_per_epoch_s`` is measured directly in the same fits: the process
CPU time spent inside the callback's hooks per epoch (median over rounds),
the host-side part of the cost, which needs no difference of two noisy
fits; the rest of ``extra_cpu_per_epoch_s`` is spent inside the train steps.
On JAX the hooks' CPU overstates the callback's work: Keras dispatches JAX
steps asynchronously, and a hook that waits for the steps dispatched so far
(a logged step's ``settle``) is charged the CPU the XLA threads spend
computing them meanwhile (process CPU time counts every thread); compare
``extra_cpu_per_epoch_s`` there.

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
            "epochs": 3,
            "rounds": 8,
            "blocks": 3,
            "width": 16,
            "image": 16,
            "batch": 64,
        },
        "quick": {
            "steps": 100,
            "epochs": 3,
            "rounds": 6,
            "blocks": 3,
            "width": 16,
            "image": 16,
            "batch": 64,
        },
        "smoke": {
            "steps": 4,
            "epochs": 2,
            "rounds": 1,
            "blocks": 2,
            "width": 8,
            "image": 16,
            "batch": 64,
        },
    },
    "resnet20": {
        "full": {
            "steps": 100,
            "epochs": 2,
            "rounds": 4,
            "blocks": 3,
            "width": 16,
            "image": 32,
            "batch": 32,
        },
        "quick": {
            "steps": 50,
            "epochs": 2,
            "rounds": 3,
            "blocks": 3,
            "width": 16,
            "image": 32,
            "batch": 32,
        },
        "smoke": {
            "steps": 2,
            "epochs": 2,
            "rounds": 1,
            "blocks": 1,
            "width": 4,
            "image": 16,
            "batch": 64,
        },
    },
}
TARGET = 1.02


def child(model_name: str, mode: str, threads: int) -> dict:
    """One backend (this process's ``KERAS_BACKEND``): the alternating rounds, per-epoch times."""
    harness.limit_threads(threads)
    import keras
    import numpy as np

    from tb_bn_plugin import BatchNormCallback

    p = MODELS[model_name][mode]

    def timed(hook):
        def timed_hook(self, *args, **kwargs):
            started = time.process_time()
            try:
                return hook(self, *args, **kwargs)
            finally:
                self.hooks_cpu += time.process_time() - started

        return timed_hook

    class HookTimedCallback(BatchNormCallback):
        """``BatchNormCallback`` that adds the process CPU time of its hooks to ``hooks_cpu``."""

        hooks_cpu = 0.0
        on_train_begin = timed(BatchNormCallback.on_train_begin)
        on_epoch_begin = timed(BatchNormCallback.on_epoch_begin)
        on_train_batch_begin = timed(BatchNormCallback.on_train_batch_begin)
        on_epoch_end = timed(BatchNormCallback.on_epoch_end)
        on_train_end = timed(BatchNormCallback.on_train_end)

    class EpochTimer(keras.callbacks.Callback):
        """Times each epoch from the previous epoch's end to its own; last in the list, so
        every other callback's hooks of the epoch (epoch-end work included) fall inside."""

        def __init__(self, hooked=None):
            super().__init__()
            self.hooked = hooked
            self.samples = []

        def mark(self):
            hooks = self.hooked.hooks_cpu if self.hooked is not None else 0.0
            return time.perf_counter(), time.process_time(), hooks

        def on_train_begin(self, logs=None):
            self.last = self.mark()

        def on_epoch_end(self, epoch, logs=None):
            now = self.mark()
            if epoch > 0:  # epoch 0 traces/compiles
                wall, cpu, hooks = (b - a for a, b in zip(self.last, now))
                self.samples.append({"wall": wall, "cpu": cpu, "hooks_cpu": hooks})
            self.last = now

    def model() -> keras.Model:
        if model_name == "resnet20":
            m = harness.resnet(p["blocks"], p["width"], p["image"])
        else:
            m = harness.conv_bn_net(p["blocks"], p["width"])
        m.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(p["batch"] * p["steps"], p["image"], p["image"], 3)).astype("float32")
    y = rng.integers(0, 10, p["batch"] * p["steps"])
    rounds = []
    with tempfile.TemporaryDirectory() as logdir:
        for r in range(p["rounds"]):
            order = ("bare", "bn_default") if r % 2 == 0 else ("bn_default", "bare")
            samples: dict[str, list] = {}
            for name in order:
                bn = [HookTimedCallback(logdir)] if name != "bare" else []
                timer = EpochTimer(*bn)
                callbacks = bn + [timer]
                model().fit(
                    x,
                    y,
                    batch_size=p["batch"],
                    epochs=p["epochs"],
                    shuffle=False,
                    verbose=0,
                    callbacks=callbacks,
                )
                samples[name] = timer.samples
            rounds.append(samples)
    return {"backend": keras.backend.backend(), "threads": threads, **summarise(rounds)}


def summarise(rounds: list[dict[str, list]]) -> dict:
    """Per-round medians and ratios, their median and spread, the per-epoch cost."""
    per_round = []
    for samples in rounds:
        medians = {
            name: {k: harness.median([s[k] for s in rows]) for k in ("wall", "cpu")}
            for name, rows in samples.items()
        }
        per_round.append(
            {
                "median_epoch_s": medians,
                "cpu_ratio": medians["bn_default"]["cpu"] / medians["bare"]["cpu"],
                "wall_ratio": medians["bn_default"]["wall"] / medians["bare"]["wall"],
                "extra_cpu_s": medians["bn_default"]["cpu"] - medians["bare"]["cpu"],
                "hooks_cpu_s": harness.median([s["hooks_cpu"] for s in samples["bn_default"]]),
            }
        )
    cpu = [r["cpu_ratio"] for r in per_round]
    wall = [r["wall_ratio"] for r in per_round]
    bare_epoch = harness.median([r["median_epoch_s"]["bare"]["cpu"] for r in per_round])
    extra = harness.median([r["extra_cpu_s"] for r in per_round])
    hooks = harness.median([r["hooks_cpu_s"] for r in per_round])
    return {
        "samples": rounds,
        "rounds": per_round,
        "cpu_ratio": harness.median(cpu),
        "cpu_ratio_range": [min(cpu), max(cpu)],
        "wall_ratio": harness.median(wall),
        "wall_ratio_range": [min(wall), max(wall)],
        "bare_epoch_cpu_s": bare_epoch,
        "extra_cpu_per_epoch_s": extra,
        "hooks_cpu_per_epoch_s": hooks,
        "hooks_cpu_ratio": 1 + hooks / bare_epoch,
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
        low, high = r["cpu_ratio_range"]
        print(
            f"{backend}: epoch CPU bare {r['bare_epoch_cpu_s']:.2f} s, "
            f"+{r['extra_cpu_per_epoch_s']:.3f} s with the callback, of it "
            f"{r['hooks_cpu_per_epoch_s']:.3f} s in its hooks (ratio {r['hooks_cpu_ratio']:.3f}); "
            f"CPU ratio {r['cpu_ratio']:.3f} (rounds {low:.3f}-{high:.3f}), "
            f"wall ratio {r['wall_ratio']:.3f} (load {os.getloadavg()[0]:.1f})",
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
