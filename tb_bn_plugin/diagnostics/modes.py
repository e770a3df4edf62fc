"""Rules about which mode a layer normalised in during fit."""

from __future__ import annotations

from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.series import RunData

FROZEN_BN = Rule(
    "frozen-bn",
    "info",
    "In Keras 3 a BatchNormalization layer with trainable = False runs in inference mode "
    "(fine-tuning semantics): it normalises with its moving statistics during fit and does "
    "not update them; calling a model with training=False does the same. This is what you "
    "want when fine-tuning a pretrained base on small batches. It is a problem when the "
    "moving statistics do not fit the new data (a freshly initialised layer has 0 and 1): "
    "then set trainable = True on the BatchNormalization layers, or unfreeze after a "
    "warm-up, and recompile the model after changing trainable.",
)


def frozen_bn(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``frozen-bn``: the layer normalised with its moving statistics during fit."""
    findings = []
    for layer in run.ordered_layers():
        inference = ~view.trained(layer)
        if not inference.any():
            continue
        frozen = view.info(layer, "trainable", 1.0) < 0.5
        reason = "non-trainable" if frozen.any() else "called with training=False"
        findings.append(
            FROZEN_BN.finding(
                f"{reason}: normalises with its moving statistics during fit",
                [layer.config.path],
                {
                    "logged_steps": len(layer.steps),
                    "inference_mode_steps": int(inference.sum()),
                    "non_trainable_steps": int(frozen.sum()),
                    "first_inference_mode_step": int(layer.steps[inference][0]),
                },
            )
        )
    return findings
