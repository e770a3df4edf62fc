"""Shared benchmark harness: side-by-side timing, medians, ratios, machine info, output.

Benchmarks here run on shared, noisy machines (few cores, other jobs). So:

* configurations are measured in ONE process, alternating per round in a
  rotating order (A B C, B C A, C A B, ...), never one block after another;
* every round yields a wall-clock time and a process CPU time
  (``time.process_time()``, all threads) per configuration;
* comparisons are ratios taken pair by pair *within* a round and then
  summarised by their median, so slow drifts of the machine cancel;
* absolute times are reported for context only, never asserted.

Scripts use :func:`parse_args` (``--quick``, ``--smoke``, ``--out``), build
their result dict, add :func:`machine_info`, print tables with
:func:`format_table` and save with :func:`write_json`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def quiet_tensorflow() -> None:
    """Hide TF's C++ info logs and GPUs (CPU benchmarks). Call before importing TF."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def backend_env(backend: str, threads: int) -> dict[str, str]:
    """The environment of a child process training on Keras ``backend`` with its kernels on
    ``threads`` threads (JAX reads its thread flags when it starts; see ``limit_threads``)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax" and threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    return env


def limit_threads(threads: int) -> None:
    """Kernels of this process's backend on ``threads`` threads (before Keras is imported; JAX:
    ``backend_env`` set the flags). On a shared 2-core machine PyTorch's and XLA's spinning
    worker threads otherwise burn CPU time while waiting for a core."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def conv_bn_net(blocks: int, width: int) -> Any:
    """The small conv net of the backend benchmarks, seeded, not compiled: ``blocks``
    conv/BN/ReLU blocks of ``width`` channels over 16x16x3 inputs, global average pooling and
    10 logits (Keras on this process's backend)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    h = inputs
    for _ in range(blocks):
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def resnet(
    blocks_per_stage: int = 3, width: int = 16, image: int = 32, classes: int = 10, seed: int = 0
):
    """CIFAR ResNet-(6n+2), projection shortcuts: ResNet-20 (n=3) has 21 BN layers (Keras on
    this process's backend)."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input((image, image, 3))
    h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init)(
        inputs
    )
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            h = keras.layers.Conv2D(
                filters, 3, strides=stride, padding="same", use_bias=False, kernel_initializer=init
            )(h)
            h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
            h = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, kernel_initializer=init
            )(h)
            h = keras.layers.BatchNormalization()(h)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(
                    filters, 1, strides=stride, use_bias=False, kernel_initializer=init
                )(shortcut)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            h = keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
    )(h)
    return keras.Model(inputs, outputs, name="resnet")


# -- command line ------------------------------------------------------------------


