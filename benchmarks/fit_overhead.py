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
evaluations (``gap_evaluations``). The work paid once per model is measured
after the rounds: a new model's first ``fit`` and a later ``fit`` of it, bare and
with the callback, each component clocked where it happens (``CpuClocks`` around
the callback's hooks, the run graph's trace and write, the gap probe and the
snapshots; ``FirstStepClock`` around the first train-function call, which traces
it). TensorFlow's "triggered
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
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.quiet_tensorflow()

import tensorflow as tf  # noqa: E402
from training_overhead import dataset  # noqa: E402

from tb_bn_plugin import BatchNormCallback  # noqa: E402
from tb_bn_plugin.summary import SummaryWriter  # noqa: E402
from tb_bn_plugin.training import graph_trace  # noqa: E402
from tb_bn_plugin.training.capture import StatsCapture  # noqa: E402
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


class CpuClocks:
    """Process CPU seconds spent in chosen methods while installed, one clock per name.

    A component measured directly, around the call that does it, instead of as a
    difference of two noisy whole-fit medians. Nested clocks each count their own
    call (a clock around a hook includes the clocks of what the hook calls).
    """

    def __init__(self, targets: dict[str, tuple[Any, str]]) -> None:
        self.targets = targets  # name -> (owner, attribute)
        self.cpu_s = dict.fromkeys(targets, 0.0)
        self._originals: dict[str, Any] = {}

    def install(self) -> None:
        for name, (owner, attribute) in self.targets.items():
            original = getattr(owner, attribute)
            self._originals[name] = original
            setattr(owner, attribute, self._timed(name, original))

    def uninstall(self) -> None:
        for name, (owner, attribute) in self.targets.items():
            setattr(owner, attribute, self._originals.pop(name))

    def _timed(self, name: str, function: Any) -> Any:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.cpu_s[name] += time.process_time() - start

        return timed


