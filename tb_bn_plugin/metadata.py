"""Plugin name, tag scheme and summary metadata for BN Internals summaries.

Everything the writer (``summary.py``) and the readers (``reading/``, the
plugin) must agree on lives here: the plugin name, the payload kinds, the row
and column layouts of the tensors, and the versioned JSON ``content`` of each
tag's ``SummaryMetadata``.

Schema history:
  * version 1: ``layer_summary``, ``layer_channels``, ``gap`` and ``ema_error`` payloads;
    ``layer_replicas`` added later within version 1 (readers skip kinds they do not know);
    ``ema_weights_gap`` added within version 1 the same way.
  * version 2: ``layer_calls`` (every call of a layer called several times in one
    training step). The ``summary`` and ``channels`` payloads of such a layer hold
    its first call's batch statistics (call 0); version 1 writers stored whichever
    call ran last, without saying so. Single-call layers are written exactly as in
    version 1, so readers of version 2 read version 1 logs unchanged; version 1
    readers ask to be upgraded for version 2 data. ``step_functions`` (the step
    functions of a JAX/PyTorch run, for the graph view) added within version 2.

The ``layer_calls`` payload (tag ``layer_tag(path, "calls")``) holds the batch
statistics of every call of a layer that normalised several batches in one
training step (a shared layer: Siamese towers, a GAN discriminator applied to
real and generated batches, a block reused at several depths). It is written
with the layer's per-channel snapshots, at steps where the layer trained, and
only for layers called more than once per step. Content ``{"kind":
"layer_calls", "layer": LayerConfig JSON, "calls": K, "columns":
CALL_COLUMNS}``; the tensor is float32 of shape (K, 1 + 2C), one row per call in
the order the step made them (row 0 is what ``summary``/``channels`` hold):
``[count, batch_mean (C), batch_variance (C)]``, the ``layer_replicas`` layout.

The ``layer_replicas`` payload (tag ``layer_tag(path, "replicas")``) holds the
per-replica batch statistics of an unsynchronised layer trained on more than
one replica of a ``tf.distribute`` strategy (the replicas of the writing
worker). It is written with the layer's per-channel snapshots, at steps where
the layer trained, and never for single-device training or
``synchronized=True`` layers (whose statistics are global already). Content
``{"kind": "layer_replicas", "layer": LayerConfig JSON, "replicas": R,
"columns": REPLICA_COLUMNS}``; the tensor is float32 of shape (R, 1 + 2C),
one row per replica: ``[count, batch_mean (C), batch_variance (C)]``
(``count``: values per channel the replica normalised over; variance biased).
The global batch statistics follow exactly from these rows
(``numerics.moments.combine_replicas``).

The ``ema_error`` payload (tag ``layer_tag(path, SUFFIX_EMA_ERROR)``, written by
``training.precise.PreciseStatsMonitor``) is a float32 vector of the values of
``numerics.ema.EmaError.FIELDS`` with content
``{"kind": "ema_error", "layer_path": path, "fields": [...]}`` naming them in
storage order; ``records`` decodes it into a ``series.EmaErrorSeries``.

The ``gap`` payload (tag ``gap_tag()``, one event per gap evaluation) is a flat
float32 tensor measured on the probe batch, laid out as described by its
metadata content::

    {"kind": "gap", "losses": [L names], "metrics": [M names],
     "layers": [N layer paths], "layer_fields": GAP_LAYER_FIELDS (F names),
     "probe_size": samples in the probe batch, "scope": "batchnorm" | "model"}

    tensor = [train losses (L), inference losses (L),
              train metrics (M), inference metrics (M),
              per-layer values (N x F, row-major: layer by layer)]

``losses[0]`` is ``"loss"``, the compiled loss without regularisation
penalties; multi-output models add each output's unweighted loss
(``"<output>_loss"``). Per-layer fields are ``GAP_LAYER_FIELDS``; a value is
NaN where it was not measured (e.g. ``attribution`` outside attribution
evaluations, any loss of a model without a compiled loss).

The ``ema_weights_gap`` payload (tag ``ema_weights_gap_tag()``) has the
``gap`` payload's layout and content, with ``"kind": "ema_weights_gap"``. It
is written once at the end of a ``fit`` whose optimizer has ``use_ema=True``:
Keras then ends ``fit`` by writing the averaged (EMA) weights into the
trainable variables, and never averages the moving statistics. Its training
mode losses are those of the EMA weights with statistics re-estimated on the
probe batch (each BN layer normalising with the probe's batch statistics at
its input), its inference-mode losses those of the EMA weights with the moving
statistics as they are.

The ``step_functions`` payload (tag ``step_functions_tag()``) describes, for
a model trained on a Keras 3 backend without a TensorFlow graph (JAX,
PyTorch), the two functions its BatchNorm layers run in and whether the
training one applies the moving-statistic updates. It is written once per
``fit``, at the fit's first logged step, with content::

    {"kind": "step_functions", "backend": "jax" | "torch",
     "train_function": str, "inference_function": str,
     "layers": [N layer paths], "momentum": [N floats],
     "moving_variables": [N lists of variable paths]}

``train_function`` / ``inference_function`` name the functions as that
backend compiles or runs them (``jax.jit(Functional.train_step)``). The
tensor is float32 (N,), per layer whether the real training step that
brought the optimizer to the event's step changed the moving statistics it
normalised against: 1 (applied), 0 (left unchanged although they differ
from the batch statistics and momentum < 1: the train step drops the
updates), NaN (not decided: the layer normalised with its moving
statistics, or the update could not change them; ``numerics.ema.updates_applied``).
"""

