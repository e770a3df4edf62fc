"""The ``gap`` route: every logged train/inference gap measurement of a run."""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorboard import errors

from tb_bn_plugin import metadata
from tb_bn_plugin.plugin.routes.encoding import json_values
from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.reading.decode import gap_series
from tb_bn_plugin.reading.provider import ExperimentSource, read_tensors
from tb_bn_plugin.reading.tags import list_tags


def gap_impl(source: ExperimentSource, run: str) -> dict[str, Any]:
    """Every logged train/inference gap measurement of ``run`` (empty arrays when none)."""
    tags, tag_errors = list_tags(source, [run], [metadata.gap_tag()])
    gap = None
    if tags.get(run):
        tag = tags[run][0]
        events = read_tensors(source, {run: [tag.tag]})[run][tag.tag]
        try:
            gap = gap_series(tag, events)
        except (ValueError, KeyError, TypeError) as err:
            raise errors.NotFoundError(f"run {run!r} has no readable gap data ({err})") from None
    elif not tag_errors.get(run):
        check_run(source, run)
    if gap is None:
        return {
            "run": run,
            "steps": [],
            "train_loss": [],
            "inference_loss": [],
            "metrics": {},
            "layers": {},
        }
    per_layer = {
        "compound": gap.compound,
        "local": gap.local,
        "local_derived": gap.local_derived,
        "attribution": gap.attribution,
    }
    paths = sorted(set().union(*(by_path.keys() for by_path in per_layer.values())))
    nan = np.full(len(gap.steps), np.nan)
    return {
        "run": run,
        "steps": gap.steps.tolist(),
        "train_loss": json_values(gap.train_loss),
        "inference_loss": json_values(gap.inference_loss),
        "metrics": {
            name: {mode: json_values(v) for mode, v in modes.items()}
            for name, modes in gap.metrics.items()
        },
        "layers": {
            path: {
                field: json_values(by_path.get(path, nan)) for field, by_path in per_layer.items()
            }
            for path in paths
        },
    }
