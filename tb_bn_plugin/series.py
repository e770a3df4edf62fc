"""In-memory series of logged BatchNorm internals: what readers return and the math consumes.

These dataclasses are the boundary between storage (event files read through
TensorBoard's data path, see ``reading/``) and the pure numpy functions for
drift, gaps and diagnostics. They can be built directly from numpy arrays in
tests, without a training run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.numerics import moments
from tb_bn_plugin.numerics.ema import EmaError


@functools.cache
def _channel_stats(scale: bool, center: bool) -> tuple[str, ...]:
    """``LayerConfig.stats``: ``CHANNEL_STATS`` but gamma without scale, beta without center."""
    return tuple(
        s
        for s in metadata.CHANNEL_STATS
        if (s != metadata.GAMMA or scale) and (s != metadata.BETA or center)
    )


@dataclasses.dataclass
class LayerConfig:
    """Static facts about one BatchNormalization layer."""

    path: str
    index: int
    channels: int
    axis: int
    momentum: float
    epsilon: float
    center: bool
    scale: bool
    synchronized: bool = False
    renorm: bool = False
    rank: Optional[int] = None

    def stats(self) -> tuple[str, ...]:
        """The per-channel statistics this layer has (no gamma/beta when absent)."""
        return _channel_stats(self.scale, self.center)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LayerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


@dataclasses.dataclass
class MomentGroups:
    """Batch statistics of several groups normalised separately in one step (replicas, calls).

    Attributes:
      steps: (P,) int64 steps with per-group statistics (trained snapshot steps).
      count: (P, G) values per channel each group normalised over.
      mean / variance: (P, G, C) each group's batch mean and biased variance.
    """

    steps: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    variance: np.ndarray


@dataclasses.dataclass
class ReplicaSeries(MomentGroups):
    """Per-replica batch statistics of an unsynchronised layer trained on several replicas
    (G = R replicas)."""

    @property
    def replicas(self) -> int:
        return int(self.count.shape[1])

    def global_moments(self) -> moments.Moments:
        """(P, C) moments of the whole batch across replicas (``moments.combine_replicas``)."""
        return moments.combine_replicas(self.count, self.mean, self.variance)


@dataclasses.dataclass
class CallSeries(MomentGroups):
    """Per-call batch statistics of a layer called several times in one training step
    (G = K calls, in the order the step made them; call 0 is also the layer's
    ``batch_mean``/``batch_variance``)."""

    @property
    def calls(self) -> int:
        return int(self.count.shape[1])


@dataclasses.dataclass
class LayerSeries:
    """Everything logged for one layer in one run.

    Attributes:
      config: the layer's static facts.
      steps: (S,) int64 training steps with a summary record (every logged step).
      info: field name (``metadata.INFO_FIELDS``) -> (S,) float64.
      summary: quantity (a ``CHANNEL_STATS`` or ``DRIFT_STATS`` name) -> (S, Q)
        float64, Q = ``len(metadata.SUMMARY_COLUMNS)``, statistics across channels.
        Batch statistics are NaN at steps where the layer did not train.
      channel_steps: (T,) int64 steps with a per-channel snapshot (T <= S).
      channels: stat name -> (T, C) float64 per-channel values at ``channel_steps``.
      replicas: per-replica batch statistics, only for an unsynchronised layer
        trained on more than one replica (then ``batch_mean``/``batch_variance``
        and ``info["count"]`` are the first replica's).
      calls: per-call batch statistics, only for a layer called more than once
        in a training step (then ``batch_mean``/``batch_variance`` and
        ``info["count"]`` are the first call's).
    """

    config: LayerConfig
    steps: np.ndarray
    info: dict[str, np.ndarray]
    summary: dict[str, np.ndarray]
    channel_steps: np.ndarray
    channels: dict[str, np.ndarray]
    replicas: Optional[ReplicaSeries] = None
    calls: Optional[CallSeries] = None

    def summary_column(self, stat: str, column: str) -> np.ndarray:
        """(S,) one column (e.g. ``"mean"``) of a stat's across-channel summary."""
        return self.summary[stat][:, metadata.SUMMARY_COLUMNS.index(column)]

    @functools.cached_property
    def snapshot_rows(self) -> np.ndarray:
        """(T,) int64 row of ``steps`` logged at each of ``channel_steps`` (the last of
        repeated steps, as a dict by step keeps), -1 where ``steps`` lacks it.

        Computed once per series (the rules read it for several statistics; series
        are shared read-only, so it never goes stale).
        """
        wanted = np.asarray(self.channel_steps)
        if not len(self.steps):
            return np.full(len(wanted), -1, dtype=np.int64)
        order = np.argsort(self.steps, kind="stable")
        steps = np.asarray(self.steps)[order]
        at = np.maximum(np.searchsorted(steps, wanted, side="right") - 1, 0)
        return np.where(steps[at] == wanted, order[at], -1)


@dataclasses.dataclass
class GapSeries:
    """The train/inference gap measured on the probe batch for one run.

    Attributes:
      steps: (G,) int64 steps at which the gap was measured.
      train_loss / inference_loss: (G,) loss of the probe batch in each mode.
      metrics: metric name -> {"train": (G,), "inference": (G,)}.
      compound: layer path -> (G,) relative RMS difference of the layer's output
        between a full training-mode and a full inference-mode forward pass.
      local: layer path -> (G,) measured relative RMS difference the layer itself
        introduces when fed the same (training-mode) input.
      local_derived: layer path -> (G,) the same, derived from statistics alone.
      attribution: layer path -> (G,) share of the model-level loss gap removed by
        switching only this layer to training mode (NaN where not measured).
    """

    steps: np.ndarray
    train_loss: np.ndarray
    inference_loss: np.ndarray
    metrics: dict[str, dict[str, np.ndarray]]
    compound: dict[str, np.ndarray]
    local: dict[str, np.ndarray]
    local_derived: dict[str, np.ndarray]
    attribution: dict[str, np.ndarray]


@dataclasses.dataclass
class EmaErrorSeries:
    """How far one layer's moving statistics were from its precise population statistics.

    Measured by ``training.precise.PreciseStatsMonitor`` (see ``numerics.ema.EmaError``).

    Attributes:
      steps: (E,) int64 steps of the measurements.
      values: field name -> (E,) float64, one entry per ``EmaError.FIELDS`` in that
        order (``mean_shift``, ``max_mean_shift``, ``abs_log_var_ratio``,
        ``max_abs_log_var_ratio``); NaN where a field was not logged.
    """

    steps: np.ndarray
    values: dict[str, np.ndarray]

    def error_at(self, i: int) -> EmaError:
        """The ``EmaError`` of measurement ``i`` (negative counts from the end)."""
        return EmaError(*(float(self.values[field][i]) for field in EmaError.FIELDS))


@dataclasses.dataclass
class StepFunctions:
    """The functions a model's BatchNorm layers ran in, on a backend without a TensorFlow graph.

    Decoded from the ``step_functions`` payload (see ``metadata``).

    Attributes:
      step: the step it was measured at (the fit's first logged step).
      backend: the Keras backend (``"jax"``, ``"torch"``).
      train_function / inference_function: the training and inference steps
        as that backend compiles or runs them (``jax.jit(Functional.train_step)``).
      layers: the logged layers' paths, in model order.
      momentum: each layer's momentum.
      moving_variables: each layer's moving-statistic variable paths.
      updates_applied: per layer, whether the training step at ``step``
        changed the moving statistics (None: not decided).
    """

    step: int
    backend: str
    train_function: str
    inference_function: str
    layers: list[str]
    momentum: list[float]
    moving_variables: list[list[str]]
    updates_applied: list[Optional[bool]]

    def functions_json(self) -> dict[str, Any]:
        """The backend, both functions and the step: the graph route's and the report's keys."""
        return {
            "backend": self.backend,
            "train_function": self.train_function,
            "inference_function": self.inference_function,
            "step": self.step,
        }


@dataclasses.dataclass
class RunData:
    """All BN Internals data of one run.

    Attributes:
      run: the run's name.
      layers: layer path -> its series.
      gap: the train/inference gap, when logged.
      errors: data of this run that could not be decoded (one line each).
      ema_error: layer path -> its EMA-vs-precise error, for layers a
        ``PreciseStatsMonitor`` measured.
      ema_weights_gap: the gap measured with the optimizer's EMA weights at
        the end of ``fit`` (``use_ema=True`` only; see ``metadata``).
      step_functions: the latest step-functions description (runs trained on
        JAX or PyTorch).
      version: what it was read from, for caches of results computed from it:
        (tag, latest step) of each tag read, sorted; empty when not read from storage.
    """

    run: str
    layers: dict[str, LayerSeries]
    gap: Optional[GapSeries] = None
    errors: list[str] = dataclasses.field(default_factory=list)
    ema_error: dict[str, EmaErrorSeries] = dataclasses.field(default_factory=dict)
    ema_weights_gap: Optional[GapSeries] = None
    step_functions: Optional[StepFunctions] = None
    version: tuple[tuple[str, Optional[int]], ...] = ()

    def ordered_layers(self) -> list[LayerSeries]:
        """Layers in model order."""
        return sorted(self.layers.values(), key=lambda s: s.config.index)
