"""Getting graphs in and out of TensorBoard runs for the BatchNorm graph view.

* :func:`load_graph_def` reads a frozen or exported ``GraphDef`` (binary or
  text protobuf), a ``MetaGraphDef`` or a SavedModel directory.
* :func:`trace_model_graph` traces a Keras 3 model's training step and
  inference step as two concrete functions and returns one ``GraphDef`` that
  calls both (nodes ``train_step/...`` and ``inference_step/...``).
* :func:`write_graph` stores a ``GraphDef`` as a run's graph
  (``tf.summary.graph``), which TensorBoard's Graphs tab shows as well.
* :func:`read_run_graph` reads it back through TensorBoard's data provider.

The analysis itself (``graph_analysis``) is pure and not stored: the plugin
calls :func:`read_run_graph` and then ``analyze_graph``/``report_graph`` on the
stored run graph when asked. TensorFlow is imported only by the functions that
need it, so the plugin can import this module cheaply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import message, text_format
from tensorboard.compat.proto import graph_pb2, meta_graph_pb2
from tensorboard.data import provider
from tensorboard.plugins.graph import metadata as graph_metadata

logger = logging.getLogger(__name__)

TRAIN_STEP_SCOPE = "train_step"
INFERENCE_STEP_SCOPE = "inference_step"
VARIABLE_SCOPE = "variables"

# SavedModel meta graphs, most useful for the analysis first: a training graph
# shows whether the moving-average updates are wired.
_PREFERRED_TAGS = ("train", "serve")
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class GraphLoadError(ValueError):
    """A path that does not hold a TensorFlow graph; the message names the path."""


def load_graph_def(path: str | os.PathLike) -> graph_pb2.GraphDef:
    """The ``GraphDef`` (with its function library) stored at ``path``.

    ``path`` is a binary or text ``GraphDef`` (``.pb``/``.pbtxt``), a
    ``MetaGraphDef`` (``.meta``) or a SavedModel directory (or its
    ``saved_model.pb``); for a SavedModel the meta graph tagged ``train`` is
    preferred, then ``serve``, then the first. Raises :class:`GraphLoadError`.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "saved_model.pb", path / "saved_model.pbtxt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise GraphLoadError(f"{path}: directory is not a SavedModel (no saved_model.pb)")
        path = found
    try:
        data = path.read_bytes()
    except OSError as err:
        raise GraphLoadError(f"{path}: cannot read: {err.strerror or err}") from None
    if not data:
        raise GraphLoadError(f"{path}: file is empty, not a graph")
    graph = _parse_graph(data, saved_model_first=path.name.startswith("saved_model."))
    if graph is None:
        hint = ""
        if path.suffix.lower() in _KERAS_SUFFIXES:
            hint = "; for a Keras model file, load the model and use trace_model_graph"
        raise GraphLoadError(
            f"{path}: not a TensorFlow graph (expected a binary or text GraphDef, "
            f"MetaGraphDef or SavedModel){hint}"
        )
    return graph


def _parse_graph(data: bytes, saved_model_first: bool) -> graph_pb2.GraphDef | None:
    """Try each container format; binary parsing is lenient, so results are checked."""
    extractors: list[Callable[[bytes], Iterator[graph_pb2.GraphDef]]] = [
        _graphs_from_graph_def,
        _graphs_from_meta_graph,
        _graphs_from_saved_model,
    ]
    if saved_model_first:
        extractors.reverse()
    for extract in extractors:
        for graph in extract(data):
            if _plausible(graph):
                return graph
    return None


def _graphs_from_graph_def(data: bytes) -> Iterator[graph_pb2.GraphDef]:
    yield from _parses(graph_pb2.GraphDef, data)


def _graphs_from_meta_graph(data: bytes) -> Iterator[graph_pb2.GraphDef]:
    for meta_graph in _parses(meta_graph_pb2.MetaGraphDef, data):
        yield meta_graph.graph_def


def _graphs_from_saved_model(data: bytes) -> Iterator[graph_pb2.GraphDef]:
    from tensorflow.core.protobuf import saved_model_pb2

    for saved_model in _parses(saved_model_pb2.SavedModel, data):
        meta_graphs = list(saved_model.meta_graphs)
        for tag in _PREFERRED_TAGS:
            tagged = [m for m in meta_graphs if tag in m.meta_info_def.tags]
            if tagged:
                meta_graphs = tagged
                break
        if meta_graphs:
            # TensorFlow's proto class to TensorBoard's, like every other path.
            yield graph_pb2.GraphDef.FromString(meta_graphs[0].graph_def.SerializeToString())


def _parses(proto_class: Any, data: bytes) -> Iterator[Any]:
    """Readings of ``data`` as a text, then a binary ``proto_class``.

    Text first: binary parsing is lenient enough to read text as unknown
    fields, while binary data essentially never parses as text.
    """
    try:
        text = text_format.Parse(data.decode("utf-8"), proto_class())
    except (UnicodeDecodeError, text_format.ParseError):
        text = None
    if text is not None:
        yield text
    binary = proto_class()
    try:
        binary.ParseFromString(data)
    except message.DecodeError:
        return
    yield binary


def _plausible(graph: graph_pb2.GraphDef) -> bool:
    """Whether a parse produced a real graph rather than misread fields."""
    if not graph.node and not graph.library.function:
        return False
    return all(node.name and node.op for node in graph.node) and all(
        function.signature.name for function in graph.library.function
    )


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


def write_graph(graph_def: Any, writer_or_logdir: Any) -> None:
    """Write ``graph_def`` as the run graph of a ``tf.summary`` writer or log directory.

    TensorBoard shows it in the Graphs tab and the BN plugin analyses it. Must
    be called eagerly (not inside a ``tf.function``).
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2 as tf_graph_pb2

    if not isinstance(graph_def, tf_graph_pb2.GraphDef):
        graph_def = tf_graph_pb2.GraphDef.FromString(graph_def.SerializeToString())
    owns_writer = isinstance(writer_or_logdir, (str, os.PathLike))
    writer = (
        tf.summary.create_file_writer(os.fspath(writer_or_logdir))
        if owns_writer
        else writer_or_logdir
    )
    with writer.as_default(), tf.summary.record_if(True):
        tf.summary.graph(graph_def)
    writer.flush()
    if owns_writer:
        writer.close()


def read_run_graph(
    data_provider: provider.DataProvider, ctx: Any, experiment_id: str, run: str
) -> graph_pb2.GraphDef | None:
    """The graph stored for ``run`` (as the Graphs plugin reads it), or ``None``.

    Raises :class:`GraphLoadError` when the stored blob is not a ``GraphDef``.
    """
    sequences = data_provider.read_blob_sequences(
        ctx,
        experiment_id=experiment_id,
        plugin_name=graph_metadata.PLUGIN_NAME,
        run_tag_filter=provider.RunTagFilter(runs=[run], tags=[graph_metadata.RUN_GRAPH_NAME]),
        downsample=1,
    )
    data = sequences.get(run, {}).get(graph_metadata.RUN_GRAPH_NAME, ())
    if not data or not data[-1].values:
        return None
    raw = data_provider.read_blob(ctx, blob_key=data[-1].values[0].blob_key)
    try:
        return graph_pb2.GraphDef.FromString(raw)
    except message.DecodeError as err:
        raise GraphLoadError(f"run {run!r}: stored graph is not a GraphDef: {err}") from None
