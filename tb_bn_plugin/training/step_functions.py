"""The graph view's data on Keras 3 backends without a TensorFlow graph (JAX, PyTorch).

There the training and inference paths of every BatchNorm layer are two
separate functions (``jax.jit(Functional.train_step)`` and
``jax.jit(Functional.predict_step)``, or the eager torch steps); what a graph
would show about the moving-statistic updates (are they applied by the train
step?) is measured on one real training step instead: ``StepFunctionsProbe``
reads the moving statistics before a step whose state will be logged, and
after it compares them with the statistics the step normalised with
(``numerics.ema.updates_applied``). It writes the ``step_functions`` payload
(``metadata``) once per ``fit``, or once per ``BatchNormLogger`` (a custom
loop's step in place of ``train_step``). Nothing runs that training would not
run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from tb_bn_plugin import metadata, records
from tb_bn_plugin.numerics.ema import updates_applied
from tb_bn_plugin.summary import SummaryWriter
from tb_bn_plugin.training.capture import BatchNormRef
from tb_bn_plugin.training.host_capture import HostStatsCapture


class StepFunctionsProbe:
    """Measures and writes one fit's ``step_functions`` payload.

    Args:
      model: the model (on a ``HostKerasFlavour``).
      refs: the logged layers, as ``capture`` captures them.
      capture: the fit's (or the logger's) ``HostStatsCapture``.
      functions: the (training, inference) step functions' names; default: ``fit``'s and
        ``predict``'s as the backend compiles them (``HostKerasFlavour.step_functions``).
        An attribute: a custom loop names its step once it knows it (``BatchNormLogger.jit``).
    """

    def __init__(
        self,
        model: Any,
        refs: Sequence[BatchNormRef],
        capture: HostStatsCapture,
        functions: Optional[tuple[str, str]] = None,
    ) -> None:
        self._model = model
        self._refs = list(refs)
        self._capture = capture
        self.functions = functions
        self._before: Optional[list[tuple[Any, Any]]] = None
        self._steps_before = -1
        self.written = False

    def before_step(self, steps_done: int) -> None:
        """Read the moving statistics before the step that starts at ``steps_done`` (one whose
        state will be logged: its batch statistics reach the host)."""
        if self.written:
            return
        self._before = self._capture.moving_statistics()
        self._steps_before = steps_done

    def after_step(self, steps_done: int, writer: SummaryWriter) -> None:
        """At the log of the state after that step: decide per layer and write the payload."""
        if self.written or self._before is None or steps_done != self._steps_before + 1:
            return
        snapshots = self._capture.snapshot(steps_done)
        applied = [
            updates_applied(
                before,
                _moving(after),
                (after.values[metadata.BATCH_MEAN], after.values[metadata.BATCH_VARIANCE]),
                after.momentum,
            )
            for before, after in zip(self._before, snapshots)
        ]
        flavour = self._refs[0].flavour
        train_function, inference_function = self.functions or flavour.step_functions(self._model)
        writer.write(
            metadata.step_functions_tag(),
            records.step_functions_record(applied),
            steps_done,
            records.step_functions_content(
                flavour.backend,
                train_function,
                inference_function,
                [ref.path for ref in self._refs],
                [float(ref.layer.momentum) for ref in self._refs],
                [
                    [ref.layer.moving_mean.path, ref.layer.moving_variance.path]
                    for ref in self._refs
                ],
            ),
        )
        self.written = True


def _moving(snapshot: records.LayerSnapshot) -> tuple[Any, Any]:
    return snapshot.values[metadata.MOVING_MEAN], snapshot.values[metadata.MOVING_VARIANCE]
