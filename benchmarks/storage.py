"""Event-file bytes per logged step of BatchNormCallback at default settings (ResNet50).

``keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))`` (53 BN
layers, 26,560 channels; nothing is downloaded) is built and compiled, and the
callback's hooks are driven directly, as ``fit`` calls them, with the
optimizer's step counter set by hand: no training cost, the same logging code
and cadence (default ``log_every_n_steps``, default ``max_bytes_per_log``
budget, per-channel snapshot every k-th logged step and at each epoch end).
Event-file sizes are read from disk (after a flush) after every logged step.

Scenarios: one long epoch (only the budget's snapshot cadence), and epochs of
a fixed number of steps (each epoch end adds a forced snapshot). Reports
bytes per logged step (slope of a linear fit of bytes vs logged steps, and
the plain average), the callback's own estimate, and the effective snapshot
interval chosen by the budget. Target: <= 50 KB per logged step on average.

Run: ``python benchmarks/storage.py [--quick | --smoke] [--out PATH]``.
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

from tb_bn_plugin import BatchNormCallback, records  # noqa: E402

keras = tf.keras

TARGET_BYTES_PER_LOGGED_STEP = 50_000
MODES = {
    # (scenario name, steps per epoch or None for one long epoch, logged steps)
    "full": dict(
        model="resnet50",
        scenarios=[("one_long_epoch", None, 1000), ("epochs_of_500_steps", 500, 200)],
    ),
    "quick": dict(
        model="resnet50",
        scenarios=[("one_long_epoch", None, 200), ("epochs_of_500_steps", 500, 100)],
    ),
    "smoke": dict(
        model="dense_10", scenarios=[("one_long_epoch", None, 12), ("epochs_of_100_steps", 100, 6)]
    ),
}


def build(kind: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    if kind == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    else:
        x = keras.Input((8,))
        h = x
        for i in range(10):
            h = keras.layers.BatchNormalization(name=f"bn_{i}")(keras.layers.Dense(512)(h))
        model = keras.Model(x, keras.layers.Dense(1)(h))
    model.compile(optimizer="sgd", loss="mse")
    return model


def dir_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(path)
        for f in files
        if not f.startswith(".")
    )


def run_scenario(model, log_dir: str, steps_per_epoch, logged_target: int) -> dict:
    """Drive the callback's hooks like fit does, at logging steps only (other steps do nothing)."""
    cb = BatchNormCallback(log_dir)
    cb.set_model(model)
    iterations = model.optimizer.iterations
    iterations.assign(0)
    cb.on_train_begin()
    every = cb.log_every_n_steps
    curve = []  # (logged steps so far, bytes on disk)
    logged = 0
    step = 0
    t0 = time.perf_counter()
    epoch = 0
    while logged < logged_target:
        cb.on_epoch_begin(epoch)
        epoch_steps = steps_per_epoch or every * (logged_target + 1)
        for batch in range(every, epoch_steps, every):
            if logged >= logged_target:
                break
            iterations.assign(step + batch)
            before = cb._session.last_logged
            cb.on_train_batch_begin(batch)
            if cb._session.last_logged > before:
                logged += 1
                cb._session.writer.flush()
                curve.append((logged, dir_bytes(log_dir)))
        if steps_per_epoch is None:
            break
        step += epoch_steps
        iterations.assign(step)
        before = cb._session.last_logged
        cb.on_epoch_end(epoch)
        if cb._session.last_logged > before:
            logged += 1
            curve.append((logged, dir_bytes(log_dir)))
        epoch += 1
    elapsed = time.perf_counter() - t0
    interval = cb._session.cadence.interval
    configs = cb._session.capture.configs
    cb.on_train_end()
    final = dir_bytes(log_dir)
    x = [c[0] for c in curve]
    y = [c[1] for c in curve]
    fit = harness.linear_fit(x, y)
    estimate = (
        records.summary_bytes(configs) + records.channel_bytes(configs, cb.channel_dtype) / interval
    )
    return {
        "steps_per_epoch": steps_per_epoch,
        "logged_steps": logged,
        "epochs": epoch if steps_per_epoch else 1,
        "snapshot_interval_logged_steps": interval,
        "snapshot_interval_training_steps": interval * every,
        "total_bytes": final,
        "avg_bytes_per_logged_step": final / logged,
        "slope_bytes_per_logged_step": fit["slope"],
        "intercept_bytes": fit["intercept"],
        "r2": fit["r2"],
        "mb_per_1000_logged_steps": fit["slope"] * 1000 / 1e6,
        "callback_estimate_bytes_per_logged_step": estimate,
        "summary_bytes_estimate": records.summary_bytes(configs),
        "snapshot_bytes_estimate": records.channel_bytes(configs, cb.channel_dtype),
        "meets_target": fit["slope"] <= TARGET_BYTES_PER_LOGGED_STEP
        and final / logged <= TARGET_BYTES_PER_LOGGED_STEP,
        "drive_seconds": elapsed,
        "growth_curve": curve,
    }


