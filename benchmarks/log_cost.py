"""Cost of one BatchNormCallback log event vs model size, with a breakdown.

Models: dense stacks with 1, 10, 50, 100 BatchNormalization layers (and a few
other widths so per-layer and per-channel costs can be told apart), and
``keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))``
(53 BN layers, 26,560 channels; never downloads anything).

Each model is fit for 2 steps with a BatchNormCallback that logs only at
epoch/train end; a probe callback placed *before* it times, in its
``on_train_end`` (capture installed, writer open, snapshot function traced by
a first log), repeated log events of the last step:

* ``log_full``: the callback's own ``_log(step, force_snapshot=True)``
  (summary records + per-channel snapshots for every layer);
* ``log_summary_only``: ``_log`` on a step where no snapshot is due;
* the breakdown of a full log, done the way ``LoggingSession.log_step`` does it: ``snapshot``
  (``StatsCapture.snapshot``: one tf.function call, one device round trip for
  all layers, then numpy slicing), ``records`` (``summary.layer_items``: numpy
  summary records of all layers at once, per-channel records), ``write``
  (``SummaryWriter.write_items``: one traced call writing every tag), and
  ``flush``.

Median over repeats (wall and process CPU). Then cost vs total channels:
linear fit (slope µs/channel, intercept, R²), and a two-variable fit
``cost = a*channels + b*layers + c`` giving the per-layer overhead.

Run: ``python benchmarks/log_cost.py [--quick | --smoke] [--out PATH]``.
"""

from __future__ import annotations

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

from tb_bn_plugin import BatchNormCallback, records, summary  # noqa: E402

keras = tf.keras

MODES = {
    # (name, BN layers, width) for dense stacks; "resnet50" adds the application model
    "full": dict(
        models=[
            ("dense_1", 1, 64),
            ("dense_10", 10, 64),
            ("dense_50", 50, 64),
            ("dense_100", 100, 64),
            ("dense_10_w1024", 10, 1024),
            ("dense_100_w8", 100, 8),
            ("resnet50", 53, None),
        ],
        repeats=30,
    ),
    "quick": dict(
        models=[
            ("dense_1", 1, 64),
            ("dense_10", 10, 64),
            ("dense_50", 50, 64),
            ("dense_100", 100, 64),
            ("dense_10_w1024", 10, 1024),
            ("resnet50", 53, None),
        ],
        repeats=10,
    ),
    "smoke": dict(
        models=[("dense_1", 1, 16), ("dense_10", 10, 16), ("dense_10_w64", 10, 64)], repeats=3
    ),
}


def dense_stack(n_bn: int, width: int, inputs: int = 32) -> keras.Model:
    x = keras.Input((inputs,))
    h = x
    for i in range(n_bn):
        h = keras.layers.Dense(width, name=f"dense_{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn_{i}")(h)
    return keras.Model(x, keras.layers.Dense(1)(h), name=f"dense_{n_bn}x{width}")


def resnet50() -> keras.Model:
    return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)


class _Probe(keras.callbacks.Callback):
    """Placed before the BatchNormCallback: its on_train_end runs while capture is installed."""

    def __init__(self, bn_cb: BatchNormCallback, repeats: int) -> None:
        super().__init__()
        self.cb = bn_cb
        self.repeats = repeats
        self.result = None

    def on_train_end(self, logs=None):
        cb = self.cb
        session = cb._session
        step = cb._steps_done()
        first_wall, first_cpu, _ = harness.time_call(lambda: cb._log(step, force_snapshot=True))
        parts = {
            k: {"wall": [], "cpu": []}
            for k in ("log_full", "log_summary_only", "snapshot", "records", "write", "flush")
        }

        def add(key, wall, cpu):
            parts[key]["wall"].append(wall)
            parts[key]["cpu"].append(cpu)

        cadence = session.cadence
        for _ in range(self.repeats):
            add("log_full", *harness.time_call(lambda: cb._log(step, force_snapshot=True))[:2])
            # A logged step with no snapshot due (most default-cadence logs when snapshots are
            # spaced).
            session.cadence = records.SnapshotCadence(10**9)
            session.cadence.next()  # the first log snapshots; the next ones do not
            add("log_summary_only", *harness.time_call(lambda: cb._log(step))[:2])
            session.cadence = cadence
            # Breakdown of a full log, step by step as LoggingSession.log_step does it.
            wall, cpu, snaps = harness.time_call(lambda: session.capture.snapshot(step))
            add("snapshot", wall, cpu)

            wall, cpu, items = harness.time_call(
                lambda snaps=snaps: summary.layer_items(snaps, True, session.channel_dtype)
            )
            add("records", wall, cpu)
            wall, cpu, _ = harness.time_call(
                lambda items=items: session.writer.write_items(step, items)
            )
            add("write", wall, cpu)
            add("flush", *harness.time_call(session.writer.flush)[:2])
        self.result = {
            "first_log_wall_s": first_wall,
            "first_log_cpu_s": first_cpu,
            "snapshot_interval": cadence.interval,
            **{
                k: {
                    "median_wall_s": harness.median(v["wall"]),
                    "median_cpu_s": harness.median(v["cpu"]),
                    "min_wall_s": min(v["wall"]),
                }
                for k, v in parts.items()
            },
        }


