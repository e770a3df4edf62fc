"""The fast subset of the diagnostic-accuracy corpus (``benchmarks/accuracy.py``).

Real Keras training on data made by the corpus, read back through
TensorBoard's data path: every expected code fires and no warning or error
fires that is not expected. Covers the codes without a demo scenario
(``inverted-momentum``, ``ema-weights-stale-stats``, ``shared-layer``), issue #12's false alarm
on a converged ResNet at momentum 0.99, and seed 004 under control flow v2.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus():
    spec = importlib.util.spec_from_file_location(
        "accuracy_corpus", os.path.join(ROOT, "benchmarks", "accuracy.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


CORPUS = _corpus()


@pytest.mark.parametrize("name", CORPUS.FAST)
def test_fast_scenario_fires_exactly_what_it_expects(name, tmp_path):
    result = CORPUS.diagnose_scenario(CORPUS.BY_NAME[name], str(tmp_path))
    assert result.get("errors", []) == []
    assert result["missed"] == [] and result["unexpected"] == [], result


def test_corpus_covers_every_new_code_and_the_seeds():
    expected = {code for s in CORPUS.SCENARIOS for code in s.expected}
    assert {"inverted-momentum", "ema-weights-stale-stats", "shared-layer"} <= expected
    assert len(CORPUS.SCENARIOS) >= 15
    names = {s.name for s in CORPUS.SCENARIOS}
    assert all(any(n.startswith(f"seed00{i}") for n in names) for i in (1, 2, 3, 4))
    assert sum(1 for s in CORPUS.SCENARIOS if not s.expected) >= 4  # healthy runs stay quiet
