"""Loading whole runs (``load_runs``) and the public ``read_stats``/``read_gap``.

``load_runs`` (``iter_runs`` one run at a time) is a pipeline of named
steps: ``plan`` which tags hold what, decide each layer's ``sampling``, take
what the ``cache`` already holds, ``read_grouped`` the rest (per run, one
provider call per sampling), and ``assemble`` each run's ``RunData`` by
decoding (``decode``). Data that cannot be decoded becomes a line in
``RunData.errors``, never an exception.

Over the Rust data server, runs are read ``READ_AHEAD`` at a time in
background threads while the caller decodes (and uses) the run before: a
provider call waits on the server (another process, another core) without
holding the GIL, so reading 10 runs costs about the longer of the server's
work and this process's, not their sum. Over TensorBoard's Python
multiplexer a read is Python work in this process, and threads would only
contend for the GIL: there reads run inline (``reader_pool``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.reading import decode
from tb_bn_plugin.reading.cache import SeriesCache, cache_key
from tb_bn_plugin.reading.provider import (
    ALL_SAMPLES,
    ExperimentSource,
    TensorEvents,
    open_logdir,
    read_tensors,
    reads_in_process,
)
from tb_bn_plugin.reading.tags import TagInfo, list_tags
from tb_bn_plugin.series import GapSeries, LayerConfig, LayerSeries, RunData

StatSeries = tuple[np.ndarray, np.ndarray]
# Events read, per run and tag.
Data = dict[str, dict[str, TensorEvents]]
# A layer's place: (run, layer path).
Key = tuple[str, str]

_LAYER_KINDS = (
    metadata.KIND_LAYER_SUMMARY,
    metadata.KIND_LAYER_CHANNELS,
    metadata.KIND_LAYER_REPLICAS,
    metadata.KIND_LAYER_CALLS,
)
# Layer payloads skipped without ``with_channels``.
_PER_CHANNEL_KINDS = (
    metadata.KIND_LAYER_CHANNELS,
    metadata.KIND_LAYER_REPLICAS,
    metadata.KIND_LAYER_CALLS,
)
_LAYER_SUFFIXES = (
    metadata.SUFFIX_SUMMARY,
    metadata.SUFFIX_CHANNELS,
    metadata.SUFFIX_REPLICAS,
    metadata.SUFFIX_CALLS,
    metadata.SUFFIX_EMA_ERROR,
)
# What a decoder raises for data that does not fit its layout.
_UNREADABLE = (ValueError, KeyError, TypeError)
# Runs read at once (each a provider call in its own thread) ahead of the one being decoded.
READ_AHEAD = 4


class _Deferred(futures.Future):
    """A call run when its result is first asked for, in the asking thread."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self._call: Optional[tuple[Callable, tuple, dict]] = (fn, args, kwargs)

    def result(self, timeout: Optional[float] = None):
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as err:  # met at result(), as from a thread
                self.set_exception(err)
        return super().result(timeout)


class InlineExecutor(futures.Executor):
    """An executor without threads: each call runs when its result is first asked for, in
    the caller's thread (so, as with a thread pool, a caller that stops early leaves the
    calls it did not ask for undone)."""

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        return _Deferred(fn, args, kwargs)


def reader_pool(source: ExperimentSource, workers: int, name: str) -> futures.Executor:
    """Where reads from ``source`` run: ``workers`` threads named ``name`` when its provider
    waits on another process (the Rust data server), else inline.

    Reading TensorBoard's Python multiplexer is Python work under the GIL,
    which threads only contend for: a cold overview at 10 runs x 100 layers x
    5,000 steps took 1.0-3.4 s CPU with 4 reading threads against 0.7-1.4 s
    inline (same process, alternating, 5 pairs).
    """
    if reads_in_process(source.provider):
        return InlineExecutor()
    return futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


def load_runs(
    source: ExperimentSource,
    runs: Optional[Iterable[str]] = None,
    layers: Optional[Iterable[str]] = None,
    with_channels: bool = True,
    downsample: int = ALL_SAMPLES,
    cache: Optional[SeriesCache] = None,
    channel_downsample: Optional[int | Callable[[LayerConfig], int]] = None,
    with_gap: bool = True,
) -> dict[str, RunData]:
    """Every (or the selected) run's layer series, train/inference gap and EMA error.

    Args:
      runs / layers: restrict to these run names / layer paths.
      with_channels: also read per-channel snapshots (the bulk of the data).
      downsample: at most this many events per tag (the provider keeps the
        last; see ``MultiplexerProvider`` for how each loader samples).
      cache: reuse layer series parsed before from the same tags at the same max_step.
      channel_downsample: at most this many per-channel snapshots per layer,
        or a function of the layer's config giving it (default: ``downsample``).
      with_gap: also read the train/inference gap.
    """
    return dict(
        iter_runs(
            source, runs, layers, with_channels, downsample, cache, channel_downsample, with_gap
        )
    )


