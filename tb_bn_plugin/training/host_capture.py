"""Capturing batch statistics on Keras 3 backends other than TensorFlow (JAX, PyTorch).

``HostStatsCapture`` is ``capture.StatsCapture``'s counterpart for a
``compat.base.HostKerasFlavour``: no capture variables and no TensorFlow. The
flavour's wrapper on each layer's ``_moments`` hands the mean and biased
variance the layer normalised with to a slot here (on JAX from inside the
compiled step, only in steps ``DueSteps`` names; on PyTorch in every step, by
reference), with the step count they belong to. A snapshot reads the slots
and the layers' moving statistics, gamma and beta through the flavour
(``read_values``: on JAX from the state Keras holds between epoch-end syncs).
Single device only: ``replicas`` is 1.

A layer called several times in one step (a shared layer) fills one slot per
call: on JAX each host callback carries its call number (fixed when the step
is traced, since callbacks are unordered); on PyTorch the calls arrive in
the order the eager step makes them and are numbered here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.records import LayerSnapshot
from tb_bn_plugin.training.capture import BatchNormRef, Paused, layer_config
from tb_bn_plugin.training.compat.base import DueSteps, HostRecord, InstalledCapture


@dataclasses.dataclass
class _Slot:
    """One layer's latest captured statistics and the steps done before the step they are of."""

    mean: Any = None
    variance: Any = None
    count: float = math.nan
    step: int = -1


class HostStatsCapture:
    """``StatsCapture``'s interface for a model on a ``HostKerasFlavour``.

    Args:
      refs: the layers to capture (built).
      model: the model they belong to.
      due: the steps whose statistics will be logged (``DueSteps``; JAX sends only those).
        ``DueSteps()`` (``every`` None): a custom loop, every training call is recorded.
      clock: the training steps done so far; default: the model's optimizer's ``iterations``.

    ``state``: where a stateless custom loop (JAX) keeps the variables' values between its
    steps, ``(variables, values)`` pairs (``HostKerasFlavour.read_values``); snapshots read
    them instead of those variables (None: read the variables).
    """

    replicas = 1
    gated = False

    def __init__(
        self,
        refs: Sequence[BatchNormRef],
        model: Any,
        due: DueSteps,
        clock: Optional[Callable[[], int]] = None,
    ) -> None:
        self.configs = [layer_config(ref, i) for i, ref in enumerate(refs)]
        self._refs = list(refs)
        self._model = model
        self._flavour = refs[0].flavour if refs else None
        self._due = due
        self._clock = clock or self._optimizer_steps
        # Per layer, one slot per call of the layer in a step (call 0 first).
        self._slots: list[list[_Slot]] = [[_Slot()] for _ in self._refs]
        self._installed: list[InstalledCapture] = []
        self._enabled = True
        self.state: Optional[Sequence[Sequence[Any]]] = None

    def install(self) -> None:
        """Wrap the train step and each layer's ``_moments``; takes effect in steps traced (JAX) or
        run (PyTorch) afterwards."""
        hook = None
        if self._due.every is not None:  # fit's train step (a custom loop has none to hook)
            hook = self._flavour.install_step_hook(
                self._model, self._due, [ref.layer for ref in self._refs]
            )
        self._installed = ([hook] if hook is not None else []) + [
            self._flavour.install_host_capture(ref.layer, self._recorder(slots), self._due)
            for ref, slots in zip(self._refs, self._slots)
        ]

    def uninstall(self) -> None:
        for installed in self._installed:
            installed.uninstall()
        self._installed = []

    def capture_next_steps(self, due: bool) -> None:
        """No wrapper here adds gated computation (``gated`` is False)."""

    def paused(self) -> Paused:
        """Context manager: calls inside it do not record."""
        return Paused(self)

    def _recorder(self, slots: list[_Slot]) -> HostRecord:
        capture = self

        def record(
            mean: Any,
            variance: Any,
            count: float,
            masked: bool,
            step: Optional[int],
            call: Optional[int],
        ):
            if not capture._enabled:
                return
            step = capture._clock() if step is None else step
            if call is None:  # in order: the first call of a step is the one of a new step
                ran = [k for k, s in enumerate(slots) if s.step == step]
                call = ran[-1] + 1 if ran else 0
            while len(slots) <= call:
                slots.append(_Slot())
            slot = slots[call]
            slot.mean, slot.variance, slot.count, slot.step = mean, variance, count, step

        return record

    def _optimizer_steps(self) -> int:
        return self._flavour.steps_done(self._model)

    def settle(self) -> None:
        """Wait until the statistics of every training step run so far are recorded."""
        self._flavour.settle()

    def moving_statistics(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every layer's (moving mean, moving variance) now, as (C,) float64 arrays."""
        self._flavour.settle()
        variables = [
            v for ref in self._refs for v in (ref.layer.moving_mean, ref.layer.moving_variance)
        ]
        values = [
            _host(v, config.channels)
            for v, config in zip(
                self._flavour.read_values(self._model, variables, self.state),
                [config for config in self.configs for _ in range(2)],
            )
        ]
        return list(zip(values[::2], values[1::2]))

    def snapshot(self, steps_done: int) -> list[LayerSnapshot]:
        """Every layer's statistics after the step that brought the clock to ``steps_done``."""
        self._flavour.settle()
        variables = []
        for ref in self._refs:
            layer = ref.layer
            variables += [layer.moving_mean, layer.moving_variance]
            variables += [layer.gamma] if layer.scale else []
            variables += [layer.beta] if layer.center else []
        values_read = iter(self._flavour.read_values(self._model, variables, self.state))
        out = []
        for config, ref, slots in zip(self.configs, self._refs, self._slots):
            c = config.channels
            slot = slots[0]
            training = slot.step == steps_done - 1
            ran = [s for s in slots if s.step == steps_done - 1]
            values: dict[str, np.ndarray] = {}
            if training:
                values[metadata.BATCH_MEAN] = _host(slot.mean, c)
                values[metadata.BATCH_VARIANCE] = _host(slot.variance, c)
            else:
                values[metadata.BATCH_MEAN] = np.full(c, np.nan)
                values[metadata.BATCH_VARIANCE] = np.full(c, np.nan)
            for stat in config.stats()[2:]:
                values[stat] = _host(next(values_read), c)
            out.append(
                LayerSnapshot(
                    config=config,
                    values=values,
                    training=training,
                    trainable=bool(ref.layer.trainable),
                    count=float(slot.count) if training else math.nan,
                    momentum=float(ref.layer.momentum),
                    replicas=None,
                    calls=(
                        np.array([s.count for s in ran], dtype=np.float64),
                        np.stack([_host(s.mean, c) for s in ran]),
                        np.stack([_host(s.variance, c) for s in ran]),
                    )
                    if training and len(ran) > 1
                    else None,
                )
            )
        return out


def _host(value: Any, channels: int) -> np.ndarray:
    """A (C,) float64 numpy copy of a backend array (numpy, JAX or torch, on any device)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32).reshape(channels).astype(np.float64)
