"""The ``diagnostics`` route: the findings of one run or of all runs."""

from __future__ import annotations

from typing import Any, Optional

from tb_bn_plugin import diagnostics
from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.plugin.routes.runs import overview_runs
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.provider import ExperimentSource


def diagnostics_impl(
    source: ExperimentSource, run: Optional[str] = None, cache: Optional[SeriesCache] = None
) -> dict[str, Any]:
    """Findings of one run or of all runs, from the same samples as the overview."""
    runs = overview_runs(source, cache, [run] if run is not None else None)
    if run is not None and run not in runs:
        check_run(source, run)
    return {
        "diagnostics": [
            {"run": name, **finding.to_json()}
            for name, run_data in sorted(runs.items())
            for finding in diagnostics.diagnose(run_data)
        ]
    }