class FirstStepClock(keras.callbacks.Callback):
    """CPU seconds of a fit's first train-function call (its trace, if not traced yet, and
    the first run); listed after every other callback, so their batch hooks stay outside."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_s = 0.0
        self._start = 0.0

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if batch == 0:
            self._start = time.process_time()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if batch == 0:
            self.cpu_s = time.process_time() - self._start


def compiled_resnet(p: dict):
    model = harness.resnet(blocks_per_stage=p["blocks"], width=p["width"], image=p["image"])
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

    gap_clock = CpuClocks({"gap_evaluations": (GapProbe, "evaluate")})
    gap_clock.install()

    def counted(name, make_callbacks):
        def run():
            before, gap_before = counter.count, gap_clock.cpu_s["gap_evaluations"]
            fit(make_callbacks())
            retraces[name] = retraces.get(name, 0) + counter.count - before
            return {"gap_evaluations_cpu_s": gap_clock.cpu_s["gap_evaluations"] - gap_before}

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
        # Measured inside the bn_default fits themselves (CpuClocks).
        "gap_evaluations_s": harness.median(
            [r["gap_evaluations_cpu_s"] for r in samples["bn_default"]]
        ),
    }
    gap_clock.uninstall()
    print(
        "extra CPU per fit at defaults by component: "
        + ", ".join(f"{k[:-2]} {v:+.2f} s" for k, v in components.items())
    )
    first_fit = measure_first_fit(p, data, FIRST_FIT_ROUNDS[args.mode], logdir)
    print(
        f"first fit of a new model: bare {first_fit['bare_cpu_s']:.2f} s CPU, "
        f"with BatchNormCallback() {first_fit['bn_default_cpu_s']:.2f} s "
        f"({first_fit['extra_cpu_s']:+.2f} s); by component, CPU s against the bare fit of "
        "the same rank (a new model's first fit, then a later fit of it):"
    )
    print(
        harness.format_table(
            ["component", "first fit", "later fit", "once per model"],
            [
                [label]
                + [f"{first_fit['breakdown'][key][column]:+.2f}" for column in BREAKDOWN_COLUMNS]
                for key, label in FIRST_FIT_COMPONENTS.items()
            ],
        )
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


# The callback's work in a fit, clocked where it happens; the hooks include the rest.
HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_epoch_end", "on_train_end")
BREAKDOWN_COLUMNS = ("first_fit_s", "later_fit_s", "once_per_model_s")
FIRST_FIT_COMPONENTS = {
    "train_step_first_call_s": "train step's first call (trace + run), minus Keras' own",
    "run_graph_s": "run graph (trace + write)",
    "gap_probe_s": "gap probe (construction, which traces it, + evaluations)",
    "snapshots_s": "snapshots (the first traces the snapshot function)",
    "other_callback_work_s": "other callback work (discovery, writer, stash, logs)",
    "unattributed_s": "unattributed (the other steps, fit's own work, noise)",
    "total_s": "total: the fit's CPU minus the bare fit's",
}


def first_fit_clocks() -> CpuClocks:
    return CpuClocks(
        {
            **{f"hook.{hook}": (BatchNormCallback, hook) for hook in HOOKS},
            "run_graph_trace": (graph_trace, "trace_model_graph"),
            "run_graph_write": (SummaryWriter, "graph"),
            "gap_probe_construction": (GapProbe, "__init__"),
            "gap_evaluations": (GapProbe, "evaluate"),
            "snapshots": (StatsCapture, "snapshot"),
        }
    )


def measure_first_fit(p: dict, data, rounds: int, logdir) -> dict:
    """The work paid once per model: a new model's first ``fit`` and a later ``fit`` of the same
    model, bare and with ``BatchNormCallback()`` (a new callback per fit), by component.

    Per round, each configuration fits a new model twice; every component is a
    difference to the bare fit of the same rank (first or later), measured directly
    (``CpuClocks``, ``FirstStepClock``) and summarised by its median over ``rounds``.
    """
    clocks = first_fit_clocks()
    clocks.install()
    try:
        per_round = []
        for _ in range(rounds):
            fits = {}
            for name, make_callbacks in (
                ("bare", list),
                ("bn_default", lambda: [BatchNormCallback(logdir())]),
            ):
                model = compiled_resnet(p)
                fits[name] = [
                    clocked_fit(model, make_callbacks(), p, data, clocks) for _ in range(2)
                ]
            per_round.append(
                {
                    rank: breakdown(fits["bn_default"][i], fits["bare"][i])
                    for i, rank in enumerate(("first_fit", "later_fit"))
                }
                | {"bare_cpu_s": fits["bare"][0]["cpu"], "bn_cpu_s": fits["bn_default"][0]["cpu"]}
            )
    finally:
        clocks.uninstall()
    medians = {
        rank: {c: harness.median([r[rank][c] for r in per_round]) for c in FIRST_FIT_COMPONENTS}
        for rank in ("first_fit", "later_fit")
    }
    return {
        "bare_cpu_s": harness.median([r["bare_cpu_s"] for r in per_round]),
        "bn_default_cpu_s": harness.median([r["bn_cpu_s"] for r in per_round]),
        "extra_cpu_s": medians["first_fit"]["total_s"],
        "rounds": rounds,
        "breakdown": {
            component: {
                "first_fit_s": medians["first_fit"][component],
                "later_fit_s": medians["later_fit"][component],
                "once_per_model_s": harness.median(
                    [r["first_fit"][component] - r["later_fit"][component] for r in per_round]
                ),
            }
            for component in FIRST_FIT_COMPONENTS
        },
    }


def clocked_fit(model, callbacks: list, p: dict, data, clocks: CpuClocks) -> dict[str, float]:
    """One ``fit`` of ``model``: its CPU seconds, its first step's and every clock's."""
    before = dict(clocks.cpu_s)
    first_step = FirstStepClock()
    start = time.process_time()
    model.fit(
        data,
        steps_per_epoch=p["steps"],
        epochs=1,
        verbose=0,
        callbacks=[*callbacks, first_step],
    )
    cpu = time.process_time() - start
    return {
        "cpu": cpu,
        "first_step": first_step.cpu_s,
        **{name: clocks.cpu_s[name] - before[name] for name in clocks.cpu_s},
    }


def breakdown(with_callback: dict[str, float], bare: dict[str, float]) -> dict[str, float]:
    """A fit with the callback against the bare fit of the same rank, by component (seconds)."""
    hooks = sum(with_callback[f"hook.{hook}"] for hook in HOOKS)
    # Inside the hooks:
    graph = with_callback["run_graph_trace"] + with_callback["run_graph_write"]
    gap = with_callback["gap_probe_construction"] + with_callback["gap_evaluations"]
    snapshots = with_callback["snapshots"]
    train_step = with_callback["first_step"] - bare["first_step"]
    total = with_callback["cpu"] - bare["cpu"]
    return {
        "train_step_first_call_s": train_step,
        "run_graph_s": graph,
        "gap_probe_s": gap,
        "snapshots_s": snapshots,
        "other_callback_work_s": hooks - graph - gap - snapshots,
        "unattributed_s": total - train_step - hooks,
        "total_s": total,
    }


if __name__ == "__main__":
    sys.exit(main())
