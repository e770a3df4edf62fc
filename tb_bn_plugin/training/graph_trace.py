"""Tracing a Keras 3 model's training and inference steps into one ``GraphDef``.

The graph view (``graph``) analyses the result like any other graph: the two
steps are separately traced functions, ``separate_functions`` sites.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tensorboard.compat.proto import graph_pb2

logger = logging.getLogger(__name__)

TRAIN_STEP_SCOPE = "train_step"
INFERENCE_STEP_SCOPE = "inference_step"
VARIABLE_SCOPE = "variables"


def trace_model_graph(
    model: Any,
    input_signature: Sequence[Any] | None = None,
    target_signature: Any | None = None,
    train_step: bool = True,
) -> graph_pb2.GraphDef:
    """One ``GraphDef`` holding a Keras 3 model's training and inference steps.

    Traces two concrete functions without running them, so no variable is
    assigned: ``train_step`` is the model's real ``train_step`` (forward pass,
    gradients, optimizer and BatchNorm updates) when the model is compiled and
    the step traces with ``target_signature`` (default: the model outputs'
    shapes and dtypes), otherwise the forward pass with ``training=True``;
    ``inference_step`` is the forward pass with ``training=False``. The
    returned graph calls both from nodes under ``train_step/`` and
    ``inference_step/``; the function library holds their bodies. Captured
    variables appear as placeholders named ``variables/<variable path>``.

    ``input_signature`` is a list of ``tf.TensorSpec`` (default: from
    ``model.inputs``); a single spec passes a tensor, several pass a list.
    ``train_step=False`` always uses the forward pass with ``training=True``
    (no gradient or optimizer ops: a much smaller graph with the same
    BatchNorm sites and updates).
    """
    import tensorflow as tf

    specs = list(input_signature) if input_signature is not None else _input_specs(model)
    pack = (lambda flat: flat[0]) if len(specs) == 1 else list

    def inference_step(*inputs):
        return model(pack(inputs), training=False)

    def forward_train_step(*inputs):
        return model(pack(inputs), training=True)

    train_fn, train_specs = (
        _traceable_train_step(model, specs, target_signature, pack) if train_step else (None, specs)
    )
    if train_fn is None:
        train_fn, train_specs = tf.function(forward_train_step), specs
    inference_fn = tf.function(inference_step)

    def steps(*flat):
        with tf.name_scope(TRAIN_STEP_SCOPE):
            train_outputs = train_fn(*flat[: len(train_specs)])
        with tf.name_scope(INFERENCE_STEP_SCOPE):
            inference_outputs = inference_fn(*flat[: len(specs)])
        return train_outputs, inference_outputs

    concrete = tf.function(steps).get_concrete_function(*_all_specs(specs, train_specs))
    graph_def = graph_pb2.GraphDef.FromString(concrete.graph.as_graph_def().SerializeToString())
    _name_captured_variables(graph_def, concrete.graph.captures, model)
    return graph_def


def _input_specs(model: Any) -> list[Any]:
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"cannot tell the inputs of {type(model).__name__}: build it on a keras.Input "
            "or pass input_signature=[tf.TensorSpec(...)]"
        )
    return [
        tf.TensorSpec(tuple(x.shape), x.dtype, name=_spec_name(x, i)) for i, x in enumerate(inputs)
    ]


def _spec_name(tensor: Any, index: int) -> str:
    name = getattr(tensor, "name", "") or f"input_{index}"
    return name.split(":")[0].replace("/", "_")


def _all_specs(specs: Sequence[Any], train_specs: Sequence[Any]) -> list[Any]:
    """Inputs of the combined function: the model inputs, then any targets."""
    return list(specs) + list(train_specs[len(specs) :])


def _traceable_train_step(
    model: Any, specs: Sequence[Any], target_signature: Any | None, pack: Callable[[Any], Any]
) -> tuple[Any | None, Sequence[Any]]:
    """The model's ``train_step`` as a ``tf.function`` and its input specs, if it traces."""
    import tensorflow as tf

    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        return None, specs
    targets = list(target_signature) if target_signature is not None else _output_specs(model)
    if not targets:
        return None, specs
    pack_targets = (lambda flat: flat[0]) if len(targets) == 1 else list
    if not model.optimizer.built:
        # What fit() does before its first step; creates zero slots, assigns no weights.
        model.optimizer.build(model.trainable_variables)

    def train_step(*flat):
        inputs, target = flat[: len(specs)], flat[len(specs) :]
        # The class's step: wrappers a callback put on the instance stay out of the graph.
        return type(model).train_step(model, (pack(inputs), pack_targets(target)))

    function = tf.function(train_step)
    train_specs = list(specs) + targets
    try:
        function.get_concrete_function(*train_specs)
    except Exception as err:  # a custom train_step can fail to trace in any way
        logger.info("train_step did not trace (%s); using the forward pass", err)
        return None, specs
    return function, train_specs


def _output_specs(model: Any) -> list[Any]:
    import tensorflow as tf

    outputs = getattr(model, "outputs", None) or []
    return [
        tf.TensorSpec(tuple(y.shape), y.dtype, name=f"target_{index}")
        for index, y in enumerate(outputs)
    ]


def _name_captured_variables(graph_def: graph_pb2.GraphDef, captures: Any, model: Any) -> None:
    """Rename the placeholders of captured variables to ``variables/<path>``."""
    optimizer = getattr(model, "optimizer", None)
    variables = [
        *model.variables,
        *(optimizer.variables if optimizer is not None else ()),
        *getattr(model, "metrics_variables", ()),
    ]
    paths = {}
    for variable in variables:
        handle = getattr(getattr(variable, "value", variable), "handle", None)
        if handle is not None:
            paths[id(handle)] = getattr(variable, "path", variable.name)
    renames: dict[str, str] = {}
    taken = {node.name for node in graph_def.node}
    for external, internal in captures:
        path = paths.get(id(external))
        if path is None:
            continue
        new_name = f"{VARIABLE_SCOPE}/{path}"
        while new_name in taken:
            new_name += "_"
        taken.add(new_name)
        renames[internal.op.name] = new_name
    for node in graph_def.node:
        node.name = renames.get(node.name, node.name)
        for index, ref in enumerate(node.input):
            control = ref.startswith("^")
            name, sep, port = ref.lstrip("^").partition(":")
            if name in renames:
                node.input[index] = ("^" if control else "") + renames[name] + sep + port
