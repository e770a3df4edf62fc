"""One backend's BatchNormCallback checks, run by ``test_backends.py`` in a subprocess.

``python _backend_worker.py LOGDIR DEMO_LOGDIR`` with ``KERAS_BACKEND`` set (``jax`` or
``torch``) and, with ``TB_BN_BLOCK_TENSORFLOW=1``, TensorFlow made unimportable
before anything else is imported. Trains small models on synthetic data,
asserts in this process (a failure exits non-zero with the traceback) and
leaves runs in LOGDIR for the parent to read: ``healthy`` (with a
``PreciseStatsMonitor``), ``stale`` (a train step that drops the moving-statistic
updates, seed 001's pitfall), ``cadence``, and ``logger``/``logger-counter``
(``BatchNormLogger`` in a hand-written loop; on JAX also ``logger-jit`` and
``logger-jit-stale``, the step compiled by ``BatchNormLogger.jit``, the second dropping the
moving-statistic updates); and a few demo scenarios at test
size in DEMO_LOGDIR (``demo/train.py --backend``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

if os.environ.get("TB_BN_BLOCK_TENSORFLOW") == "1":
    # As if TensorFlow were not installed: ``import tensorflow`` raises ModuleNotFoundError and
    # importlib.util.find_spec("tensorflow") is None (torch._dynamo probes it that way).
    sys.modules["tensorflow"] = None

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tb_bn_plugin import (  # noqa: E402
    BatchNormCallback,
    BatchNormLogger,
    PreciseStatsMonitor,
    precise_stats,
    read_gap,
    read_stats,
    recalibrate,
)
from tb_bn_plugin.numerics.ema import measure_ema_error  # noqa: E402

BACKEND = keras.backend.backend()
MOMENTUM = 0.9
BATCH = 16
STEPS = 4  # per epoch
EPOCHS = 3


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 3.0, (BATCH * STEPS, 5)).astype("float32")
    y = (x[:, :1] * 0.3 - x[:, 1:2]).astype("float32")
    return x, y


def stale_model_class() -> type:
    """A model whose train step keeps the moving statistics as they were (TF1's UPDATE_OPS never
    run), on this backend's train-step signature."""
    if BACKEND == "jax":

        class Stale(keras.Model):
            def train_step(self, state, data):
                logs, new_state = super().train_step(state, data)
                return logs, (new_state[0], state[1], new_state[2], new_state[3])

        return Stale

    class Stale(keras.Model):
        def train_step(self, data):
            saved = [v.value.clone() for v in self.non_trainable_variables]
            logs = super().train_step(data)
            for v, value in zip(self.non_trainable_variables, saved):
                v.assign(value)
            return logs

    return Stale


def build(model_class: type = keras.Model) -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    h = keras.layers.BatchNormalization(momentum=MOMENTUM, name="bn0")(inputs)
    h = keras.layers.Dense(4, activation="relu")(h)
    h = keras.layers.BatchNormalization(momentum=MOMENTUM, name="bn1")(h)
    model = model_class(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def fit(model: keras.Model, callbacks: list) -> None:
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v.value) for v in model.weights]


PROBE = 32  # probe_data samples


def callback(logdir: str, run: str, every: int, gap: bool = False) -> BatchNormCallback:
    """With ``gap``: the gap with attribution on ``probe_data``; without: the default gap (on
    the first training batch)."""
    if not gap:
        return BatchNormCallback(logdir, log_every_n_steps=every, run_name=run)
    x, y = data()
    return BatchNormCallback(
        logdir,
        log_every_n_steps=every,
        run_name=run,
        gap_attribution=True,
        probe_data=(x[:PROBE], y[:PROBE]),
    )