def iter_runs(
    source: ExperimentSource,
    runs: Optional[Iterable[str]] = None,
    layers: Optional[Iterable[str]] = None,
    with_channels: bool = True,
    downsample: int = ALL_SAMPLES,
    cache: Optional[SeriesCache] = None,
    channel_downsample: Optional[int | Callable[[LayerConfig], int]] = None,
    with_gap: bool = True,
) -> Iterator[tuple[str, RunData]]:
    """``load_runs``' (run, ``RunData``) pairs in run order, each as soon as it is decoded.

    Each run is listed, planned and read on its own, up to ``READ_AHEAD`` runs
    at once in background threads where that helps (``reader_pool``), so a
    caller that works on each run (the overview's diagnostics) overlaps the
    reads too, and the first run arrives after its own listing, not the whole
    experiment's. Same arguments as ``load_runs``.
    """
    wanted = set(layers) if layers is not None else None
    names = sorted(set(runs)) if runs is not None else _run_names(source)

    def read_run(run: str) -> tuple[Plan, dict[Key, tuple[int, int]], dict[Key, LayerSeries], Data]:
        plan = Plan.of(source, [run], wanted, with_channels, with_gap)
        sampling = plan.sampling(downsample, channel_downsample)
        cached = plan.cached(sampling, cache)
        return (
            plan,
            sampling,
            cached,
            read_grouped(source, plan.reads(sampling, cached, downsample)),
        )

    pool = reader_pool(source, READ_AHEAD, "bn_read")
    try:
        pending = [(run, pool.submit(read_run, run)) for run in names]
        for run, reading in pending:
            plan, sampling, cached, data = reading.result()
            if run in plan.runs():
                yield run, assemble(run, plan, data.get(run, {}), sampling, cached, wanted, cache)
    finally:
        # A caller that stops early (an error) does not wait for reads it will not use.
        pool.shutdown(wait=False, cancel_futures=True)


def _run_names(source: ExperimentSource) -> list[str]:
    """Every run of the experiment, sorted (``Plan`` tells which have BN Internals data)."""
    listed = source.provider.list_runs(source.ctx, experiment_id=source.experiment_id)
    return sorted(run.run_name for run in listed)


