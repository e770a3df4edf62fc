"""Reading a TensorFlow graph from a file: a frozen or exported ``GraphDef``
(binary or text protobuf), a ``MetaGraphDef`` or a SavedModel directory.

Protos only: TensorFlow is imported just to parse a SavedModel container.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf import message, text_format
from tensorboard.compat.proto import graph_pb2, meta_graph_pb2

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