def measured_event_sizes(log_dir: str) -> dict:
    """Average serialized event size per tag kind, read back from the event files."""
    from tensorboard.backend.event_processing import event_file_loader

    sizes: dict[str, list[int]] = {}
    meta: list[int] = []
    for d, _, files in os.walk(log_dir):
        for f in files:
            if "tfevents" not in f:
                continue
            for event in event_file_loader.EventFileLoader(os.path.join(d, f)).Load():
                for value in event.summary.value:
                    kind = value.tag.rsplit("/", 1)[-1]
                    sizes.setdefault(kind, []).append(event.ByteSize())
                    meta.append(value.metadata.ByteSize())
    return {
        "events_per_kind": {k: len(v) for k, v in sizes.items()},
        "mean_event_bytes_per_kind": {k: float(np.mean(v)) for k, v in sizes.items()},
        "mean_metadata_bytes_per_event": float(np.mean(meta)) if meta else None,
        "events_with_metadata_fraction": float(np.mean([m > 0 for m in meta])) if meta else None,
    }


def main(argv=None) -> int:
    started = time.perf_counter()
    args = harness.parse_args("storage", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    model = build(p["model"])
    bn = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    channels = sum(int(l.moving_mean.shape[0]) for l in bn)
    print(f"model {p['model']}: {len(bn)} BN layers, {channels} channels")
    defaults = {
        k: repr(v.default)
        for k, v in inspect.signature(BatchNormCallback.__init__).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    print(f"callback defaults: {defaults}")
    tmp = tempfile.mkdtemp(prefix="bench_storage_")
    scenarios = {}
    for name, spe, n in p["scenarios"]:
        print(f"scenario {name}: {n} logged steps ...", flush=True)
        log_dir = os.path.join(tmp, name)
        res = run_scenario(model, log_dir, spe, n)
        res["event_sizes"] = measured_event_sizes(log_dir)
        scenarios[name] = res
    shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        [
            name,
            r["logged_steps"],
            r["snapshot_interval_logged_steps"],
            r["snapshot_interval_training_steps"],
            r["avg_bytes_per_logged_step"] / 1e3,
            r["slope_bytes_per_logged_step"] / 1e3,
            r["r2"],
            r["mb_per_1000_logged_steps"],
            r["callback_estimate_bytes_per_logged_step"] / 1e3,
            "yes" if r["meets_target"] else "NO",
        ]
        for name, r in scenarios.items()
    ]
    print()
    print(
        harness.format_table(
            [
                "scenario",
                "logged",
                "snap_every_logs",
                "snap_every_steps",
                "avg_KB/log",
                "slope_KB/log",
                "R2",
                "MB/1000 logs",
                "estimate_KB/log",
                "<=50KB",
            ],
            rows,
        )
    )
    for name, r in scenarios.items():
        print(
            f"{name}: mean event bytes per kind {r['event_sizes']['mean_event_bytes_per_kind']}, "
            f"metadata bytes per event {r['event_sizes']['mean_metadata_bytes_per_event']}"
        )
    harness.write_json(
        args,
        {
            "model": p["model"],
            "bn_layers": len(bn),
            "channels": channels,
            "callback_defaults": defaults,
            "target_bytes_per_logged_step": TARGET_BYTES_PER_LOGGED_STEP,
            "scenarios": scenarios,
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