@dataclasses.dataclass
class Plan:
    """The BN Internals tags to read, by what they hold.

    Attributes:
      layers: run -> layer path -> kind (``KIND_LAYER_*``) -> tag.
      gap: run -> its gap tag.
      ema_weights_gap: run -> its ema_weights_gap tag.
      ema_error: run -> layer path -> its ema_error tag.
      step_functions: run -> its step_functions tag.
      errors: run -> tags whose metadata could not be read.
    """

    layers: dict[str, dict[str, dict[str, TagInfo]]]
    gap: dict[str, TagInfo]
    ema_weights_gap: dict[str, TagInfo]
    ema_error: dict[str, dict[str, TagInfo]]
    step_functions: dict[str, TagInfo]
    errors: dict[str, list[str]]

    @classmethod
    def of(
        cls,
        source: ExperimentSource,
        runs: Optional[Iterable[str]],
        wanted: Optional[set[str]],
        with_channels: bool,
        with_gap: bool,
    ) -> Plan:
        """The tags of ``runs`` (of the ``wanted`` layers only, if given), sorted by kind."""
        tag_filter = None
        if wanted is not None:
            tag_filter = [metadata.layer_tag(p, k) for p in wanted for k in _LAYER_SUFFIXES]
            tag_filter.append(metadata.step_functions_tag())
            if with_gap:
                tag_filter += [metadata.gap_tag(), metadata.ema_weights_gap_tag()]
        tags, errors = list_tags(source, runs, tag_filter)
        plan = cls(
            layers={}, gap={}, ema_weights_gap={}, ema_error={}, step_functions={}, errors=errors
        )
        for run, infos in tags.items():
            for info in infos:
                if info.kind in (metadata.KIND_GAP, metadata.KIND_EMA_WEIGHTS_GAP):
                    if with_gap:
                        gaps = plan.gap if info.kind == metadata.KIND_GAP else plan.ema_weights_gap
                        gaps[run] = info
                    continue
                if info.kind == metadata.KIND_STEP_FUNCTIONS:
                    plan.step_functions[run] = info
                    continue
                if info.kind == metadata.KIND_EMA_ERROR:
                    path = str(info.content.get("layer_path"))
                    plan.ema_error.setdefault(run, {})[path] = info
                    continue
                layer = info.layer
                if layer is None or (wanted is not None and layer.path not in wanted):
                    continue
                if info.kind in _PER_CHANNEL_KINDS and not with_channels:
                    continue
                if info.kind in _LAYER_KINDS:
                    plan.layers.setdefault(run, {}).setdefault(layer.path, {})[info.kind] = info
        return plan

    def runs(self) -> list[str]:
        """The runs ``load_runs`` answers for: those with layer or gap tags or metadata errors."""
        return sorted(set(self.layers) | set(self.gap) | set(self.errors))

    def version(self, run: str) -> tuple[tuple[str, Optional[int]], ...]:
        """``RunData.version`` of ``run``: (tag, max_step) of each of its planned tags, sorted."""
        infos = [
            *(info for by_kind in self.layers.get(run, {}).values() for info in by_kind.values()),
            *(tags[run] for tags in (self.gap, self.ema_weights_gap) if run in tags),
            *self.ema_error.get(run, {}).values(),
        ]
        return tuple(sorted((info.tag, info.max_step) for info in infos))

    def sampling(
        self, downsample: int, channel_downsample: Optional[int | Callable[[LayerConfig], int]]
    ) -> dict[Key, tuple[int, int]]:
        """(summary events, per-channel snapshots) to read of each layer that has a summary."""
        if channel_downsample is None:
            channel_downsample = downsample
        snapshots_of = (
            channel_downsample if callable(channel_downsample) else (lambda _: channel_downsample)
        )
        return {
            (run, path): (downsample, snapshots_of(by_kind[metadata.KIND_LAYER_SUMMARY].layer))
            for run, by_path in self.layers.items()
            for path, by_kind in by_path.items()
            if metadata.KIND_LAYER_SUMMARY in by_kind
        }

    def cached(
        self, sampling: dict[Key, tuple[int, int]], cache: Optional[SeriesCache]
    ) -> dict[Key, LayerSeries]:
        """The layers' series ``cache`` holds for exactly these tags and sampling."""
        if cache is None:
            return {}
        found = {}
        for (run, path), sample in sampling.items():
            hit = cache.get(cache_key(run, self.layers[run][path].values(), sample))
            if hit is not None:
                found[run, path] = hit
        return found

    def reads(
        self,
        sampling: dict[Key, tuple[int, int]],
        cached: dict[Key, LayerSeries],
        downsample: int,
    ) -> dict[int, dict[str, list[str]]]:
        """What to read: downsample -> run -> tags, one provider call per downsample."""
        reads: dict[int, dict[str, list[str]]] = {}

        def want(run: str, tag: str, sample: int) -> None:
            reads.setdefault(sample, {}).setdefault(run, []).append(tag)

        for run, by_path in self.layers.items():
            for path, by_kind in by_path.items():
                if (run, path) in cached:
                    continue
                for kind, info in by_kind.items():
                    snapshots = kind == metadata.KIND_LAYER_CHANNELS and (run, path) in sampling
                    want(run, info.tag, sampling[run, path][1] if snapshots else downsample)
        for run, info in [*self.gap.items(), *self.ema_weights_gap.items()]:
            want(run, info.tag, downsample)
        for run, info in self.step_functions.items():
            want(run, info.tag, downsample)
        for run, by_path in self.ema_error.items():
            for info in by_path.values():
                want(run, info.tag, downsample)
        return reads


def read_grouped(source: ExperimentSource, reads: dict[int, dict[str, list[str]]]) -> Data:
    """The events of ``reads`` (downsample -> run -> tags), per run and tag."""
    data: Data = {}
    for sample, run_tags in reads.items():
        for run, by_tag in read_tensors(source, run_tags, sample).items():
            data.setdefault(run, {}).update(by_tag)
    return data


def assemble(
    run: str,
    plan: Plan,
    data: dict[str, TensorEvents],
    sampling: dict[Key, tuple[int, int]],
    cached: dict[Key, LayerSeries],
    wanted: Optional[set[str]],
    cache: Optional[SeriesCache],
) -> RunData:
    """One run's ``RunData`` from its events (``data``: tag -> events) and cached layers."""
    run_data = RunData(
        run=run, layers={}, errors=list(plan.errors.get(run, [])), version=plan.version(run)
    )
    for path, info in plan.ema_error.get(run, {}).items():
        try:
            run_data.ema_error[path] = decode.ema_error_series(info, data[info.tag])
        except _UNREADABLE:
            run_data.errors.append(f"ema_error of layer {path!r}: unexpected layout")
    for field, tags in (("gap", plan.gap), ("ema_weights_gap", plan.ema_weights_gap)):
        if run in tags:
            tag = tags[run]
            try:
                setattr(run_data, field, decode.gap_series(tag, data[tag.tag], wanted))
            except _UNREADABLE as err:
                run_data.errors.append(f"{field}: unreadable data ({err})")
    if run in plan.step_functions:
        tag = plan.step_functions[run]
        try:
            run_data.step_functions = decode.step_functions(tag, data[tag.tag])
        except _UNREADABLE as err:
            run_data.errors.append(f"step_functions: unreadable data ({err})")
    for path, by_kind in plan.layers.get(run, {}).items():
        if (run, path) in cached:
            run_data.layers[path] = cached[run, path]
            continue
        series = _layer(path, by_kind, data, run_data.errors)
        if series is None:
            continue
        run_data.layers[path] = series
        if cache is not None:
            cache.put(cache_key(run, by_kind.values(), sampling[run, path]), series)
    return run_data