def forward(
    model: keras.Model, x: np.ndarray, training: bool, bn_inputs: dict | None = None
) -> np.ndarray:
    """The model's output computed in numpy (float64), BN layers with batch or moving statistics;
    ``bn_inputs`` (if given) gets each BN layer's input."""
    w = {v.path: w.astype(np.float64) for v, w in zip(model.weights, weights(model))}
    layers = [layer for layer in model.layers if layer.weights]
    h = x.astype(np.float64)
    for layer in layers:
        p = layer.name
        if isinstance(layer, keras.layers.BatchNormalization):
            if bn_inputs is not None:
                bn_inputs[p] = h
            mean, var = (
                (h.mean(0), h.var(0))
                if training
                else (
                    w[f"{p}/moving_mean"],
                    w[f"{p}/moving_variance"],
                )
            )
            h = (h - mean) / np.sqrt(var + layer.epsilon) * w[f"{p}/gamma"] + w[f"{p}/beta"]
        else:
            h = h @ w[f"{p}/kernel"] + w[f"{p}/bias"]
            h = np.maximum(h, 0) if layer.activation is keras.activations.relu else h
    return h


def check_gap(logdir: str, run: str, model: keras.Model, probe: int) -> None:
    """The gap at the last epoch end (the final state) against the model computed in numpy on
    the first ``probe`` samples (``probe_data``, or the stashed first training batch)."""
    x, y = data()
    gap = read_gap(logdir)[run]
    # After the fit's first step (the loss scale of train-inference-gap), then at epoch ends.
    assert list(gap.steps) == [1] + [STEPS * (e + 1) for e in range(EPOCHS)], gap.steps
    mse = {
        mode: np.mean((forward(model, x[:probe], mode == "train") - y[:probe]) ** 2)
        for mode in ("train", "inference")
    }
    np.testing.assert_allclose(gap.train_loss[-1], mse["train"], rtol=1e-4)
    np.testing.assert_allclose(gap.inference_loss[-1], mse["inference"], rtol=1e-4)
    for name in ("bn0", "bn1"):  # measured and derived from the statistics agree
        np.testing.assert_allclose(gap.local[name], gap.local_derived[name], rtol=1e-3)
        assert np.isfinite(gap.compound[name]).all()


