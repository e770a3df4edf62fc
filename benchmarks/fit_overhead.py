"""Per-``fit`` cost of BatchNormCallback in short fits, as users who call ``fit`` in a loop pay it.

One model (a CIFAR-style ResNet, 32x32x3, batch 64), fitted again and again
in ONE process: every measurement is one whole ``model.fit`` of ``steps``
steps with a NEW callback, configurations alternating in a rotating order per
round (``harness.alternate``), process CPU and wall time. Configurations:

* ``bare``: no callback;
* ``keras_tensorboard``: ``keras.callbacks.TensorBoard(histogram_freq=1)``, the reference;
* ``bn_default``: ``BatchNormCallback()`` at its defaults (graph, gap probe, capture);
* ``bn_no_graph``: ``BatchNormCallback(write_graph=False)`` (capture and gap probe);
* ``bn_capture_only``: ``BatchNormCallback(write_graph=False, gap_every_n_epochs=0)``;
* ``bare_after_bn``: a bare ``fit`` right after an (untimed) ``bn_default`` fit,
  which shows whether the callback leaves work (a retrace) to the next plain ``fit``;
* ``bare_after_bare``: its control, a bare ``fit`` right after an (untimed) bare fit.

Ratios are taken pair by pair within a round against ``bare``; "extra CPU per
fit" is the median of (configuration - bare) CPU seconds. The components of
the defaults' fixed cost are differences of those medians: capture
(``bn_capture_only``), gap probe (``bn_no_graph`` - ``bn_capture_only``), run
graph (``bn_default`` - ``bn_no_graph``), next plain fit (``bare_after_bn`` -
``bare_after_bare``: both time a bare ``fit`` that follows an untimed one); and,
measured directly inside the ``bn_default`` fits, the CPU of the gap probe's
evaluations (``gap_evaluations``). The work paid once per model (the
first ``fit`` of a new model with the callback, against a new model's first
bare ``fit``) is measured after the rounds. TensorFlow's "triggered
tf.function retracing" warnings (logged to the ``tensorflow`` logger) are
counted per configuration over the whole run, warm-up included.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.quiet_tensorflow()

import tensorflow as tf  # noqa: E402
from training_overhead import dataset, resnet  # noqa: E402

from tb_bn_plugin import BatchNormCallback  # noqa: E402
from tb_bn_plugin.training.gap_probe import GapProbe  # noqa: E402

keras = tf.keras

MODES = {
    "full": dict(steps=40, rounds=5, batch=64, blocks=2, width=16, image=32),
    "quick": dict(steps=20, rounds=3, batch=32, blocks=2, width=16, image=32),
    "smoke": dict(steps=3, rounds=2, batch=8, blocks=1, width=4, image=16),
}
FIRST_FIT_ROUNDS = {"full": 2, "quick": 1, "smoke": 1}
TARGETS = {"bn_default_cpu_ratio": 1.05, "bn_default_extra_vs_tensorboard": 2.0}


class RetraceCounter(logging.Handler):
    """Counts TensorFlow's "triggered tf.function retracing" warnings.

    TensorFlow logs them through the ``tensorflow`` logger (``tf.get_logger()``),
    whose own handler prints them; this handler sits beside it.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.functions: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "triggered tf.function retracing" in message:
            self.count += 1
            # "... calls to <function NAME at 0x...> triggered ...": which function retraced.
            self.functions.add(message.split("<", 1)[-1].split(" at 0x", 1)[0])