def _layer(
    path: str,
    by_kind: dict[str, TagInfo],
    data: dict[str, TensorEvents],
    errors: list[str],
) -> Optional[LayerSeries]:
    """One layer's series, or ``None`` with a line added to ``errors``."""
    summary = by_kind.get(metadata.KIND_LAYER_SUMMARY)
    if summary is None:
        errors.append(f"layer {path!r} has per-channel data but no summary records")
        return None
    channels = by_kind.get(metadata.KIND_LAYER_CHANNELS)
    replicas = by_kind.get(metadata.KIND_LAYER_REPLICAS)
    calls = by_kind.get(metadata.KIND_LAYER_CALLS)
    try:
        return decode.layer_series(
            summary,
            data[summary.tag],
            channels,
            data.get(channels.tag) if channels else None,
            replicas,
            data.get(replicas.tag) if replicas else None,
            calls,
            data.get(calls.tag) if calls else None,
        )
    except _UNREADABLE as err:
        errors.append(f"layer {path!r}: unreadable data ({err})")
        return None


def logged_steps(source: ExperimentSource, paths: dict[str, str]) -> dict[str, np.ndarray]:
    """Every logged step of one layer per run (``paths``: run -> layer path), in order.

    Reads the layers' summary series in full (one provider call) and decodes
    no values: the writers log all layers of a run at the same steps, so this
    counts a run's logged steps.
    """
    tags = {run: [metadata.layer_tag(path, metadata.SUFFIX_SUMMARY)] for run, path in paths.items()}
    return {
        run: decode.dedupe_steps(by_tag[tags[run][0]]).steps
        for run, by_tag in read_tensors(source, tags).items()
        if len(by_tag[tags[run][0]])
    }


# -- the public API ------------------------------------------------------------------------


def read_stats(logdir: str) -> dict[str, dict[str, dict[str, StatSeries]]]:
    """Per-channel statistics of every run and layer under ``logdir``.

    Returns ``{run: {layer_path: {stat: (steps, values)}}}`` with stats among
    ``batch_mean``, ``batch_variance``, ``moving_mean``, ``moving_variance``,
    ``gamma``, ``beta`` (gamma/beta only where the layer has them); ``steps`` is
    a 1-D int array of every step with a per-channel snapshot and ``values`` a
    (steps, channels) float array. Batch statistics are NaN at steps where the
    layer did not normalise with batch statistics. Reads through TensorBoard's
    event-file loading and keeps every logged step.

    A layer called several times in one training step (a shared layer) also has
    ``call_count``, ``call_batch_mean`` and ``call_batch_variance``: ``steps`` the
    (P,) trained snapshot steps, values (P, K) and (P, K, C) for its K calls in the
    order the step made them (call 0's are ``batch_mean``/``batch_variance``).
    """
    runs = load_runs(open_logdir(logdir))
    return {
        run: {path: _layer_stats(series) for path, series in run_data.layers.items()}
        for run, run_data in runs.items()
        if run_data.layers
    }


def _layer_stats(series: LayerSeries) -> dict[str, StatSeries]:
    """``read_stats``' entry for one layer: its snapshots, and its calls' if it has several."""
    stats = {
        stat: (series.channel_steps.copy(), values) for stat, values in series.channels.items()
    }
    calls = series.calls
    if calls is not None:
        stats["call_count"] = (calls.steps.copy(), calls.count)
        stats["call_batch_mean"] = (calls.steps.copy(), calls.mean)
        stats["call_batch_variance"] = (calls.steps.copy(), calls.variance)
    return stats


def read_gap(logdir: str) -> dict[str, GapSeries]:
    """The train/inference gap logged under ``logdir``: ``{run: GapSeries}`` for runs that have one.

    Every measurement is kept (steps in order); see ``series.GapSeries``.
    """
    runs = load_runs(open_logdir(logdir), with_channels=False)
    return {run: run_data.gap for run, run_data in runs.items() if run_data.gap is not None}