def check_logged_steps(logdir: str, run: str, model: keras.Model) -> None:
    """Every step of ``run`` is logged: the first layer's batch statistics are those of the
    step's batch (full batches, no shuffling), the moving statistics follow the EMA of the logged
    batch statistics step by step, and the last logged ones are ``model``'s final ones."""
    x, _ = data()
    stats = read_stats(logdir)[run]
    steps = stats["bn0"]["batch_mean"][0]
    assert list(steps) == list(range(1, STEPS * EPOCHS + 1)), steps
    for name, layer in stats.items():
        channels = layer["moving_mean"][1].shape[1]
        moving = (np.zeros(channels), np.ones(channels))
        for i, step in enumerate(steps):
            batch_mean, batch_var = layer["batch_mean"][1][i], layer["batch_variance"][1][i]
            if name == "bn0":  # fed straight from the input: the batch is known
                xb = x[(step - 1) % STEPS * BATCH :][:BATCH].astype(np.float64)
                np.testing.assert_allclose(batch_mean, xb.mean(0), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(batch_var, xb.var(0), rtol=1e-5, atol=1e-6)
            moving = (
                moving[0] * MOMENTUM + batch_mean * (1 - MOMENTUM),
                moving[1] * MOMENTUM + batch_var * (1 - MOMENTUM),
            )
            np.testing.assert_allclose(layer["moving_mean"][1][i], moving[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                layer["moving_variance"][1][i], moving[1], rtol=1e-5, atol=1e-6
            )
        final = keras.ops.convert_to_numpy(model.get_layer(name).moving_mean)
        assert np.array_equal(layer["moving_mean"][1][-1], final)


def check_exact_and_unperturbed(logdir: str) -> keras.Model:
    """The callback and a ``PreciseStatsMonitor`` on one fit; returns the trained model."""
    bare = build()
    fit(bare, [])
    logged = build()
    monitor = PreciseStatsMonitor(logdir, data()[0], run_name="healthy", batch_size=24)
    fit(logged, [callback(logdir, "healthy", 1, gap=True), monitor])
    for a, b, v in zip(weights(bare), weights(logged), logged.weights):
        assert np.array_equal(a, b), f"{v.path} differs with the callback"

    x, _ = data()
    check_logged_steps(logdir, "healthy", logged)
    check_gap(logdir, "healthy", logged, PROBE)
    assert np.isfinite(read_gap(logdir)["healthy"].attribution["bn0"][1:]).all()  # epoch ends
    # The monitor measured at each epoch end, the last time on the final state.
    assert [step for step, _ in monitor.history] == [STEPS * (e + 1) for e in range(EPOCHS)]
    inputs: dict = {}
    forward(logged, x, False, inputs)
    for name, error in monitor.history[-1][1].items():
        layer = logged.get_layer(name)
        expected = measure_ema_error(
            *(keras.ops.convert_to_numpy(v).astype(np.float64) for v in moving_variables(layer)),
            inputs[name].mean(0),
            inputs[name].var(0),
            layer.epsilon,
        )
        np.testing.assert_allclose(error.as_array(), expected.as_array(), rtol=1e-4, atol=1e-6)
    return logged


def moving_variables(layer: keras.layers.Layer) -> tuple:
    return layer.moving_mean, layer.moving_variance


def check_precise_and_recalibrate(model: keras.Model) -> None:
    """Precise statistics are the numpy statistics of each BN layer's inference-mode input over
    all batches (uneven ones: 24 + 24 + 16) and change nothing; recalibration writes them, the
    second layer's measured after the first's is recalibrated, and changes nothing else."""
    x, _ = data()
    before = weights(model)
    precise = precise_stats(model, x, progress=False, batch_size=24)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))
    inputs: dict = {}
    forward(model, x, False, inputs)
    for name in ("bn0", "bn1"):
        assert precise[name]["count"] == len(x)
        rtol = 1e-12 if name == "bn0" else 1e-5  # bn0: the input itself; bn1: after float32 math
        np.testing.assert_allclose(precise[name]["mean"], inputs[name].mean(0), rtol, atol=1e-7)
        np.testing.assert_allclose(precise[name]["variance"], inputs[name].var(0), rtol)

    report = recalibrate(model, x, progress=False, batch_size=24)
    assert report.passes == 3 and [layer.path for layer in report.layers] == ["bn0", "bn1"]
    inputs = {}
    forward(model, x, False, inputs)
    for name in ("bn0", "bn1"):
        mean, variance = (
            keras.ops.convert_to_numpy(v) for v in moving_variables(model.get_layer(name))
        )
        np.testing.assert_allclose(mean, inputs[name].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance, inputs[name].var(0), rtol=1e-5)
    for v, a, b in zip(model.weights, before, weights(model)):
        if "moving" not in v.path:
            assert np.array_equal(a, b), f"recalibrate changed {v.path}"


def check_stale(logdir: str) -> None:
    model = build(stale_model_class())
    fit(model, [callback(logdir, "stale", 2)])
    x, _ = data()
    bn0 = read_stats(logdir)["stale"]["bn0"]
    step = bn0["batch_mean"][0][-1]
    xb = x[(step - 1) % STEPS * BATCH :][:BATCH]
    np.testing.assert_allclose(bn0["batch_mean"][1][-1], xb.mean(0), rtol=1e-5, atol=1e-6)
    assert np.all(bn0["moving_mean"][1] == 0) and np.all(bn0["moving_variance"][1] == 1)
    check_gap(logdir, "stale", model, BATCH)