def measure(name: str, n_bn: int, width, repeats: int, tmp: str) -> dict:
    keras.utils.set_random_seed(0)
    if width is None:
        model, shape, batch = resnet50(), (64, 64, 3), 4
    else:
        model, shape, batch = dense_stack(n_bn, width), (32,), 16
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if width is None
        else "mse",
    )
    rng = np.random.RandomState(0)
    x = rng.randn(2 * batch, *shape).astype("float32")
    y = (
        rng.randint(0, 10, (2 * batch,))
        if width is None
        else rng.randn(2 * batch, 1).astype("float32")
    )
    cb = BatchNormCallback(os.path.join(tmp, name), log_every_n_steps=10**9)
    probe = _Probe(cb, repeats)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[probe, cb])
    bn_layers = [
        l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)
    ]
    channels = sum(int(l.moving_mean.shape[0]) for l in bn_layers)
    res = probe.result
    res.update(
        model=name,
        bn_layers=len(bn_layers),
        channels=channels,
        fit_and_measure_s=time.perf_counter() - t0,
    )
    return res


def main(argv=None) -> int:
    started = time.perf_counter()
    args = harness.parse_args("log_cost", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    tmp = tempfile.mkdtemp(prefix="bench_logcost_")
    results = []
    for name, n_bn, width in p["models"]:
        print(f"measuring {name} ...", flush=True)
        results.append(measure(name, n_bn, width, p["repeats"], tmp))
        keras.backend.clear_session()
    shutil.rmtree(tmp, ignore_errors=True)

    ms = lambda r, k: 1e3 * r[k]["median_wall_s"]  # noqa: E731
    rows = []
    for r in results:
        total = ms(r, "log_full")
        rows.append(
            [
                r["model"],
                r["bn_layers"],
                r["channels"],
                total,
                ms(r, "log_summary_only"),
                ms(r, "snapshot"),
                ms(r, "records"),
                ms(r, "write"),
                ms(r, "flush"),
                1e3 * total / r["bn_layers"],
                r["snapshot_interval"],
            ]
        )
        parts = ("snapshot", "records", "write", "flush")
        r["breakdown_share"] = {
            k: r[k]["median_wall_s"] / sum(r[q]["median_wall_s"] for q in parts) for k in parts
        }
    print()
    print(
        harness.format_table(
            [
                "model",
                "bn",
                "channels",
                "full_ms",
                "summary_only_ms",
                "snapshot_ms",
                "records_ms",
                "write_ms",
                "flush_ms",
                "us/layer",
                "snap_every",
            ],
            rows,
        )
    )

    chans = [r["channels"] for r in results]
    layers = [r["bn_layers"] for r in results]
    fits = {}
    for key in ("log_full", "log_summary_only", "snapshot", "records", "write"):
        costs = [1e6 * r[key]["median_wall_s"] for r in results]
        one = harness.linear_fit(chans, costs)
        two = harness.linear_fit2(chans, layers, costs)
        fits[key] = {
            "vs_channels": {
                "slope_us_per_channel": one["slope"],
                "intercept_us": one["intercept"],
                "r2": one["r2"],
            },
            "vs_channels_and_layers": {
                "us_per_channel": two["a"],
                "us_per_layer": two["b"],
                "intercept_us": two["c"],
                "r2": two["r2"],
            },
        }
    print()
    print(
        harness.format_table(
            [
                "cost",
                "slope_us/ch",
                "intercept_us",
                "R2",
                "2-var: us/ch",
                "us/layer",
                "intercept_us",
                "R2",
            ],
            [
                [
                    k,
                    f["vs_channels"]["slope_us_per_channel"],
                    f["vs_channels"]["intercept_us"],
                    f["vs_channels"]["r2"],
                    f["vs_channels_and_layers"]["us_per_channel"],
                    f["vs_channels_and_layers"]["us_per_layer"],
                    f["vs_channels_and_layers"]["intercept_us"],
                    f["vs_channels_and_layers"]["r2"],
                ]
                for k, f in fits.items()
            ],
        )
    )
    harness.write_json(
        args,
        {
            "params": {"repeats": p["repeats"], "models": p["models"]},
            "models": results,
            "fits": fits,
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
