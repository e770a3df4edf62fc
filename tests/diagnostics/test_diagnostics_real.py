"""Every diagnostic code fires on a real (short) training run, on the expected layers.

The runs are the demo's scenarios (demo/train.py) at ``TEST`` size, logged
with ``BatchNormCallback`` and read back through TensorBoard's data path; a
healthy run triggers no warning or error.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from demo_runs import demo, scenario_run  # noqa: E402

ALL_LAYERS = ["input_bn", "bn0", "bn1", "dense_bn"]

# code -> (scenario, layers the finding must name (at least), channels it must name (where known))
EXPECTED = {
    "stale-moving-stats": ("stale-moving-stats", ALL_LAYERS, {}),
    "momentum-one": ("momentum-one", ALL_LAYERS, {}),
    "slow-momentum": ("slow-momentum", ["input_bn"], {}),
    "tiny-batch": ("tiny-batch", ["bn0", "bn1"], {}),
    "train-inference-gap": ("train-inference-gap", ["input_bn"], {}),
    "frozen-bn": ("frozen-bn", ALL_LAYERS, {}),
    "uninitialized-moving-stats": ("uninitialized-moving-stats", ["input_bn"], {}),
    "dead-channels": (
        "dead-channels",
        ["input_bn"],
        {"input_bn": [3]},
    ),  # the constant alpha channel
    "non-finite": ("non-finite", ["input_bn"], {}),
    "ema-error": ("slow-momentum", ["input_bn"], {}),
}


# Codes whose real run is not a demo scenario (a tf.distribute strategy, a shared layer, the
# accuracy corpus):
# checked by the named test instead.
ELSEWHERE = {
    "replica-batch-too-small": "test_distribute.py::test_mirrored_strategy_two_replicas",
    "inverted-momentum": "test_accuracy_corpus.py (scenario inverted-momentum)",
    "ema-weights-stale-stats": "test_accuracy_corpus.py (scenario ema-weights)",
    "shared-layer": "test_shared_layer.py and test_accuracy_corpus.py (scenario gan-discriminator)",
}


def findings_of(tmp_path_factory, scenario: str):
    from tb_bn_plugin.diagnostics import diagnose
    from tb_bn_plugin.reading.load import load_runs
    from tb_bn_plugin.reading.provider import open_logdir

    run_dir = scenario_run(tmp_path_factory, scenario)
    runs = load_runs(open_logdir(os.path.dirname(run_dir)))
    assert list(runs) == [scenario]
    run = runs[scenario]
    assert run.errors == []
    return run, diagnose(run)


def test_every_code_has_a_real_run():
    from tb_bn_plugin.diagnostics import DIAGNOSTICS

    codes = {d.__name__.replace("_", "-") for d in DIAGNOSTICS}
    assert codes == set(EXPECTED) | set(ELSEWHERE)
    assert {s for s, _, _ in EXPECTED.values()} <= set(demo().SCENARIOS)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_code_fires_on_expected_layers(tmp_path_factory, code):
    scenario, layers, channels = EXPECTED[code]
    if code == "train-inference-gap" and not demo().GAP_LOGGING:
        pytest.skip("BatchNormCallback has no gap logging (gap_every_n_epochs) yet")
    run, findings = findings_of(tmp_path_factory, scenario)
    hits = [f for f in findings if f.code == code]
    assert hits, (
        f"{code} did not fire on scenario {scenario}: {[(f.code, f.layers) for f in findings]}"
    )
    fired = {path for f in hits for path in f.layers}
    assert set(layers) <= fired, f"{code} fired on {sorted(fired)}, expected at least {layers}"
    assert fired <= set(run.layers)
    for finding in hits:
        assert finding.fix and finding.evidence
    for path, expected_channels in channels.items():
        named = {c for f in hits for c in f.channels.get(path, [])}
        assert set(expected_channels) <= named, f"{code} on {path}: channels {sorted(named)}"


def test_scenarios_are_specific(tmp_path_factory):
    """Scenarios of one pitfall do not trigger unrelated errors (causal companions are allowed)."""
    allowed = {
        # Updates that never run leave the moving statistics at 0/1 from the start.
        "stale-moving-stats": {"stale-moving-stats", "uninitialized-moving-stats"},
        "momentum-one": {"momentum-one", "uninitialized-moving-stats"},
        "uninitialized-moving-stats": {"stale-moving-stats", "uninitialized-moving-stats"},
        "non-finite": {"non-finite"},
    }
    for scenario, codes in allowed.items():
        _, findings = findings_of(tmp_path_factory, scenario)
        errors = {f.code for f in findings if f.severity == "error"}
        assert errors <= codes, (scenario, errors)
    for scenario in (
        "slow-momentum",
        "tiny-batch",
        "frozen-bn",
        "dead-channels",
        "train-inference-gap",
    ):
        _, findings = findings_of(tmp_path_factory, scenario)
        assert not [f for f in findings if f.severity == "error"], (
            scenario,
            [f.code for f in findings],
        )


def test_healthy_run_has_no_warning_or_error(tmp_path_factory):
    run, findings = findings_of(tmp_path_factory, "healthy")
    assert sorted(run.layers) == sorted(ALL_LAYERS)
    bad = [(f.code, f.layers, f.title) for f in findings if f.severity in ("error", "warning")]
    assert bad == []
    if demo().GAP_LOGGING:
        assert run.gap is not None and len(run.gap.steps) >= 1
    layer = run.layers["input_bn"]
    assert len(layer.steps) >= 8  # enough logged steps for drift curves
