"""``ema-error``: the rule over logged EMA errors and the finding builder the monitor uses."""

from __future__ import annotations

from tb_bn_plugin.diagnostics import Finding
from tb_bn_plugin.diagnostics.ema import ema_error_finding
from tb_bn_plugin.numerics import ema


def test_ema_error_finding():
    good = ema.EmaError(0.01, 0.02, 0.01, 0.02)
    bad = ema.EmaError(0.3, 1.5, 0.1, 0.2)
    assert ema_error_finding({"a": good}) == []
    (finding,) = ema_error_finding({"a": good, "b": bad}, step=7)
    assert isinstance(finding, Finding)
    assert (finding.code, finding.severity, finding.layers) == ("ema-error", "warning", ["b"])
    assert finding.evidence["step"] == 7 and "recalibrate" in finding.fix
    finding.to_json()
