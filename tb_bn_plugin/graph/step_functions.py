"""BatchNorm sites of a model trained without a TensorFlow graph, from its ``StepFunctions``.

On JAX and PyTorch the callback cannot trace a graph; it records the two
functions each BatchNorm layer runs in (the training step normalises with
batch statistics, the inference step with the moving statistics) and,
measured on a real training step, whether the training step applied the
moving-average updates (``training.step_functions``). ``sites_of`` turns that
into the same :class:`BNSite` a traced Keras 3 graph gives
(``separate_functions``), so one view and one set of rules show both. The
"ops" are the layer's parts as that backend runs them, each named under the
layer path and placed in its function (``OpRef.function``).
"""

from __future__ import annotations

from tb_bn_plugin.graph.model import KIND_SEPARATE_FUNCTIONS, BNSite, OpRef
from tb_bn_plugin.series import StepFunctions

# The op types of the parts a step-functions site is made of.
OP_STEP_FUNCTION = "step function"
OP_BATCH_MOMENTS = "batch moments"
OP_MOVING_STATISTICS = "moving statistics"
OP_MOVING_UPDATE = "moving-average update"
OP_MOMENTUM = "layer momentum"


def sites_of(described: StepFunctions) -> list[BNSite]:
    """One ``separate_functions`` site per layer of ``described``, sorted by name.

    Training path: the train function, then the layer's batch moments in it;
    inference path: the inference function, then the layer's moving
    statistics read in it; update ops: one per moving-statistic variable, in
    the train function; ``updates_applied`` as measured.
    """
    train, inference = described.train_function, described.inference_function
    sites = []
    for path, momentum, variables, applied in zip(
        described.layers,
        described.momentum,
        described.moving_variables,
        described.updates_applied,
    ):
        sites.append(
            BNSite(
                name=path,
                kind=KIND_SEPARATE_FUNCTIONS,
                training_path=[
                    OpRef(train, OP_STEP_FUNCTION),
                    OpRef(f"{path}/batch_moments", OP_BATCH_MOMENTS, train),
                ],
                inference_path=[
                    OpRef(inference, OP_STEP_FUNCTION),
                    OpRef(f"{path}/moving_statistics", OP_MOVING_STATISTICS, inference),
                ],
                update_ops=[OpRef(f"{name}/update", OP_MOVING_UPDATE, train) for name in variables],
                updates_applied=applied,
                momentum=momentum,
                momentum_source=OpRef(f"{path}/momentum", OP_MOMENTUM),
                moving_variables=list(variables),
            )
        )
    return sorted(sites, key=lambda site: site.name)