def custom_loop(
    model: keras.Model,
    optimizer,
    logger: BatchNormLogger | None,
    logger_jits: bool = False,
    drop_updates: bool = False,
) -> list[int]:
    """EPOCHS epochs of full-batch-sized steps written by hand, as Keras' guides write them on
    this backend (JAX: stateless, the state written back at the end); ``logger.log`` after each
    step. ``logger_jits`` (JAX): the step compiled by ``logger.jit``, the last two steps logged
    off the cadence (``force_snapshot``), the last one after ``capture_next_step``;
    ``drop_updates`` (JAX): the step returns the moving statistics it got (seed 001's pitfall).
    Returns the steps whose ``log()`` wrote."""
    x, y = data()
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    wrote = []
    if BACKEND == "jax":
        import jax

        def loss_and_updates(trainable, non_trainable, xb, yb):
            y_pred, non_trainable = model.stateless_call(
                trainable, non_trainable, xb, training=True
            )
            return keras.ops.mean((y_pred - yb) ** 2), non_trainable

        grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

        def step_function(state, xb, yb):
            TRACES.append(logger_jits)
            trainable, given, optimizer_values = state
            (_, non_trainable), grads = grad_fn(trainable, given, xb, yb)
            trainable, optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads, trainable
            )
            return trainable, given if drop_updates else non_trainable, optimizer_values

        # The state donated, as Keras' own fit does (a logger must not read donated arrays).
        compile_step = logger.jit if logger_jits else jax.jit
        train_step = compile_step(step_function, donate_argnums=0)
        owners = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        state = tuple([v.value for v in variables] for variables in owners)
        for step in range(1, STEPS * EPOCHS + 1):
            xb, yb = batches[(step - 1) % STEPS]
            if logger_jits and step == STEPS * EPOCHS:
                logger.capture_next_step()
            state = train_step(state, xb, yb)
            if logger is not None:
                off_cadence = logger_jits and step >= STEPS * EPOCHS - 1
                if logger.log(state=state, force_snapshot=off_cadence):
                    wrote.append(step)
        for variables, values in zip(owners, state):
            for variable, value in zip(variables, values):
                variable.assign(value)
        return wrote
    import torch

    for step in range(1, STEPS * EPOCHS + 1):
        xb, yb = batches[(step - 1) % STEPS]
        loss = ((model(xb, training=True) - torch.as_tensor(yb)) ** 2).mean()
        model.zero_grad()
        loss.backward()
        optimizer.apply([v.value.grad for v in model.trainable_variables])
        if logger is not None and logger.log():
            wrote.append(step)
    return wrote


# Traces of the JAX custom loop's step function (each: whether ``logger.jit`` compiled it).
TRACES: list[bool] = []


@contextlib.contextmanager
def host_calls():
    """The steps (done before the step) of every statistics delivery to a recording
    ``HostStatsCapture`` inside the block, one per layer call."""
    from tb_bn_plugin.training import host_capture

    seen: list[int] = []
    make_recorder = host_capture.HostStatsCapture._recorder

    def counting_recorder(self, slot):
        record = make_recorder(self, slot)

        def counted(mean, variance, count, masked, step, call):
            if self._enabled:  # not paused for the gap probe's passes
                seen.append(self._clock() if step is None else step)
            record(mean, variance, count, masked, step, call)

        return counted

    host_capture.HostStatsCapture._recorder = counting_recorder
    try:
        yield seen
    finally:
        host_capture.HostStatsCapture._recorder = make_recorder


