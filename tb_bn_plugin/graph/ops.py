"""The op types and attributes the graph analysis recognises, by role."""

from __future__ import annotations

# Fused BatchNorm: outputs y, batch_mean, batch_variance, ...
FUSED_OPS = frozenset(
    {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "_FusedBatchNormEx"}
)
# In a function, a fused op's outputs are named ``node:y:0``, ``node:batch_mean:0``, ...
FUSED_OUTPUT_PORTS = {"y": 0, "batch_mean": 1, "batch_variance": 2}
IF_OPS = frozenset({"If", "StatelessIf"})
# An If's branch attributes and the branch each one runs: True is the training side.
BRANCH_ATTRS = {"then_branch": True, "else_branch": False}
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
SWITCH_OPS = frozenset({"Switch", "RefSwitch"})
MERGE_OPS = frozenset({"Merge", "RefMerge"})
# Moving-average updates; the subtracting ones take ``(moving - batch) * (1 - momentum)``.
UPDATE_OPS = frozenset({"AssignSubVariableOp", "AssignSub", "AssignVariableOp", "Assign"})
SUBTRACTING_UPDATES = frozenset({"AssignSubVariableOp", "AssignSub"})
ADD_OPS = frozenset({"Add", "AddV2"})
# Ops a value flows through unchanged (for this analysis).
PASS_THROUGH = frozenset(
    {
        "Identity",
        "RefIdentity",
        "Snapshot",
        "Cast",
        "Squeeze",
        "Reshape",
        "ExpandDims",
        "StopGradient",
        "PreventGradient",
        "CheckNumerics",
        "EnsureShape",
        "Enter",
    }
)
# Where moving statistics come from: variables, their reads, frozen constants.
VARIABLE_OPS = frozenset({"ReadVariableOp", "VarHandleOp", "VariableV2", "Variable", "Const"})
# Ops that compute statistics of the current batch (tf.nn.moments and friends).
BATCH_STAT_OPS = frozenset({"Mean", "Sum", "SquaredDifference", "RealDiv", "DivNoNan"})
# ``DataType.DT_RESOURCE``: a function argument holding a variable handle.
DT_RESOURCE = 20
