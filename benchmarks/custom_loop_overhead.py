"""Overhead of BatchNormLogger in a hand-written JAX training loop, side by side.

Keras 3 on JAX, in a child process with XLA on ``--threads`` threads (default
1, as ``backend_overhead.py``): the conv net of ``backend_overhead.py``
(``blocks`` conv/BN/ReLU blocks, 16x16 inputs, batch 64) trained by a
stateless loop as Keras' guide writes it (``stateless_call`` inside
``jax.value_and_grad``, ``optimizer.stateless_apply``), ``epochs`` epochs of
``steps`` steps, in three configurations:

* ``bare``: ``jax.jit(step)``, no logger;
* ``logger_jax_jit``: the same ``jax.jit(step)`` with a ``BatchNormLogger``
  (``log(state=...)`` after each step): the batch statistics reach the host
  by a host callback in every step, and ``log()`` waits for them;
* ``logger_jit``: the step compiled by ``BatchNormLogger.jit``: plain steps,
  and the instrumented one only in the logged steps.

Both loggers log every ``LOG_EVERY`` steps (the callback's default). A
configuration's sample is one whole loop as a user pays it: building the
model and the logger, compiling, every step, closing the logger (writing
the event file); configurations alternate in a rotating order per round and
ratios are taken within a round (``harness``). The steady state is reported
beside it: the median epoch after the first (compiling), its CPU ratio to
``bare``'s in the same round.

Run: ``python benchmarks/custom_loop_overhead.py [--quick | --smoke] [--out PATH]
[--threads N]``.
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

MODES = {
    "full": {"steps": 200, "epochs": 3, "rounds": 6, "blocks": 3, "width": 16},
    "quick": {"steps": 100, "epochs": 3, "rounds": 4, "blocks": 3, "width": 16},
    "smoke": {"steps": 4, "epochs": 2, "rounds": 1, "blocks": 2, "width": 8},
}
BATCH = 64
LOG_EVERY = 50
CONFIGS = ("bare", "logger_jax_jit", "logger_jit")


def child(mode: str, threads: int) -> dict:
    """The alternating rounds, in this process (``KERAS_BACKEND=jax``)."""
    harness.limit_threads(threads)
    import jax
    import keras
    import numpy as np

    from tb_bn_plugin import BatchNormLogger

    p = MODES[mode]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * p["steps"], 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, BATCH * p["steps"])
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loop(config: str, logdir: str) -> dict:
        m = harness.conv_bn_net(p["blocks"], p["width"])
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        optimizer.build(m.trainable_variables)

        def loss_and_updates(trainable, non_trainable, xb, yb):
            logits, non_trainable = m.stateless_call(trainable, non_trainable, xb, training=True)
            return loss_fn(yb, logits), non_trainable

        grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

        def step_function(state, xb, yb):
            trainable, non_trainable, optimizer_values = state
            (_, non_trainable), grads = grad_fn(trainable, non_trainable, xb, yb)
            trainable, optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads, trainable
            )
            return trainable, non_trainable, optimizer_values

        logger = None
        if config != "bare":
            logger = BatchNormLogger(
                m, logdir, log_every_n_steps=LOG_EVERY, run_name=config, optimizer=optimizer
            )
        if config == "logger_jit":
            train_step = logger.jit(step_function, donate_argnums=0)
        else:
            train_step = jax.jit(step_function, donate_argnums=0)
        owners = (m.trainable_variables, m.non_trainable_variables, optimizer.variables)
        state = tuple([v.value for v in variables] for variables in owners)
        epochs = []
        for _ in range(p["epochs"]):
            started = time.perf_counter(), time.process_time()
            for xb, yb in batches:
                state = train_step(state, xb, yb)
                if logger is not None:
                    logger.log(state=state)
            jax.block_until_ready(state)
            epochs.append(
                {
                    "wall": time.perf_counter() - started[0],
                    "cpu": time.process_time() - started[1],
                }
            )
        if logger is not None:
            logger.close()
        steady = epochs[1:]  # epoch 0 compiles
        return {
            "epoch_wall": harness.median([e["wall"] for e in steady]),
            "epoch_cpu": harness.median([e["cpu"] for e in steady]),
        }

    with tempfile.TemporaryDirectory() as logdir:
        samples = harness.alternate(
            {config: (lambda c=config: loop(c, logdir)) for config in CONFIGS},
            p["rounds"],
            progress=False,
        )
    summary = harness.summarize(samples, "bare")
    steady = harness.pairwise_ratios(samples, "bare", "epoch_cpu")
    for config in CONFIGS:
        summary[config]["median_epoch_cpu_s"] = harness.median(
            [s["epoch_cpu"] for s in samples[config]]
        )
        summary[config]["epoch_cpu_ratio"] = steady[config]
    return summary


def add_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="XLA kernel threads")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
        return 0
    started = time.perf_counter()
    args = harness.parse_args(
        "custom_loop_overhead", __doc__.splitlines()[0], argv, add_arguments=add_arguments
    )
    threads = args.threads
    p = MODES[args.mode]
    print(f"mode={args.mode} {p} batch={BATCH} log_every={LOG_EVERY} threads={threads}", flush=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", args.mode, str(threads)],
        env=harness.backend_env("jax", threads),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], flush=True)
        return 1
    configs = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [
        [
            name,
            f"{c['median_wall_s']:.2f}",
            f"{c['wall_ratio']['median']:.3f}",
            f"{c['cpu_ratio']['median']:.3f}",
            f"{c['median_epoch_cpu_s']:.3f}",
            f"{c['epoch_cpu_ratio']['median']:.3f}",
        ]
        for name, c in configs.items()
    ]
    headers = ["config", "loop s", "loop wall ratio", "loop CPU ratio", "epoch CPU s", "ratio"]
    print(harness.format_table(headers, rows), flush=True)
    harness.write_json(
        args,
        {
            "params": {**p, "batch": BATCH, "log_every_n_steps": LOG_EVERY, "threads": threads},
            "configs": configs,
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
