"""The ``compare`` route: one layer (matched by path) across several runs, for overlays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from tensorboard import errors

from tb_bn_plugin import metadata
from tb_bn_plugin.plugin.routes.layer import summary_json
from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.load import load_runs
from tb_bn_plugin.reading.provider import ExperimentSource, evenly_spaced

# The statistics overlaid across runs: drift first, then what it is made of.
COMPARE_STATS = (
    metadata.MEAN_SHIFT,
    metadata.LOG_VAR_RATIO,
    metadata.BATCH_MEAN,
    metadata.MOVING_MEAN,
    metadata.BATCH_VARIANCE,
    metadata.MOVING_VARIANCE,
)
# Runs one request may overlay (the run selector's colours repeat beyond ten anyway).
MAX_COMPARE_RUNS = 50


def compare_impl(
    source: ExperimentSource,
    layer: str,
    runs: Sequence[str],
    resolution: int,
    cache: Optional[SeriesCache] = None,
) -> dict[str, Any]:
    """Layer ``layer``'s summarised statistics in each of ``runs``, one series per run.

    Reads only that layer's summary records, at most ``resolution`` per run.
    Raises ``errors.InvalidArgumentError`` without runs, with repeated or too
    many runs, and ``errors.NotFoundError`` naming the first run that does
    not exist or has no readable layer ``layer``.
    """
    if not runs:
        raise errors.InvalidArgumentError("missing parameter 'run'")
    if len(set(runs)) != len(runs):
        raise errors.InvalidArgumentError("parameter 'run' repeats a run")
    if len(runs) > MAX_COMPARE_RUNS:
        raise errors.InvalidArgumentError(
            f"at most {MAX_COMPARE_RUNS} runs can be compared, got {len(runs)}"
        )
    loaded = load_runs(
        source,
        runs=runs,
        layers=[layer],
        with_channels=False,
        with_gap=False,
        downsample=resolution,
        cache=cache,
    )
    answer = []
    for run in runs:
        run_data = loaded.get(run)
        series = run_data.layers.get(layer) if run_data is not None else None
        if series is None:
            check_run(source, run)
            raise errors.NotFoundError(f"run {run!r} has no readable layer {layer!r}")
        picked = evenly_spaced(len(series.steps), resolution)
        answer.append(
            {
                "run": run,
                "momentum": series.config.momentum,
                "channels": series.config.channels,
                "steps": series.steps[picked].tolist(),
                "summary": summary_json(series, picked, COMPARE_STATS),
            }
        )
    return {"layer": layer, "runs": answer}