from __future__ import annotations

import json
from typing import Any

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "bn_internals"
SCHEMA_VERSION = 2
TAG_PREFIX = PLUGIN_NAME

# Payload kinds (the ``kind`` field of the metadata content).
KIND_LAYER_SUMMARY = "layer_summary"
KIND_LAYER_CHANNELS = "layer_channels"
KIND_GAP = "gap"
KIND_EMA_ERROR = "ema_error"
KIND_LAYER_REPLICAS = "layer_replicas"
KIND_EMA_WEIGHTS_GAP = "ema_weights_gap"
KIND_LAYER_CALLS = "layer_calls"
KIND_STEP_FUNCTIONS = "step_functions"

# Last part of a layer payload's tag: ``layer_tag(path, SUFFIX_...)``.
SUFFIX_SUMMARY = "summary"
SUFFIX_CHANNELS = "channels"
SUFFIX_REPLICAS = "replicas"
SUFFIX_CALLS = "calls"
SUFFIX_EMA_ERROR = "ema_error"

# Per-channel statistics, in the order they are stored as rows.
BATCH_MEAN = "batch_mean"
BATCH_VARIANCE = "batch_variance"
MOVING_MEAN = "moving_mean"
MOVING_VARIANCE = "moving_variance"
GAMMA = "gamma"
BETA = "beta"
CHANNEL_STATS = (BATCH_MEAN, BATCH_VARIANCE, MOVING_MEAN, MOVING_VARIANCE, GAMMA, BETA)

# Derived per-channel drift quantities, summarised across channels per step.
MEAN_SHIFT = "mean_shift"
LOG_VAR_RATIO = "log_var_ratio"
DRIFT_STATS = (MEAN_SHIFT, LOG_VAR_RATIO)