def check_logger(logdir: str) -> None:
    """``BatchNormLogger`` in a hand-written loop: exact batch statistics, the EMA step by step,
    the same training with and without it; without an optimizer, its own clock and cadence; on
    JAX, ``logger.jit``: the statistics reach the host in the logged steps only."""

    def loop(
        run: str | None,
        optimizer_clock: bool = True,
        every: int = 1,
        logger_jits: bool = False,
        drop_updates: bool = False,
    ) -> keras.Model:
        model = build()
        optimizer = keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)
        logger = None
        if run is not None:
            clock = optimizer if optimizer_clock else None
            logger = BatchNormLogger(
                model, logdir, log_every_n_steps=every, run_name=run, optimizer=clock
            )
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            wrote = custom_loop(model, optimizer, logger, logger_jits, drop_updates)
        assert [str(w.message) for w in warned if "BatchNormLogger" in str(w.message)] == (
            [WARNED_OFF_CADENCE] if logger_jits else []
        )
        if logger is not None:
            logger.close()
            assert wrote == list(read_stats(logdir)[run]["bn0"]["batch_mean"][0])
        return model

    bare = loop(None)
    logged = loop("logger")
    for a, b, v in zip(weights(bare), weights(logged), logged.weights):
        assert np.array_equal(a, b), f"{v.path} differs with the logger"
    check_logged_steps(logdir, "logger", logged)
    x, _ = data()

    loop("logger-counter", optimizer_clock=False, every=5)
    check_logged_batch_means(logdir, "logger-counter", [5, 10])
    if BACKEND != "jax":
        return
    del TRACES[:]
    with host_calls() as seen:
        jitted = loop("logger-jit", every=5, logger_jits=True)
    for a, b, v in zip(weights(bare), weights(jitted), jitted.weights):
        assert np.array_equal(a, b), f"{v.path} differs with logger.jit"
    # Steps 5 and 10 at the cadence, 12 after capture_next_step; 11 (forced, not captured) is
    # skipped with the warning. Compiled twice (plain, instrumented), each traced once.
    check_logged_batch_means(logdir, "logger-jit", [5, 10, 12])
    assert seen == [4, 4, 9, 9, 11, 11], seen
    assert TRACES == [True, True], TRACES
    stats = read_stats(logdir)
    for name in ("bn0", "bn1"):  # the same states as the logger that logged every step
        every_step = stats["logger"][name]
        for stat in ("batch_mean", "batch_variance", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(
                stats["logger-jit"][name][stat][1], every_step[stat][1][[4, 9, 11]]
            )
    # A step jax.jit already compiled would be traced once for both: refused, saying why.
    import tempfile

    import jax

    with BatchNormLogger(build(), tempfile.mkdtemp()) as refusing:
        try:
            refusing.jit(jax.jit(lambda state: state))
        except TypeError as error:
            assert "not a jax.jit-compiled one" in str(error), error
        else:
            raise AssertionError("BatchNormLogger.jit accepted a jax.jit-compiled function")
    # Seed 001's signature in a custom loop: the moving statistics never move.
    loop("logger-jit-stale", every=5, logger_jits=True, drop_updates=True)
    stale = read_stats(logdir)["logger-jit-stale"]["bn0"]
    assert np.all(stale["moving_mean"][1] == 0) and np.all(stale["moving_variance"][1] == 1)


WARNED_OFF_CADENCE = (
    "BatchNormLogger: not logging step 11: its training step ran without the capture "
    "(BatchNormLogger.jit captures only at multiples of log_every_n_steps=5 of its own step "
    "count), so its batch statistics never reached the host. Log at the cadence with one log() "
    "per step, call capture_next_step() before a step logged off the cadence, or compile the "
    "step with jax.jit (every step then sends its statistics)."
)


def check_only_logged_steps_reach_the_host(logdir: str) -> None:
    """On JAX the compiled step calls the host only in steps whose state is logged (every 3rd and
    each epoch's last); PyTorch's eager step hands over a reference in every step."""
    with host_calls() as seen:
        fit(build(), [BatchNormCallback(logdir, log_every_n_steps=3, run_name="cadence")])
    steps_before = sorted(set(seen))
    if BACKEND == "jax":
        logged = {s for s in range(1, STEPS * EPOCHS + 1) if s % 3 == 0 or s % STEPS == 0}
        assert steps_before == sorted(s - 1 for s in logged), steps_before
        assert len(seen) == 2 * len(logged)  # two layers
    else:
        assert steps_before == list(range(STEPS * EPOCHS)), steps_before


def check_logged_batch_means(logdir: str, run: str, expected_steps: list[int]) -> None:
    """``run`` logged ``expected_steps``, bn0's batch mean each that of the step's batch."""
    x, _ = data()
    steps, means = read_stats(logdir)[run]["bn0"]["batch_mean"]
    assert list(steps) == expected_steps, steps
    for step, mean in zip(steps, means):
        xb = x[(step - 1) % STEPS * BATCH :][:BATCH].astype(np.float64)
        np.testing.assert_allclose(mean, xb.mean(0), rtol=1e-5, atol=1e-6)


def check_jax_steps_compiled_once(logdir: str) -> None:
    """On JAX, steps whose state is not logged run Keras' own train function and the logged ones
    an instrumented copy: each traced once per model, so a second fit with the callback and a
    fit without it trace nothing. With ``steps_per_execution`` > 1 (the host cannot choose per
    step) the fallback logs the same statistics."""
    if BACKEND != "jax":
        return
    import tempfile

    class Counted(keras.Model):
        traces = 0

        def train_step(self, state, data):
            type(self).traces += 1  # under jax.jit: once per trace
            return super().train_step(state, data)

    model = build(Counted)
    every_third = {s for s in range(1, STEPS * EPOCHS + 1) if s % 3 == 0 or s % STEPS == 0}
    with tempfile.TemporaryDirectory() as scratch:
        for run in ("first", "second"):
            keras_function = model.train_function
            fit(model, [BatchNormCallback(scratch, log_every_n_steps=3, run_name=run)])
            if run == "second":  # Keras' own function was given back after the first fit
                assert model.train_function is keras_function
            done = int(model.optimizer.iterations.value)
            logged = sorted(s + done - STEPS * EPOCHS for s in every_third)
            check_logged_batch_means(scratch, run, logged)
        assert Counted.traces == 2, Counted.traces  # Keras' step and the instrumented one
        fit(model, [])
        assert Counted.traces == 2, Counted.traces

        grouped = build()
        grouped.compile(keras.optimizers.SGD(0.05), "mse", steps_per_execution=2)
        fit(grouped, [BatchNormCallback(scratch, log_every_n_steps=2, run_name="grouped")])
        check_logged_batch_means(scratch, "grouped", list(range(2, STEPS * EPOCHS + 1, 2)))


def check_jax_gap_compiled_once_on_current_values() -> None:
    """On JAX the gap probe's passes are compiled: traced once per model (a later fit with a new
    callback traces nothing), reading the variables' current values (weights, moving statistics
    and the dropout seed are arguments, not constants of the trace): with ``gap_scope="model"``
    and dropout, the same gap as the passes run op by op (``jax.disable_jit``), before and after
    more training, and the same twice in a row (the seed does not advance)."""
    if BACKEND != "jax":
        return
    import tempfile

    import jax

    from tb_bn_plugin.training.capture import find_batchnorm_layers
    from tb_bn_plugin.training.host_gap import HostGapProbe

    def build_dropout() -> keras.Model:
        keras.utils.set_random_seed(5)
        inputs = keras.Input((5,))
        h = keras.layers.BatchNormalization(momentum=MOMENTUM, name="bn0")(inputs)
        h = keras.layers.Dropout(0.5)(keras.layers.Dense(8, activation="relu")(h))
        h = keras.layers.BatchNormalization(momentum=MOMENTUM, name="bn1")(h)
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        model.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae"])
        return model

    traces = []
    main_pass = HostGapProbe._main_pass

    def counted(self, *args):
        traces.append(1)  # under jax.jit: once per trace
        return main_pass(self, *args)

    model = build_dropout()
    HostGapProbe._main_pass = counted
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for run in ("first", "second"):
                fit(model, [BatchNormCallback(scratch, run_name=run, gap_scope="model")])
            gap = read_gap(scratch)
            assert len(gap["second"].steps) == EPOCHS, gap["second"].steps  # measured, not traced
    finally:
        HostGapProbe._main_pass = main_pass
    assert len(traces) == 1, traces

    def gap_record(probe: HostGapProbe) -> np.ndarray:
        return probe.evaluate(attribution=True).record()

    x, y = data()
    refs = find_batchnorm_layers(model)
    probe = HostGapProbe(model, refs, refs, (x[:PROBE], y[:PROBE], None), "model")
    compiled = []
    for _ in range(2):
        compiled.append(gap_record(probe))
        np.testing.assert_array_equal(gap_record(probe), compiled[-1])
        assert np.isfinite(compiled[-1]).all()
        with jax.disable_jit():
            np.testing.assert_allclose(gap_record(probe), compiled[-1], rtol=1e-5, atol=1e-7)
        fit(model, [])  # the weights, moving statistics and dropout seed move on
    assert not np.allclose(compiled[0], compiled[1])


def check_shared_layer_calls(logdir: str) -> None:
    """One BN layer called on two towers' inputs per step: every call's statistics, vs numpy."""
    import tempfile

    d = 3
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [rng.normal(0.5, 1.0, (BATCH, d)), rng.normal(-2.0, 3.0, (BATCH, d))], axis=1
    ).astype("float32")
    inp = keras.Input((2 * d,))
    shared = keras.layers.BatchNormalization(name="shared_bn", momentum=MOMENTUM)
    h = keras.layers.Concatenate()([shared(inp[:, :d]), shared(inp[:, d:])])
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(optimizer="sgd", loss="mse")
    with tempfile.TemporaryDirectory() as shared_logdir:
        model.fit(
            x,
            rng.normal(size=(BATCH, 1)).astype("float32"),
            batch_size=BATCH,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[BatchNormCallback(shared_logdir, log_every_n_steps=1)],
        )
        layer = read_stats(shared_logdir)["train"]["shared_bn"]
    steps, mean = layer["call_batch_mean"]
    assert list(steps) == [1, 2, 3], steps
    a, b = x[:, :d].astype(np.float64), x[:, d:].astype(np.float64)
    np.testing.assert_allclose(mean[:, 0], np.tile(a.mean(0), (3, 1)), rtol=1e-5)
    np.testing.assert_allclose(mean[:, 1], np.tile(b.mean(0), (3, 1)), rtol=1e-5)
    variance = layer["call_batch_variance"][1]
    np.testing.assert_allclose(variance[:, 1], np.tile(b.var(0), (3, 1)), rtol=1e-4)