class GapEvaluationClock:
    """Process CPU seconds spent in ``GapProbe.evaluate`` (the probe's forward passes) while
    installed: the gap probe's share of a fit measured directly, not as a difference of
    two noisy whole-fit medians."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self._evaluate = GapProbe.evaluate

    def install(self) -> None:
        evaluate = self._evaluate

        def timed(probe, *args, **kwargs):
            start = time.process_time()
            try:
                return evaluate(probe, *args, **kwargs)
            finally:
                self.cpu_s += time.process_time() - start

        GapProbe.evaluate = timed

    def uninstall(self) -> None:
        GapProbe.evaluate = self._evaluate


def compiled_resnet(p: dict):
    model = resnet(blocks_per_stage=p["blocks"], width=p["width"], image=p["image"])
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(argv=None) -> int:
    started = time.perf_counter()
    args = harness.parse_args("fit_overhead", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    model = compiled_resnet(p)
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    data = dataset(p["batch"], p["image"])
    root = tempfile.mkdtemp(prefix="fit_overhead_")
    counter = RetraceCounter()
    tf.get_logger().addHandler(counter)
    retraces: dict[str, int] = {}
    fits = {"n": 0}

    def fit(callbacks, on=None):
        (on or model).fit(
            data, steps_per_epoch=p["steps"], epochs=1, verbose=0, callbacks=callbacks
        )

    def logdir() -> str:
        fits["n"] += 1
        return os.path.join(root, f"fit{fits['n']}")

    gap_clock = GapEvaluationClock()
    gap_clock.install()

    def counted(name, make_callbacks):
        def run():
            before, gap_before = counter.count, gap_clock.cpu_s
            fit(make_callbacks())
            retraces[name] = retraces.get(name, 0) + counter.count - before
            return {"gap_evaluations_cpu_s": gap_clock.cpu_s - gap_before}

        return run

    def bare_after(name, make_callbacks):
        """A timed bare fit right after an untimed fit with ``make_callbacks()``."""

        def run():
            fit(make_callbacks())
            before = counter.count
            wall, cpu, _ = harness.time_call(lambda: fit([]))
            retraces[name] = retraces.get(name, 0) + counter.count - before
            return {"wall": wall, "cpu": cpu}

        return run

    configs = {
        "bare": counted("bare", list),
        "keras_tensorboard": counted(
            "keras_tensorboard", lambda: [keras.callbacks.TensorBoard(logdir(), histogram_freq=1)]
        ),
        "bn_default": counted("bn_default", lambda: [BatchNormCallback(logdir())]),
        "bn_no_graph": counted(
            "bn_no_graph", lambda: [BatchNormCallback(logdir(), write_graph=False)]
        ),
        "bn_capture_only": counted(
            "bn_capture_only",
            lambda: [BatchNormCallback(logdir(), write_graph=False, gap_every_n_epochs=0)],
        ),
        "bare_after_bn": bare_after("bare_after_bn", lambda: [BatchNormCallback(logdir())]),
        "bare_after_bare": bare_after("bare_after_bare", list),
    }
    print(
        f"model: ResNet-{6 * p['blocks'] + 2}, {n_bn} BatchNormalization layers; "
        f"{p['steps']}-step fits at batch {p['batch']}, {p['rounds']} rounds",
        flush=True,
    )
    fit([])  # the model's first trace, paid once by any user
    for name, run in configs.items():  # warm-up: every configuration once, untimed
        print(f"  warm-up {name}", flush=True)
        run()
    samples = harness.alternate(configs, p["rounds"])
    summary = harness.summarize(samples, "bare")
    base = samples["bare"]
    for name, rows in samples.items():
        extra = [r["cpu"] - b["cpu"] for r, b in zip(rows, base)]
        summary[name]["extra_cpu_s"] = harness.median(extra)
        summary[name]["retrace_warnings"] = retraces.get(name, 0)
    headers = ["configuration", "CPU ratio", "wall ratio", "extra CPU / fit", "retrace warnings"]
    rows = [
        [
            name,
            f"{s['cpu_ratio']['median']:.3f}",
            f"{s['wall_ratio']['median']:.3f}",
            f"{s['extra_cpu_s']:+.2f} s",
            s["retrace_warnings"],
        ]
        for name, s in summary.items()
    ]
    print(harness.format_table(headers, rows))
    extra = {name: s["extra_cpu_s"] for name, s in summary.items()}
    components = {
        "capture_s": extra["bn_capture_only"],
        "gap_probe_s": extra["bn_no_graph"] - extra["bn_capture_only"],
        "run_graph_s": extra["bn_default"] - extra["bn_no_graph"],
        "next_plain_fit_s": extra["bare_after_bn"] - extra["bare_after_bare"],
        # Measured inside the bn_default fits themselves (GapEvaluationClock).
        "gap_evaluations_s": harness.median(
            [r["gap_evaluations_cpu_s"] for r in samples["bn_default"]]
        ),
    }
    gap_clock.uninstall()
    print(
        "extra CPU per fit at defaults by component: "
        + ", ".join(f"{k[:-2]} {v:+.2f} s" for k, v in components.items())
    )
    first_fit = measure_first_fit(p, data, FIRST_FIT_ROUNDS[args.mode], fit, logdir)
    print(
        f"first fit of a new model (once per model): bare {first_fit['bare_cpu_s']:.2f} s CPU, "
        f"with BatchNormCallback() {first_fit['bn_default_cpu_s']:.2f} s "
        f"({first_fit['extra_cpu_s']:+.2f} s)"
    )
    print(
        f"retracing warnings over the whole run: {counter.count}"
        + (f" ({', '.join(sorted(counter.functions))})" if counter.functions else "")
    )
    tb_extra = summary["keras_tensorboard"]["extra_cpu_s"]
    verdict = {
        "bn_default_cpu_ratio": summary["bn_default"]["cpu_ratio"]["median"],
        "bn_default_extra_vs_tensorboard": (
            summary["bn_default"]["extra_cpu_s"] / tb_extra if tb_extra > 0 else float("nan")
        ),
    }
    print(
        f"bn_default: CPU ratio {verdict['bn_default_cpu_ratio']:.3f} (target <= "
        f"{TARGETS['bn_default_cpu_ratio']}), extra CPU "
        f"{verdict['bn_default_extra_vs_tensorboard']:.1f}x Keras TensorBoard's "
        f"(target <= {TARGETS['bn_default_extra_vs_tensorboard']})"
    )
    result = {
        "params": p,
        "batchnorm_layers": n_bn,
        "targets": TARGETS,
        "verdict": verdict,
        "configurations": summary,
        "components_extra_cpu_s": components,
        "first_fit": first_fit,
        "retrace_warnings": {"total": counter.count, "functions": sorted(counter.functions)},
    }
    harness.write_json(args, result, started)
    return 0


def measure_first_fit(p: dict, data, rounds: int, fit, logdir) -> dict:
    """CPU seconds of a new model's first ``fit``, bare and with ``BatchNormCallback()``
    (alternating, median over ``rounds``): what the callback traces once per model."""
    bare, with_callback = [], []
    for _ in range(rounds):
        bare.append(harness.time_call(functools.partial(fit, [], on=compiled_resnet(p)))[1])
        first = functools.partial(fit, [BatchNormCallback(logdir())], on=compiled_resnet(p))
        with_callback.append(harness.time_call(first)[1])
    return {
        "bare_cpu_s": harness.median(bare),
        "bn_default_cpu_s": harness.median(with_callback),
        "extra_cpu_s": harness.median([b - a for a, b in zip(bare, with_callback)]),
        "rounds": rounds,
    }


if __name__ == "__main__":
    sys.exit(main())
