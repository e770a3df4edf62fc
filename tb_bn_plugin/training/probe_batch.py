"""The probe batch the gap is measured on: given (``probe_data``) or stashed from training.

Owns ``ProbeBatch`` (a fixed ``(x, y, sample_weight)``), ``probe_batch_from_data``
(from the user's arrays) and ``FirstBatchStash``: a wrapper around
``train_step`` that copies at most ``probe_size`` samples of the first
training batch into variables owned by this module, once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tb_bn_plugin.training.compat import flavour_of
from tb_bn_plugin.training.lazy_tf import tf

DEFAULT_PROBE_SIZE = 256


@dataclasses.dataclass
class ProbeBatch:
    """A fixed batch: ``(x, y, sample_weight)`` as (nested) tensors; y/sample_weight may be None."""

    x: Any
    y: Any
    sample_weight: Any

    @property
    def size(self) -> int:
        return int(tf.nest.flatten(self.x)[0].shape[0])


def probe_batch_from_data(data: Any, probe_size: int) -> ProbeBatch:
    """A ``ProbeBatch`` of the first ``probe_size`` samples of ``(x, y[, sample_weight])``."""
    if not isinstance(data, (tuple, list)) or not 1 <= len(data) <= 3:
        raise TypeError(
            "probe_data must be a tuple (x, y) or (x, y, sample_weight) of arrays or tensors, "
            f"got {type(data).__name__}"
        )
    x, y, sample_weight = (tuple(data) + (None, None))[:3]

    def to_tensor(value: Any) -> Optional[tf.Tensor]:
        if value is None:
            return None
        if (
            isinstance(value, tf.data.Dataset)
            or not hasattr(value, "__len__")
            and not tf.is_tensor(value)
        ):
            raise TypeError(f"probe_data must hold arrays or tensors, got {type(value).__name__}")
        tensor = tf.convert_to_tensor(value)
        if tensor.shape.rank == 0:
            raise ValueError("probe_data arrays need a leading batch dimension")
        return tensor[:probe_size]

    x, y, sample_weight = tf.nest.map_structure(to_tensor, (x, y, sample_weight))
    sizes = {int(t.shape[0]) for t in tf.nest.flatten((x, y, sample_weight)) if t is not None}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"probe_data arrays must have one non-zero number of samples, got {sorted(sizes)}"
        )
    return ProbeBatch(x, y, sample_weight)


class FirstBatchStash:
    """Copies (at most ``probe_size`` samples of) the first training batch into variables.

    ``install`` wraps ``model.train_step`` on the instance; the wrapper adds a
    ``tf.cond`` that copies the batch once (XLA-compatible: fixed-shape,
    zero-padded variables of ``probe_size`` samples). Keras must remake its
    train function afterwards (``make_train_function(force=True)``). Not
    supported (``unsupported`` says why; nothing is stashed): tf.distribute
    strategies, non-dense tensors, inputs with unknown non-batch dimensions.
    """

    def __init__(self, model: Any, probe_size: int) -> None:
        self._model = model
        self.probe_size = probe_size
        self._structure: Any = None
        self._slots: Optional[list[Optional[tf.Variable]]] = None
        self._count: Optional[tf.Variable] = None
        self.unsupported: Optional[str] = None
        if flavour_of(model).explicit_strategy(model) is not None:
            self.unsupported = "the model trains under a tf.distribute strategy"

    def install(self) -> None:
        if self.unsupported is None:
            object.__setattr__(self._model, "train_step", self._wrap())

    def uninstall(self) -> None:
        self._model.__dict__.pop("train_step", None)

    def restash(self) -> None:
        """Stash the first batch of the next training step again (a new ``fit``'s first batch),
        in train functions traced before as well."""
        if self._count is not None:
            self._count.assign(0)

    def probe(self) -> Optional[ProbeBatch]:
        """The stashed batch, or None when nothing was stashed yet."""
        if self._count is None or self.unsupported is not None:
            return None
        n = int(self._count.numpy())
        if n == 0:
            return None
        leaves = [None if v is None else tf.identity(v[:n]) for v in self._slots]
        x, y, sample_weight = tf.nest.pack_sequence_as(self._structure, leaves)
        return ProbeBatch(x, y, sample_weight)

    def _wrap(self):
        original = type(self._model).train_step.__get__(self._model)
        unpack = flavour_of(self._model).unpack_x_y_sample_weight
        stash = self

        def train_step(data):
            x, y, sample_weight = unpack(data)
            flat = tf.nest.flatten((x, y, sample_weight))
            if stash._make_slots((x, y, sample_weight), flat):
                tf.cond(
                    tf.equal(stash._count, 0), lambda: stash._copy(flat), lambda: tf.constant(False)
                )
            return original(data)

        return train_step

    def _make_slots(self, structure: Any, flat: list) -> bool:
        """Create the variables on the first trace; False when the data cannot be stashed."""
        if self.unsupported is not None:
            return False
        if self._slots is not None:
            if len(flat) != len(self._slots) or any(
                (t is None) != (v is None) for t, v in zip(flat, self._slots)
            ):
                self.unsupported = "the training data changed structure between traces"
                return False
            return True
        for t in flat:
            if t is None:
                continue
            if not isinstance(t, tf.Tensor):
                self.unsupported = (
                    f"the training data holds a {type(t).__name__}, not dense tensors"
                )
                return False
            if t.shape.rank is None or t.shape.rank == 0 or not t.shape[1:].is_fully_defined():
                self.unsupported = f"a training input has unknown non-batch dimensions ({t.shape})"
                return False
        with tf.init_scope():
            self._slots = [
                None
                if t is None
                else tf.Variable(
                    tf.zeros([self.probe_size] + t.shape[1:].as_list(), t.dtype),
                    trainable=False,
                    name="bn_probe_stash",
                )
                for t in flat
            ]
            self._count = tf.Variable(0, dtype=tf.int32, trainable=False, name="bn_probe_count")
        self._structure = tf.nest.map_structure(lambda _: 0, structure)
        return True

    def _copy(self, flat: list) -> tf.Tensor:
        present = [t for t in flat if t is not None]
        n = tf.minimum(tf.shape(present[0])[0], self.probe_size)
        for t, slot in zip(flat, self._slots):
            if t is None:
                continue
            part = t[: self.probe_size]
            slot.assign(tf.pad(part, [[0, self.probe_size - n]] + [[0, 0]] * (t.shape.rank - 1)))
        self._count.assign(n)
        return tf.constant(True)