# The healthy run and one whose custom train step differs per backend (PreciseStatsMonitor in
# fit is checked above, against numpy).
DEMO_SCENARIOS = ("healthy", "stale-moving-stats")


def run_demo(logdir: str) -> None:
    """``demo/train.py --backend BACKEND --size test`` on ``DEMO_SCENARIOS``."""
    import contextlib
    import importlib.util
    import io

    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "demo", "train.py")
    spec = importlib.util.spec_from_file_location("tb_bn_demo_train", path)
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses look their module up there
    spec.loader.exec_module(demo)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        argv = ["--backend", BACKEND, "--size", "test", "--quiet", "--logdir", logdir]
        assert demo.main(argv + ["--scenarios", *DEMO_SCENARIOS]) == 0
    assert f"Keras backend: {BACKEND}" in printed.getvalue(), printed.getvalue()


if __name__ == "__main__":
    logdir, demo_logdir = sys.argv[1:3]
    check_shared_layer_calls(logdir)
    check_only_logged_steps_reach_the_host(logdir)
    check_jax_steps_compiled_once(logdir)
    check_jax_gap_compiled_once_on_current_values()
    check_precise_and_recalibrate(check_exact_and_unperturbed(logdir))
    check_stale(logdir)
    check_logger(logdir)
    run_demo(demo_logdir)
    if os.environ.get("TB_BN_BLOCK_TENSORFLOW") == "1":
        assert sys.modules["tensorflow"] is None
    print(f"{BACKEND}: ok")
