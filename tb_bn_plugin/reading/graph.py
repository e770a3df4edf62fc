"""Reading a run's stored graph, or its step-functions description, through the data provider.

``graph_versions`` lists the runs that have either (what the graph view
shows), ``read_graph_or_step_functions`` reads what a run has, the stored
graph winning; the plugin and ``tb-bn report`` both read graphs through them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from google.protobuf import message
from tensorboard.compat.proto import graph_pb2
from tensorboard.data import provider as tb_provider
from tensorboard.plugins.graph import metadata as graph_metadata

from tb_bn_plugin import metadata
from tb_bn_plugin.graph.load import GraphLoadError
from tb_bn_plugin.reading import decode
from tb_bn_plugin.reading.provider import ExperimentSource, read_tensors
from tb_bn_plugin.reading.tags import list_tags
from tb_bn_plugin.series import StepFunctions


def read_run_graph(
    data_provider: tb_provider.DataProvider, ctx: Any, experiment_id: str, run: str
) -> graph_pb2.GraphDef | None:
    """The graph stored for ``run`` (as the Graphs plugin reads it), or ``None``.

    Raises :class:`GraphLoadError` when the stored blob is not a ``GraphDef``.
    """
    sequences = data_provider.read_blob_sequences(
        ctx,
        experiment_id=experiment_id,
        plugin_name=graph_metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=[graph_metadata.RUN_GRAPH_NAME]),
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


def read_step_functions(source: ExperimentSource, run: str) -> StepFunctions | None:
    """The latest step-functions description of ``run`` (a JAX or PyTorch run), or ``None``.

    Raises ``ValueError`` (or ``KeyError``/``TypeError``) for data that does not fit the layout.
    """
    tags, _ = list_tags(source, [run], [metadata.step_functions_tag()])
    infos = [info for info in tags.get(run, ()) if info.kind == metadata.KIND_STEP_FUNCTIONS]
    if not infos:
        return None
    data = read_tensors(source, {run: [infos[0].tag]})
    return decode.step_functions(infos[0], data.get(run, {}).get(infos[0].tag, []))


def read_graph_or_step_functions(
    source: ExperimentSource, run: str
) -> graph_pb2.GraphDef | StepFunctions | None:
    """What the graph view shows for ``run``: its stored graph, else (a JAX or PyTorch run) its
    step-functions description, else ``None``.

    Raises :class:`GraphLoadError` when the stored blob is not a ``GraphDef``. A
    step-functions description that does not fit its layout reads as ``None``:
    ``load.load_runs`` lists it as one of the run's errors.
    """
    graph = read_run_graph(source.provider, source.ctx, source.experiment_id, run)
    if graph is not None:
        return graph
    try:
        return read_step_functions(source, run)
    except (ValueError, KeyError, TypeError):
        return None


def graph_versions(
    source: ExperimentSource, runs: Iterable[str] | None = None
) -> dict[str, Hashable]:
    """Runs (all, or those of ``runs``) with a stored run graph (what ``read_run_graph``
    reads) or, trained on JAX or PyTorch, a step-functions description
    (``read_step_functions``), what the graph view shows: run -> its version.

    The version (latest step and wall time) changes when either is written again.
    """
    listing = source.provider.list_blob_sequences(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=graph_metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=[graph_metadata.RUN_GRAPH_NAME]),
    )
    described = source.provider.list_tensors(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=[metadata.step_functions_tag()]),
    )
    return {
        run: (tag, series.max_step, series.max_wall_time)
        for listed, wanted in (
            (described, metadata.step_functions_tag()),
            (listing, graph_metadata.RUN_GRAPH_NAME),  # a stored graph wins
        )
        for run, tags in listed.items()
        for tag, series in tags.items()
        if tag == wanted
    }