def parse_args(
    name: str,
    description: str,
    argv: Optional[Sequence[str]] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> argparse.Namespace:
    """Common options: ``args.mode`` ("full", "quick" or "smoke"), ``args.out`` (the JSON path).

    ``add_arguments`` adds a benchmark's own options to the parser.
    """
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    if add_arguments is not None:
        add_arguments(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quick", action="store_true", help="reduced sizes/rounds, < 3 minutes on 2 cores"
    )
    group.add_argument(
        "--smoke", action="store_true", help="tiny run (< 60 s) that only checks the script works"
    )
    parser.add_argument(
        "--out", default=None, help=f"JSON output path (default: benchmarks/results/{name}.json)"
    )
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.out = args.out or os.path.join(RESULTS_DIR, f"{name}.json")
    args.name = name
    return args


# -- machine description -----------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a missing package is just not reported
        return None
    return getattr(mod, "__version__", None)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, library versions and date of this run."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    info["page_touch_us_after_idle"] = page_touch_after_idle()
    for module in ("tensorflow", "keras", "tensorboard", "numpy"):
        info[f"{module}_version"] = _version(module)
    try:
        import tensorflow as tf

        info["tf_keras_version"] = getattr(tf.keras, "__version__", None) or (
            tf.keras.version() if callable(getattr(tf.keras, "version", None)) else None
        )
        info["tf_intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["tf_inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    except Exception:  # noqa: BLE001
        pass
    return info


def page_touch_after_idle(idle_s: Sequence[float] = (0.0, 0.1, 1.0)) -> dict[str, float]:
    """Microseconds to read one word of each 4 KiB page of a 32 MiB buffer, after idling.

    On an ordinary machine re-reading memory costs about the same after any
    pause (a cache or TLB miss, well under a microsecond per page). Some virtual
    machines charge far more for memory left untouched for a while (on the
    2-core CI VM of 2026-11: 0.02 us/page right away, 1.6 after 0.1 s, 8 after
    1 s). There, code run only once in a while (a log every 50 steps, a route
    asked for after a pause) pays that for every page of code and data it
    touches, while a loop that runs every step stays warm: overhead ratios
    measured on such a machine overstate the callback's cost. Recorded with
    every result so its numbers can be read accordingly.
    """
    import numpy as np

    buffer = np.ones(32 * 1024 * 1024 // 8)
    pages = buffer.size // 512
    buffer[::512].sum()
    out = {}
    for idle in idle_s:
        time.sleep(idle)
        started = time.perf_counter()
        buffer[::512].sum()
        out[str(idle)] = (time.perf_counter() - started) / pages * 1e6
    return out


# -- timing -------------------------------------------------------------------------


class Timer:
    """Wall (``perf_counter``) and process CPU (``process_time``) time of a block."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def time_call(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of one call of ``fn``."""
    with Timer() as t:
        result = fn()
    return t.wall, t.cpu, result


def alternate(
    configs: Mapping[str, Callable[[], Any]],
    rounds: int,
    progress: bool = True,
) -> dict[str, list[dict[str, float]]]:
    """Run every configuration once per round, in rotating order, ``rounds`` times.

    Each callable either returns ``None`` (its whole call is timed) or a dict
    with its own ``wall`` and ``cpu`` seconds (a narrower window it measured
    itself) plus any extra numbers to keep. Returns ``{name: [sample per round]}``
    where a sample has at least ``wall``, ``cpu`` and ``position`` (its place in
    that round's order).
    """
    names = list(configs)
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for pos, name in enumerate(order):
            wall, cpu, result = time_call(configs[name])
            sample = {"wall": wall, "cpu": cpu, "call_wall": wall, "call_cpu": cpu}
            if isinstance(result, Mapping):
                sample.update(result)
            sample["position"] = pos
            samples[name].append(sample)
        if progress:
            line = "  ".join(f"{n}={samples[n][-1]['wall']:.3f}s" for n in names)
            print(f"  round {r + 1}/{rounds}: {line}", flush=True)
    return samples


class InterleavedFits:
    """One long ``fit`` per configuration, each in its own thread, taking turns window by window.

    Whole epochs of two fits on a shared machine differ by ±10% while a callback
    costs 1-2%: the machine's speed drifts over the seconds between them. Here
    every configuration trains in ONE ``fit`` (as a user's run does: traced once,
    no re-tracing inside the measurement) in its own thread, and only the one
    holding the turn runs while the others wait inside a callback hook. The
    main thread hands the turn round in rotating order every ``window`` steps,
    so the configurations' windows over the same steps run seconds apart and a
    drift of the machine cancels in their ratio.

    A window runs from getting the turn to the last callback's hook after its
    steps (callbacks run in list order), so it holds every callback's work of
    those steps: an epoch's last window its ``on_epoch_end`` hooks (a callback's
    epoch-end work). Epoch 0 (tracing, compiling) is one window from the first
    callback's ``on_train_begin`` (a callback's set-up); the last window ends
    after the last callback's ``on_train_end``. A configuration's windows add up
    to its whole ``fit`` after Keras' own set-up. Before a window ends, its
    steps are waited for (the logs converted to numpy): JAX dispatches steps
    asynchronously.

    Use: ``callbacks(name)`` gives the (first, last) callbacks to put around a
    configuration's own, ``start(name, fit)`` runs ``fit()`` in a thread until
    it waits for its first turn, ``run()`` hands the turns round until every
    fit has ended and returns the samples.
    """

    def __init__(self, keras: Any, names: Sequence[str], steps: int, epochs: int, window: int):
        if steps % window:
            raise ValueError(f"steps per epoch ({steps}) must be a multiple of window ({window})")
        self.keras, self.names = keras, list(names)
        self.steps, self.epochs, self.window = steps, epochs, window
        self._go = {n: threading.Event() for n in names}
        self._waiting = {n: threading.Event() for n in names}
        self._ended = {n: False for n in names}
        self._clock: dict[str, tuple[float, float]] = {}
        self._window: dict[str, tuple[int, int]] = {n: (0, 0) for n in names}
        self.samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        self.errors: dict[str, BaseException] = {}

    def callbacks(self, name: str) -> tuple[Any, Any]:
        """The callbacks to put first and last in ``name``'s ``fit``."""
        turns = self

        class First(self.keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                turns._take_turn(name)

        class Last(self.keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                epoch = turns._window[name][0]
                if epoch > 0 and (batch + 1) % turns.window == 0 and batch + 1 < turns.steps:
                    turns._end_window(name, logs, epoch, (batch + 1) // turns.window)

            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 < turns.epochs:
                    turns._end_window(name, logs, epoch + 1, 0)

            def on_train_end(self, logs=None):
                turns._end_window(name, logs, None, None)

        return First(), Last()

    def start(self, name: str, fit: Callable[[], Any]) -> None:
        """Run ``fit()`` in a thread until it waits for its first turn (set-ups never overlap)."""

        def train() -> None:
            try:
                fit()
            except BaseException as err:  # noqa: BLE001 - reported by run()
                self.errors[name] = err
                self._ended[name] = True
                self._waiting[name].set()

        threading.Thread(target=train, name=f"fit-{name}", daemon=True).start()
        self._waiting[name].wait()
        self._raise_errors()

    def run(self, progress: bool = True) -> dict[str, list[dict[str, float]]]:
        """Hand the turn round (epoch 0 one configuration after another, then every window in
        rotating order) until every fit ended; ``{name: [{epoch, window, wall, cpu}, ...]}``."""
        turn = 0
        while not all(self._ended.values()):
            shift = turn % len(self.names)
            for name in self.names[shift:] + self.names[:shift]:
                if self._ended[name]:
                    continue
                self._waiting[name].clear()
                self._go[name].set()
                self._waiting[name].wait()
                self._raise_errors()
            turn += 1
            if progress and turn % 10 == 0:
                line = "  ".join(f"{n}={self.samples[n][-1]['wall']:.2f}s" for n in self.names)
                print(f"  window {turn}: {line}", flush=True)
        return self.samples

    def _take_turn(self, name: str) -> None:
        self._waiting[name].set()
        self._go[name].wait()
        self._go[name].clear()
        self._clock[name] = (time.perf_counter(), time.process_time())

    def _end_window(
        self, name: str, logs: Any, epoch: Optional[int], window: Optional[int]
    ) -> None:
        """Close ``name``'s window (its steps waited for); then wait for the turn to open the
        next one (``epoch``, ``window``), unless the fit ends."""
        if logs:
            self.keras.tree.map_structure(self.keras.ops.convert_to_numpy, dict(logs))
        wall0, cpu0 = self._clock[name]
        done = self._window[name]
        self.samples[name].append(
            {
                "epoch": done[0],
                "window": done[1],
                "wall": time.perf_counter() - wall0,
                "cpu": time.process_time() - cpu0,
            }
        )
        if epoch is None:
            self._ended[name] = True
            self._waiting[name].set()
            return
        self._window[name] = (epoch, window)
        self._take_turn(name)

    def _raise_errors(self) -> None:
        if self.errors:
            raise RuntimeError(f"fit failed: {self.errors}")


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def quartiles(values: Sequence[float]) -> list[float]:
    """[first quartile, third quartile] of ``values`` (NaNs dropped; NaN for fewer than two)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return [math.nan, math.nan]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return [q1, q3]


def pairwise_ratios(
    samples: Mapping[str, Sequence[Mapping[str, float]]], baseline: str, key: str
) -> dict[str, dict[str, float]]:
    """Per configuration: median, min and max of the per-round ``sample[key] / baseline[key]``."""
    base = samples[baseline]
    out = {}
    for name, rows in samples.items():
        ratios = [r[key] / b[key] for r, b in zip(rows, base) if b[key] > 0]
        out[name] = {
            "median": median(ratios),
            "min": min(ratios) if ratios else math.nan,
            "max": max(ratios) if ratios else math.nan,
            "per_round": ratios,
        }
    return out


def summarize(
    samples: Mapping[str, Sequence[Mapping[str, float]]], baseline: str
) -> dict[str, Any]:
    """Median wall/CPU per configuration and pairwise wall/CPU ratios to ``baseline``."""
    wall = pairwise_ratios(samples, baseline, "wall")
    cpu = pairwise_ratios(samples, baseline, "cpu")
    return {
        name: {
            "median_wall_s": median([r["wall"] for r in rows]),
            "median_cpu_s": median([r["cpu"] for r in rows]),
            "wall_ratio": wall[name],
            "cpu_ratio": cpu[name],
            "samples": list(rows),
        }
        for name, rows in samples.items()
    }


def repeat_median(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median (and min) wall and CPU seconds of ``repeats`` calls of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu, _ = time_call(fn)
        walls.append(wall)
        cpus.append(cpu)
    return {
        "median_wall_s": median(walls),
        "min_wall_s": min(walls),
        "median_cpu_s": median(cpus),
        "repeats": repeats,
    }


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = slope * x + intercept`` with R²."""
    n = len(x)
    if n < 2:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n": n}
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx if sxx else math.nan
    intercept = my - slope * mx
    ss_tot = sum((b - my) ** 2 for b in y)
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2, "n": n}


def linear_fit2(x1: Sequence[float], x2: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least squares ``y = a * x1 + b * x2 + c`` (e.g. cost vs channels and layers) with R²."""
    import numpy as np

    A = np.column_stack([np.asarray(x1, float), np.asarray(x2, float), np.ones(len(y))])
    yv = np.asarray(y, float)
    if len(y) < 3:
        return {"a": math.nan, "b": math.nan, "c": math.nan, "r2": math.nan, "n": len(y)}
    coef, *_ = np.linalg.lstsq(A, yv, rcond=None)
    pred = A @ coef
    ss_tot = float(((yv - yv.mean()) ** 2).sum())
    r2 = 1 - float(((yv - pred) ** 2).sum()) / ss_tot if ss_tot else 1.0
    return {"a": float(coef[0]), "b": float(coef[1]), "c": float(coef[2]), "r2": r2, "n": len(y)}


# -- output -------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table; floats get 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def write_json(args: argparse.Namespace, result: dict[str, Any], started: float) -> str:
    """Write ``result`` with the run's name, mode, machine and duration to ``args.out``."""
    payload = {
        "benchmark": args.name,
        "mode": args.mode,
        "machine": machine_info(),
        "duration_s": time.perf_counter() - started,
        **result,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(payload), f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out} ({payload['duration_s']:.1f} s)")
    return args.out