# Per-layer fields of the ``gap`` payload, in storage order.
#   compound:      relative RMS difference of the layer's output between a full
#                  training-mode and a full inference-mode forward pass.
#   local:         relative RMS difference between the layer's output on its
#                  training-mode input normalised with batch vs. moving statistics.
#   local_derived: the same, derived from the probe batch's statistics at the
#                  layer, the moving statistics and gamma/beta alone.
#   attribution:   (loss_L - loss_train) / (loss_inference - loss_train), loss_L
#                  of a training-mode pass with only this layer in inference mode.
GAP_COMPOUND = "compound"
GAP_LOCAL = "local"
GAP_LOCAL_DERIVED = "local_derived"
GAP_ATTRIBUTION = "attribution"
GAP_LAYER_FIELDS = (GAP_COMPOUND, GAP_LOCAL, GAP_LOCAL_DERIVED, GAP_ATTRIBUTION)

# Column groups of a ``layer_replicas`` row: a count, then C means, then C variances.
REPLICA_COLUMNS = ("count", BATCH_MEAN, BATCH_VARIANCE)
# Column groups of a ``layer_calls`` row: the ``layer_replicas`` layout, one row per call.
CALL_COLUMNS = REPLICA_COLUMNS

# Columns of a summary row: statistics of one quantity across channels.
SUMMARY_COLUMNS = ("mean", "std", "min", "p05", "p50", "p95", "max")

# Scalar facts about a layer at a logged step, stored ahead of the summary rows.
#   training:  1 if the layer normalised with batch statistics in this step.
#   trainable: 1 if the layer was trainable at this step.
#   count:     values each channel's batch statistics were computed from.
#   momentum:  the layer's momentum at this step.
#   full:      1 if a per-channel snapshot was written for this step.
INFO_FIELDS = ("training", "trainable", "count", "momentum", "full")


def layer_tag(layer_path: str, kind: str) -> str:
    """The tag of one layer's payload: ``kind`` is a ``SUFFIX_*`` (``summary``, ``channels``...)."""
    return f"{TAG_PREFIX}/{layer_path}/{kind}"


def gap_tag() -> str:
    """The tag for the model-level train/inference gap payload."""
    return f"{TAG_PREFIX}/_model/gap"


def ema_weights_gap_tag() -> str:
    """The tag of the gap measured with the optimizer's EMA weights at the end of ``fit``."""
    return f"{TAG_PREFIX}/_model/ema_weights_gap"


def step_functions_tag() -> str:
    """The tag of the step-functions description (backends without a TensorFlow graph)."""
    return f"{TAG_PREFIX}/_model/step_functions"


# -- ema_error payload: tag (encoding) ---------------------------------------------------


def ema_error_tag(layer_path: str) -> str:
    """The tag of one layer's EMA-vs-precise error series (the ``ema_error`` payload)."""
    return layer_tag(layer_path, SUFFIX_EMA_ERROR)


def create_summary_metadata(content: dict[str, Any]) -> summary_pb2.SummaryMetadata:
    """A ``SummaryMetadata`` for this plugin with a versioned JSON ``content``.

    ``data_class`` is set explicitly: the Rust data server drops summaries
    without one.
    """
    payload = {"version": SCHEMA_VERSION, **content}
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME,
            content=json.dumps(payload, sort_keys=True).encode("utf-8"),
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


class MetadataError(ValueError):
    """Raised when a tag's plugin content cannot be understood."""


def parse_plugin_content(content: bytes) -> dict[str, Any]:
    """Decode the ``content`` bytes of a tag written by this plugin.

    Accepts every schema version up to ``SCHEMA_VERSION``; raises
    ``MetadataError`` for unreadable or newer content.
    """
    try:
        parsed = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(f"unreadable bn_internals metadata: {err}") from err
    if not isinstance(parsed, dict) or "kind" not in parsed:
        raise MetadataError("bn_internals metadata lacks a 'kind'")
    version = parsed.get("version")
    if not isinstance(version, int) or version < 1:
        raise MetadataError(f"bn_internals metadata has a bad version: {version!r}")
    if version > SCHEMA_VERSION:
        raise MetadataError(
            f"bn_internals data written with schema version {version}, but this "
            f"tb_bn_plugin reads up to version {SCHEMA_VERSION}: upgrade tb_bn_plugin"
        )
    return parsed
