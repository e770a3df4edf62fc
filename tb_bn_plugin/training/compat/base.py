"""What the training code needs from a Keras flavour: the ``KerasFlavour`` protocol.

Everything in ``training`` that depends on which Keras built a model goes
through one ``KerasFlavour`` (``compat.flavour_of``): finding BatchNormalization
layers and their channel axis, installing the batch-statistics capture,
computing a layer's batch moments, running forward passes that change no
state, reaching the compiled loss and metrics. ``keras3.Keras3`` and
``tf_keras.TfKeras`` implement it for TensorFlow; ``keras3_jax.Keras3Jax`` and
``keras3_torch.Keras3Torch`` for Keras 3 on JAX and PyTorch, which also
implement ``HostKerasFlavour`` (capture without TensorFlow: see there) on the
base they share, ``keras3_host.Keras3Host``.

Also here: the types the protocol speaks in (``Record``, ``HostRecord``,
``InstalledCapture``). Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# What a capture wrapper calls in every training step with one layer's (C,) batch mean,
# (C,) biased batch variance and the scalar count of values per channel; ``masked``
# says whether the count came from a Keras mask.
Record = Callable[[Any, Any, Any, bool], None]

# What a host flavour's capture wrapper calls with one layer's (C,) batch mean, (C,) biased
# batch variance (arrays of the backend or numpy), the count of values per channel, whether
# it came from a mask, the number of training steps done before that step (None: read
# the clock now) and which call of the layer in that step it is (0 for the first; None:
# the calls arrive in the order the step made them, so the capture numbers them).
HostRecord = Callable[[Any, Any, float, bool, Optional[int], Optional[int]], None]


@dataclasses.dataclass
class InstalledCapture:
    """A capture wrapper put on one layer instance by ``KerasFlavour.install_capture``.

    ``attribute``: the instance attribute the wrapper occupies (removing it
    restores the class's method), or None when it occupies none. ``gated``: the
    wrapper adds computation that runs only while the ``due`` variable is True
    (``StatsCapture.capture_next_steps``). ``undo``: what else ``uninstall``
    takes back (a registration with the model's train function on JAX).
    """

    layer: Any
    attribute: Optional[str]
    gated: bool = False
    undo: Optional[Callable[[], None]] = None

    def uninstall(self) -> None:
        if self.attribute is not None:
            self.layer.__dict__.pop(self.attribute, None)
        if self.undo is not None:
            self.undo()


class KerasFlavour(Protocol):
    """One Keras flavour (Keras 3, tf-keras, ...) as the training code sees it.

    Methods take the model or layer they apply to; implementations hold no
    per-model state. ``BatchNormRef`` is ``capture.BatchNormRef`` (a path and a layer).
    """

    # Whether ``stateless`` also rewinds the RNG state of dropout-like layers, so the gap probe
    # may run the whole model in training mode (``gap_scope="model"``).
    supports_model_scope: bool

    # Whether models of this flavour run on TensorFlow: capture variables, ``tf.summary``,
    # the traced graph and the gap probe's ``tf.function``s. False: ``HostKerasFlavour``.
    uses_tensorflow: bool

    # -- discovery ------------------------------------------------------------

    def owns(self, obj: Any) -> bool:
        """Whether ``obj`` (a model or layer) was built with this flavour."""

    def is_batchnorm(self, layer: Any) -> bool:
        """Whether ``layer`` is a BatchNormalization layer of this flavour."""

    def child_layers(self, layer: Any) -> Sequence[Any]:
        """The layers directly tracked by ``layer`` (a layer or model), in creation order."""

    def channel_axis(self, layer: Any) -> Union[int, list[int]]:
        """A built BN layer's channel axis in its input's coordinates; a list when several."""

    def normalises_with_batch_moments(self, layer: Any) -> bool:
        """Whether training mode normalises with plain batch moments (no renorm etc.)."""

    def explicit_strategy(self, model: Any) -> Optional[tf.distribute.Strategy]:
        """The ``tf.distribute`` strategy ``model`` was created under; None without one."""

    def steps_done(self, model: Any) -> int:
        """Training steps ``model``'s optimizer has done, outside a train step."""

    # -- capture inside the training step -------------------------------------

    def install_capture(self, layer: Any, record: Record, due: tf.Variable) -> InstalledCapture:
        """Wrap the method that yields ``layer``'s training-mode batch statistics.

        The wrapper calls ``record`` with what the layer normalised with and
        returns what the original returned; it takes effect in functions traced
        afterwards. ``due`` may gate extra work (``InstalledCapture.gated``).
        """

    def batch_moments(
        self, layer: Any, inputs: tf.Tensor, mask: Optional[tf.Tensor]
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(C,) float32 mean and biased variance ``layer`` would normalise ``inputs`` with.

        Computed by the layer class's own method (never a capture wrapper).
        """

    # -- training data --------------------------------------------------------

    def unpack_x_y_sample_weight(self, data: Any) -> tuple[Any, Any, Any]:
        """``(x, y, sample_weight)`` of one element ``train_step`` receives."""

    def progress_bar(self, target: Optional[int]) -> Any:
        """A progress bar over ``target`` batches (``update(done)``)."""

    # -- the gap probe --------------------------------------------------------

    def compiled_loss(self, model: Any) -> Any:
        """The model's compiled loss container (called as ``loss(y, y_pred, sample_weight)``,
        with per-output trackers in ``.metrics``), or None."""

    def compiled_metrics(self, model: Any) -> Any:
        """The model's compiled metrics container (``reset_state``/``update_state``), or None."""

    def is_built(self, container: Any) -> bool:
        """Whether a compiled loss/metrics container was built by a training step."""

    def metric_results(self, container: Any) -> dict[str, Any]:
        """``{name: result}`` of a compiled metrics container."""

    def stateless(self, model: Any) -> contextlib.AbstractContextManager:
        """Inside a ``tf.function``: a scope whose variable assignments (moving statistics, metric
        updates, seed advances) do not outlive it; reads inside see the values on entry."""

    def check_probe(self, refs: Sequence[Any], size: int) -> None:
        """Raise ``ValueError`` when a layer of ``refs`` cannot train on ``size`` samples."""


@dataclasses.dataclass(frozen=True)
class DueSteps:
    """Which training steps' statistics will be logged, as a compiled train step can test it.

    The state after a step is logged when the steps done after it are a
    multiple of ``every``, or end an epoch: ``first`` steps were done when
    ``fit`` started and every epoch has ``epoch_steps`` steps (None: unknown,
    every step is due). ``every=None``: every step is due (custom loops).
    """

    every: Optional[int] = None
    first: int = 0
    epoch_steps: Optional[int] = None

    @property
    def always(self) -> bool:
        return self.every is None or self.epoch_steps is None

    def test(self, done_after: Any, either: Callable[[Any, Any], Any]) -> Any:
        """Whether the state at ``done_after`` steps is logged; ``either``: the logical or of the
        array type ``done_after`` is (a traced scalar)."""
        return either(
            done_after % self.every == 0, (done_after - self.first) % self.epoch_steps == 0
        )


class HostKerasFlavour(KerasFlavour, Protocol):
    """A Keras 3 backend other than TensorFlow (``uses_tensorflow`` False).

    There are no capture variables: the capture wrapper hands each layer's
    batch statistics to a ``HostRecord`` on the host. Where the train step is
    compiled (JAX), it does so only in the steps ``due`` names, from inside the
    compiled step; where it runs eagerly (PyTorch) it keeps a reference in every
    step. Variables are read with ``read_values`` (a JAX model's variables hold
    no values between the syncs Keras makes at epoch ends).
    """

    # The Keras backend's name (``keras.backend.backend()``).
    backend: str
    # Whether a custom loop's step is stateless (JAX): it returns the new values and leaves the
    # variables as they were, so ``BatchNormLogger`` reads the state the loop passes it.
    stateless_steps: bool

    def step_functions(self, model: Any) -> tuple[str, str]:
        """The training and inference steps of ``model`` as this backend compiles or runs them
        (what the graph view shows in place of a TensorFlow graph)."""

    def install_step_hook(
        self, model: Any, due: DueSteps, layers: Sequence[Any]
    ) -> Optional[InstalledCapture]:
        """What the wrappers of ``layers`` need from ``fit``'s train step: on JAX, the steps
        ``due`` names run an instrumented step that sends their statistics (and carries the
        step count), the others Keras' own; None where nothing is needed (PyTorch)."""

    def install_first_batch_hook(
        self, model: Any, first_step: int, deliver: Callable[[Any, Any, Any], None]
    ) -> InstalledCapture:
        """Have the training step that starts at ``first_step`` steps done call
        ``deliver(x, y, sample_weight)`` with its batch as numpy arrays (the gap's default
        probe batch)."""

    def use_instrumented_train_function(self, model: Any) -> None:
        """After installing hooks and wrappers: make ``model.train_function`` one that runs
        them (called before the fit's first step, and again when a hook is added later)."""

    def restore_train_function(self, model: Any) -> None:
        """At the end of the fit, after uninstalling: give ``model`` back a train function
        without the hooks (on JAX Keras' own, as compiled before)."""

    def install_host_capture(self, layer: Any, record: HostRecord, due: Any) -> InstalledCapture:
        """Wrap ``layer``'s ``_moments`` so that it calls ``record`` in training steps ``due``
        (a ``DueSteps``) says will be logged, and returns what the original returned.
        ``DueSteps()`` (a custom loop): in every training-mode call, traced or eager, with
        the step None (the record reads its clock)."""

    def read_values(
        self, model: Any, variables: Sequence[Any], state: Optional[Sequence[Any]] = None
    ) -> list[np.ndarray]:
        """The current values of ``model``'s ``variables`` (its weights, optimizer variables).

        ``state``: where a stateless custom loop keeps their values, ``(variables, values)``
        pairs, read instead of those variables (JAX; None: Keras' own state in ``fit``, else
        the variables)."""

    def settle(self) -> None:
        """Wait until every ``HostRecord`` call of the steps run so far has happened."""

    def sync_variables(self, model: Any) -> None:
        """Bring ``model``'s variables up to date for an eager call (JAX: ``jax_state_sync``)."""

    def probe_function(self, function: Callable) -> Callable:
        """``function``, pure in its arguments (the gap probe's passes over the variables'
        values), as this backend runs it: compiled once on JAX (``jax.jit``), eagerly without
        autograd on PyTorch."""

    def inference_call(self, model: Any, x: Any) -> Any:
        """``model(x, training=False)`` run eagerly on up-to-date variables, without gradient
        tracking (precise statistics); changes no variable."""
