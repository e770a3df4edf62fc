"""Diagnostic accuracy on a corpus of realistic training runs: a scenario x code confusion table.

Each scenario trains a model the way real work does (not the demo's toy
scenarios) on a small learnable synthetic task made here, with
``BatchNormCallback`` at its defaults apart from the logging cadence, reads
the run back through TensorBoard's data path and diagnoses it. Every scenario
names the warning and error codes it must fire (``expected``); the corpus
passes when every expected code fires and no warning or error fires that is
not expected. Info findings (``frozen-bn``, ``no-update-ops``) are free.

    python benchmarks/accuracy.py [--only NAME ...] [--out-dir benchmarks/results]

writes ``accuracy.json`` and ``accuracy.md`` (the table the README quotes).
``tests/test_accuracy_corpus.py`` runs ``FAST`` in the test suite. The full
corpus takes about 10-20 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CLASSES = 4
LOG_EVERY = 10


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One realistic run: what it trains (``train(run_dir)``) and the codes it must fire."""

    name: str
    description: str
    expected: frozenset[str]
    train: Callable[[str], None]
    kind: str = "stats"  # "stats": a logged run; "graph": ``train`` writes a GraphDef file


# -- data ----------------------------------------------------------------------------


def images(
    n: int, size: int = 16, seed: int = 0, noise: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB images of ``CLASSES`` classes: oriented stripes, random phase, colour and noise.

    Class k has stripes at angle k * 45 degrees; contrast, phase, a colour cast
    and pixel noise vary per image, so a conv net must learn the orientation.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = labels[:, None, None] * np.pi / CLASSES
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = np.sin(2 * np.pi * 3 * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    contrast = rng.uniform(0.5, 1.5, (n, 1, 1, 1))
    cast = rng.normal(0.0, 0.3, (n, 1, 1, 3))
    x = contrast * stripes[..., None] + cast + rng.normal(0.0, noise, (n, size, size, 3))
    return x.astype(np.float32), labels.astype(np.int64)


def features(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tabular data: class-dependent means on raw scales (offsets 5..50, scales 0.5..20)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    centres = rng.normal(0.0, 1.5, (CLASSES, dim))
    x = centres[labels] + rng.normal(0.0, 1.0, (n, dim))
    scale, offset = np.geomspace(0.5, 20.0, dim), np.linspace(5.0, 50.0, dim)
    return (x * scale + offset).astype(np.float32), labels.astype(np.int64)


# -- models ----------------------------------------------------------------------------


def keras():
    import keras as keras_module

    return keras_module


def small_resnet(momentum: float = 0.99, size: int = 16, width: int = 16):
    """A ResNet-8: conv stem, three residual blocks (two strided), global pooling, softmax."""
    k = keras()
    layers = k.layers

    def bn(name):
        return layers.BatchNormalization(momentum=momentum, name=name)

    inputs = k.Input((size, size, 3))
    x = layers.Activation("relu")(bn("stem_bn")(layers.Conv2D(width, 3, padding="same")(inputs)))
    for block, (filters, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)]):
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.Activation("relu")(bn(f"block{block}_bn1")(y))
        y = bn(f"block{block}_bn2")(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
            shortcut = bn(f"block{block}_proj_bn")(shortcut)
        x = layers.Activation("relu")(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, layers.Dense(CLASSES, activation="softmax")(x), name="resnet8")


def conv_net(momentum: float = 0.99, size: int = 16, preprocessing=(), dropout: float = 0.0):
    k = keras()
    layers = k.layers
    model = k.Sequential([k.Input((size, size, 3)), *preprocessing], name="convnet")
    for i, filters in enumerate((16, 32)):
        model.add(layers.Conv2D(filters, 3, padding="same", use_bias=False))
        model.add(layers.BatchNormalization(momentum=momentum, name=f"conv{i}_bn"))
        model.add(layers.Activation("relu"))
        model.add(layers.MaxPooling2D())
    model.add(layers.GlobalAveragePooling2D())
    if dropout:
        model.add(layers.Dropout(dropout))
    model.add(layers.Dense(CLASSES, activation="softmax"))
    return model


def dense_net(momentum: float = 0.99, dim: int = 16):
    k = keras()
    layers = k.layers
    return k.Sequential(
        [
            k.Input((dim,)),
            layers.BatchNormalization(momentum=momentum, name="input_bn"),
            layers.Dense(32, use_bias=False),
            layers.BatchNormalization(momentum=momentum, name="hidden_bn"),
            layers.Activation("relu"),
            layers.Dense(CLASSES, activation="softmax"),
        ],
        name="densenet",
    )


def compile_model(model, learning_rate: float = 3e-3, **optimizer_options):
    k = keras()
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate, **optimizer_options),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def callback(run_dir: str, **options):
    from tb_bn_plugin import BatchNormCallback

    return BatchNormCallback(
        log_dir=os.path.dirname(run_dir),
        run_name=os.path.basename(run_dir),
        log_every_n_steps=LOG_EVERY,
        **options,
    )


def fit(model, run_dir, x, y, batch, steps, shuffle=True, **callback_options):
    """``model.fit`` for about ``steps`` steps (whole epochs of ``len(x) // batch`` steps)."""
    keras().utils.set_random_seed(0)
    per_epoch = len(x) // batch
    model.fit(
        x[: per_epoch * batch],
        y[: per_epoch * batch],
        batch_size=batch,
        epochs=max(1, round(steps / per_epoch)),
        shuffle=shuffle,
        verbose=0,
        callbacks=[callback(run_dir, **callback_options)],
    )
    return model


# -- scenarios ---------------------------------------------------------------------------


def healthy_resnet(momentum: float):
    def train(run_dir):
        x, y = images(1280)
        keras().utils.set_random_seed(0)
        fit(compile_model(small_resnet(momentum)), run_dir, x, y, batch=32, steps=400)

    return train


def healthy_convnet_augmented(run_dir):
    layers = keras().layers
    x, y = images(1280)
    keras().utils.set_random_seed(0)
    preprocessing = (layers.RandomFlip("horizontal"), layers.RandomTranslation(0.1, 0.1))
    model = compile_model(conv_net(0.99, preprocessing=preprocessing, dropout=0.3))
    fit(model, run_dir, x, y, batch=32, steps=400)


def application(name: str, steps: int, batch: int = 16, **options):
    """A ``keras.applications`` model from scratch on 32x32 images, batch 16.

    Real gaps, not false alarms: at 32x32 the last stage's feature maps are
    1x1, so its BN layers normalise over 16 values per channel while the
    weights still change fast; ResNet50's probe loss is 0.029 in training mode
    and 0.52 in inference mode (accuracy 12.5 points lower). MobileNetV2 uses
    BN momentum 0.999 (slow-momentum: after 320 steps the moving statistics
    still weigh their initial value by 0.999^320 = 73%, and the probe's
    inference-mode accuracy is 90% below its training-mode accuracy).
    EfficientNetB0: probe loss 0.11 in training mode, 2.18 in inference mode.

    dead-channels is real in both (checked on the trained models over all 640
    training images, not one batch): MobileNetV2's block_14/15/16_depthwise_BN
    have 25, 49 and 32 of 336 channels whose input variance is 0 to 6e-23 (dead
    ReLU6 expansion units feeding 1x1 maps); EfficientNetB0's block6b-7a BN
    layers have 6-8 of 1152 channels at 1e-16 to 7e-12, and its stem_bn 17 of
    32 channels at 4e-7 to 1e-6, 1000 times below epsilon (its built-in
    Rescaling(1/255) expects 0..255 pixels and gets images in about [-3, 3]).
    """

    def train(run_dir):
        k = keras()
        x, y = images(batch * 40, size=32)
        k.utils.set_random_seed(0)
        build = getattr(k.applications, name)
        model = build(weights=None, input_shape=(32, 32, 3), classes=CLASSES, **options)
        fit(compile_model(model, 1e-3), run_dir, x, y, batch=batch, steps=steps)

    return train


def fine_tune_frozen_base(run_dir):
    """Pretrain a ResNet-8, freeze it (BN layers in inference mode), train a new head."""
    k = keras()
    x, y = images(1280)
    k.utils.set_random_seed(0)
    base = small_resnet(0.99)
    compile_model(base).fit(x, y, batch_size=32, epochs=10, verbose=0)
    features_model = k.Model(base.input, base.layers[-2].output)
    features_model.trainable = False
    head = k.layers.Dense(CLASSES, activation="softmax")
    inputs = k.Input((16, 16, 3))
    model = k.Model(inputs, head(features_model(inputs, training=False)))
    x2, y2 = images(640, seed=1)
    fit(compile_model(model), run_dir, x2, y2, batch=32, steps=100)


def class_sorted(run_dir):
    """No shuffling of class-sorted data: every batch holds one class."""
    x, y = images(1280)
    order = np.argsort(y, kind="stable")
    keras().utils.set_random_seed(0)
    fit(
        compile_model(conv_net(0.9)),
        run_dir,
        x[order],
        y[order],
        batch=32,
        steps=200,
        shuffle=False,
    )


def domain_shift(run_dir):
    """Each batch comes from its own domain: a per-batch gain and offset on the pixels."""
    x, y = images(1280)
    rng = np.random.default_rng(3)
    batches = len(x) // 32
    gain = np.repeat(rng.uniform(0.3, 3.0, batches), 32)[:, None, None, None]
    offset = np.repeat(rng.normal(0.0, 2.0, batches), 32)[:, None, None, None]
    x = (x[: batches * 32] * gain + offset).astype(np.float32)
    keras().utils.set_random_seed(0)
    fit(
        compile_model(conv_net(0.9)),
        run_dir,
        x,
        y[: batches * 32],
        batch=32,
        steps=200,
        shuffle=False,
    )


def conv_batch_two(run_dir):
    """Batch 2: 512 values per channel (no tiny-batch), but from 2 correlated images.

    Training mode normalises with statistics of 2 images: the probe (the first
    training batch) scores far worse with them than with the moving statistics,
    a real gap between the modes.
    """
    x, y = images(400)
    keras().utils.set_random_seed(0)
    fit(compile_model(conv_net(0.99), 1e-3), run_dir, x, y, batch=2, steps=400)


def dense_batch_one(run_dir):
    x, y = features(300)
    keras().utils.set_random_seed(0)
    fit(compile_model(dense_net(0.99), 1e-3), run_dir, x, y, batch=1, steps=300)


def ema_weights(run_dir):
    """Issue #12's measurement: Adam 3e-3 with ``use_ema=True``, BN momentum 0.9, 150 steps.

    Noisier images and batch 16: the weights keep moving, so the EMA weights (a
    100-step average) are far from the live ones the moving statistics follow.
    """
    x, y = images(960, noise=0.85)
    keras().utils.set_random_seed(0)
    model = compile_model(small_resnet(0.9), 3e-3, use_ema=True, ema_momentum=0.99)
    fit(model, run_dir, x, y, batch=16, steps=150)


def inverted_momentum(run_dir):
    """PyTorch's ``momentum=0.1`` copied into Keras."""
    x, y = images(1280)
    keras().utils.set_random_seed(0)
    fit(compile_model(conv_net(0.1)), run_dir, x, y, batch=32, steps=200)


def seed001_updates_never_run(run_dir):
    """Seed 001: the moving-average updates never run (restored after every step)."""
    k = keras()

    class NoUpdates(k.Model):
        def train_step(self, data):
            # A copy: a Keras 3 variable's ``value`` is the backend variable itself.
            moving = [k.ops.copy(v) for v in self.non_trainable_variables]
            logs = super().train_step(data)
            for variable, value in zip(self.non_trainable_variables, moving):
                variable.assign(value)
            return logs

    x, y = features(1280)
    k.utils.set_random_seed(0)
    net = dense_net(0.99)
    model = NoUpdates(net.inputs, net.outputs)
    fit(compile_model(model), run_dir, x, y, batch=32, steps=200)


def seed002_decay_one(run_dir):
    """Seed 002: ``decay=1`` (momentum 1) on raw 0..255 pixels."""
    x, y = images(960)
    x = np.clip((x + 2.0) * 60.0, 0, 255).astype(np.float32)
    keras().utils.set_random_seed(0)
    fit(compile_model(conv_net(1.0)), run_dir, x, y, batch=32, steps=150)


def seed003_decay_0999(run_dir):
    """Seed 003: TF1's default decay 0.999 and a short training run."""
    x, y = images(960)
    keras().utils.set_random_seed(0)
    fit(compile_model(conv_net(0.999)), run_dir, x, y, batch=32, steps=150)


def shared_tower(name: str):
    """A conv tower with BatchNormalization, applied to several inputs with shared weights."""
    layers = keras().layers
    return keras().Sequential(
        [
            keras().Input((16, 16, 3)),
            layers.Conv2D(16, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9, name="bn1"),
            layers.Activation("relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9, name="bn2"),
            layers.Activation("relu"),
            layers.GlobalAveragePooling2D(),
        ],
        name=name,
    )


def pairs_model(head: Callable):
    """Input (16, 16, 6): two images side by side in the channels, one shared tower on each."""
    k = keras()
    inputs = k.Input((16, 16, 6))
    tower = shared_tower("tower")
    first, second = tower(inputs[..., :3]), tower(inputs[..., 3:])
    return k.Model(inputs, head(first, second))


def gan_discriminator(run_dir):
    """A GAN-like discriminator called on a real and a generated batch in every step.

    The "generated" images come from a poor generator: blurred, dimmer, noisier
    copies with a colour offset, so the two calls of each BN layer normalise
    differently distributed batches and every call updates the same moving
    statistics. The train/inference gap is the real consequence: in inference
    mode both branches are normalised with the mixture, and the probe loss is
    0.79 (worse than chance, ln 2 = 0.69) against 0.42 in training mode.
    """
    k = keras()
    real, _ = images(1280, seed=4)
    fake, _ = images(1280, seed=5, noise=0.8)
    fake = 0.4 * (fake + np.roll(fake, 1, axis=1) + np.roll(fake, 1, axis=2)) / 3 + 0.6
    rng = np.random.default_rng(6)
    order = rng.permutation(len(real))
    x = np.concatenate([real, fake[order]], axis=-1).astype(np.float32)
    y = np.tile(np.array([[1.0, 0.0]], np.float32), (len(x), 1))  # real -> 1, generated -> 0
    k.utils.set_random_seed(0)
    score = k.layers.Dense(1, activation="sigmoid")
    model = pairs_model(lambda a, b: k.layers.Concatenate()([score(a), score(b)]))
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="binary_crossentropy")
    fit(model, run_dir, x, y, batch=32, steps=200)


def siamese_same_distribution(run_dir):
    """A Siamese net on two random images of one distribution: same class or not."""
    k = keras()
    x, labels = images(1280, seed=7)
    partner = np.random.default_rng(8).permutation(len(x))
    pairs = np.concatenate([x, x[partner]], axis=-1).astype(np.float32)
    same = (labels == labels[partner]).astype(np.float32)[:, None]
    k.utils.set_random_seed(0)
    layers = k.layers
    model = pairs_model(
        lambda a, b: layers.Dense(1, activation="sigmoid")(
            layers.Dense(16, activation="relu")(
                layers.Lambda(lambda t: k.ops.abs(t[0] - t[1]))([a, b])
            )
        )
    )
    model.compile(optimizer=k.optimizers.Adam(3e-3), loss="binary_crossentropy")
    fit(model, run_dir, pairs, same, batch=32, steps=200)


def seed004_graph(path):
    """Seed 004: a tf.compat.v1 graph, control flow v2 (TF 2.x default), updates not wired."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    from _bn_graphs import build_seed004_graph

    graph_def = build_seed004_graph(control_flow_v2=True, wire_updates=False)
    with open(path, "wb") as f:
        f.write(graph_def.SerializeToString())


SCENARIOS = [
    Scenario("resnet8-m0.99", "ResNet-8 converged, momentum 0.99, batch 32, 400 steps",
             frozenset(), healthy_resnet(0.99)),
    Scenario("resnet8-m0.9", "ResNet-8 converged, momentum 0.9, batch 32, 400 steps",
             frozenset(), healthy_resnet(0.9)),
    Scenario("convnet-augment-dropout", "RandomFlip + RandomTranslation + Dropout, momentum 0.99",
             frozenset(), healthy_convnet_augmented),
    Scenario("fine-tune-frozen-base", "trained ResNet-8 base frozen (trainable=False), new head",
             frozenset(), fine_tune_frozen_base),
    Scenario("class-sorted", "class-sorted data, shuffle=False: one class per batch",
             frozenset({"train-inference-gap"}), class_sorted),
    Scenario("domain-shift", "per-batch gain/offset (each batch its own domain)",
             frozenset({"train-inference-gap"}), domain_shift),
    Scenario("conv-batch-2", "conv net, batch 2, 400 steps: 2-sample statistics",
             frozenset({"train-inference-gap"}), conv_batch_two),
    Scenario("dense-batch-1", "dense net, batch 1, 300 steps",
             frozenset({"tiny-batch", "train-inference-gap"}), dense_batch_one),
    Scenario("ema-weights", "Adam(use_ema=True, ema_momentum=0.99), BN m 0.9, batch 16, 150 steps",
             frozenset({"ema-weights-stale-stats"}), ema_weights),
    Scenario("inverted-momentum", "momentum 0.1 (PyTorch's default) in Keras",
             frozenset({"inverted-momentum"}), inverted_momentum),
    Scenario("seed001-updates-never-run", "seed 001: moving-statistic updates never applied",
             frozenset({"stale-moving-stats", "uninitialized-moving-stats", "train-inference-gap"}),
             seed001_updates_never_run),
    Scenario("seed002-decay-1", "seed 002: decay=1 on 0..255 pixels",
             frozenset({"momentum-one", "uninitialized-moving-stats", "train-inference-gap"}),
             seed002_decay_one),
    Scenario("seed003-decay-0.999", "seed 003: decay 0.999, 150 steps",
             frozenset({"slow-momentum"}), seed003_decay_0999),
    Scenario("seed004-graph", "seed 004: tf.compat.v1 cond (control flow v2), updates not wired",
             frozenset({"update-ops-not-wired"}), seed004_graph, kind="graph"),
    Scenario("resnet50", "keras.applications.ResNet50, weights=None, 32x32, batch 16, 320 steps",
             frozenset({"train-inference-gap"}), application("ResNet50", 320)),
    Scenario("mobilenetv2", "keras.applications.MobileNetV2, alpha 0.35, BN momentum 0.999",
             frozenset({"slow-momentum", "train-inference-gap", "dead-channels"}),
             application("MobileNetV2", 320, alpha=0.35)),
    Scenario("efficientnetb0", "keras.applications.EfficientNetB0, weights=None, 320 steps",
             frozenset({"train-inference-gap", "dead-channels"}),
             application("EfficientNetB0", 320)),
    Scenario("gan-discriminator", "shared discriminator on real and generated batches, 200 steps",
             frozenset({"shared-layer", "train-inference-gap"}), gan_discriminator),
    Scenario("siamese-same-distribution", "Siamese towers on two random images, 200 steps",
             frozenset(), siamese_same_distribution),
]  # fmt: skip

BY_NAME = {s.name: s for s in SCENARIOS}
# The subset the test suite runs (tests/test_accuracy_corpus.py): the new codes and defect 1.
FAST = (
    "inverted-momentum",
    "ema-weights",
    "resnet8-m0.99",
    "seed004-graph",
    "gan-discriminator",
)


def diagnose_scenario(scenario: Scenario, workdir: str) -> dict:
    """Train ``scenario`` in ``workdir`` and return what fired (warnings/errors and info)."""
    started = time.time()
    if scenario.kind == "graph":
        from tb_bn_plugin.diagnostics.graph import report_graph

        path = os.path.join(workdir, f"{scenario.name}.pb")
        scenario.train(path)
        with open(path, "rb") as f:
            report = report_graph(f.read())
        findings, extra = report.findings, {"sites": [s.name for s in report.sites]}
    else:
        from tb_bn_plugin.diagnostics import diagnose
        from tb_bn_plugin.reading.load import load_runs
        from tb_bn_plugin.reading.provider import open_logdir

        logdir = os.path.join(workdir, "logs")
        scenario.train(os.path.join(logdir, scenario.name))
        run = load_runs(open_logdir(logdir), runs=[scenario.name])[scenario.name]
        findings = diagnose(run)
        extra = {"errors": run.errors}
        shared = {p: layer.calls for p, layer in run.layers.items() if layer.calls is not None}
        if shared:
            from tb_bn_plugin.numerics.moments import call_divergence

            # Per shared layer: median over steps of the median over channels (the rule's measure).
            extra["call_divergence"] = {}
            for path, calls in shared.items():
                epsilon = run.layers[path].config.epsilon
                shift, log_var = call_divergence(calls.mean, calls.variance, epsilon)
                extra["call_divergence"][path] = {
                    "mean_shift": float(np.median(np.median(shift, axis=1))),
                    "log_var_ratio": float(np.median(np.median(log_var, axis=1))),
                }
        if run.gap is not None:
            from tb_bn_plugin.diagnostics.gap import gap_summary

            summary = gap_summary(run.gap)
            if summary is not None:
                extra["gap"] = {
                    "train_loss": summary.train_loss,
                    "inference_loss": summary.inference_loss,
                    "relative_loss_gap": summary.relative_loss_gap,
                    "loss_reference": summary.loss_reference,
                    "scaled_loss_gap": summary.scaled_loss_gap,
                    "metric_gaps": summary.metric_gaps,
                    "max_compound_gap": max(summary.compound.values(), default=None),
                }
        if run.ema_weights_gap is not None:
            extra["ema_weights_gap"] = {
                "reestimated_loss": float(run.ema_weights_gap.train_loss[-1]),
                "stale_loss": float(run.ema_weights_gap.inference_loss[-1]),
            }
    serious = sorted({f.code for f in findings if f.severity in ("error", "warning")})
    return {
        "name": scenario.name,
        "description": scenario.description,
        "expected": sorted(scenario.expected),
        "fired": serious,
        "info": sorted({f.code for f in findings if f.severity == "info"}),
        "missed": sorted(scenario.expected - set(serious)),
        "unexpected": sorted(set(serious) - scenario.expected),
        "seconds": round(time.time() - started, 1),
        **extra,
    }


def table(results: list[dict]) -> str:
    """Markdown scenario x code table: E = expected and fired, M = missed, U = unexpected."""
    codes = sorted({c for r in results for c in r["expected"] + r["fired"]})
    header = "| scenario | " + " | ".join(f"`{c}`" for c in codes) + " | info |"
    lines = [header, "|" + "---|" * (len(codes) + 2)]
    for r in results:
        cells = []
        for code in codes:
            expected, fired = code in r["expected"], code in r["fired"]
            cells.append(
                "✓" if expected and fired else "MISSED" if expected else "FALSE" if fired else ""
            )
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {', '.join(r['info'])} |")
    lines.append("")
    lines.append(totals_line(results))
    return "\n".join(lines)


def totals(results: list[dict]) -> dict:
    expected = sum(len(r["expected"]) for r in results)
    missed = sum(len(r["missed"]) for r in results)
    return {
        "scenarios": len(results),
        "expected": expected,
        "fired_as_expected": expected - missed,
        "missed": missed,
        "unexpected": sum(len(r["unexpected"]) for r in results),
    }


def totals_line(results: list[dict]) -> str:
    t = totals(results)
    return (
        f"{t['scenarios']} scenarios: {t['fired_as_expected']}/{t['expected']} expected codes "
        f"fired, {t['unexpected']} unexpected warnings or errors (✓ expected and fired; "
        "MISSED expected, not fired; FALSE fired, not expected)"
    )


def write_results(out_dir: str, results: list[dict]) -> None:
    from harness import machine_info

    with open(os.path.join(out_dir, "accuracy.json"), "w") as f:
        json.dump(
            {"benchmark": "accuracy", "machine": machine_info(), "totals": totals(results),
             "scenarios": results},
            f, indent=1, default=float,
        )  # fmt: skip
    with open(os.path.join(out_dir, "accuracy.md"), "w") as f:
        f.write(table(results) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/accuracy.py", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(BY_NAME), help="run these scenarios")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    scenarios = [BY_NAME[n] for n in args.only] if args.only else SCENARIOS
    os.makedirs(args.out_dir, exist_ok=True)
    results = []
    for scenario in scenarios:
        with tempfile.TemporaryDirectory() as workdir:
            result = diagnose_scenario(scenario, workdir)
        results.append(result)
        print(
            f"{result['name']}: expected {result['expected']} fired {result['fired']} "
            f"info {result['info']} ({result['seconds']} s)",
            flush=True,
        )
        write_results(args.out_dir, results)  # after each scenario: a long run shows progress
    print(table(results))
    t = totals(results)
    return 0 if t["missed"] == 0 and t["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
