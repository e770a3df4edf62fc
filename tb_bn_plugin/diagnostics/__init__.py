"""Diagnostics of BatchNorm train/inference pitfalls: pure functions over runs and graph sites.

Owns the one ``Finding`` type, the one severity order (``SEVERITY_ORDER``)
and the rule catalogue (``catalogue``): every code once, with its severity
and fix, defined beside its rule in one module per rule family
(``moving_stats``, ``batches``, ``gap``, ``modes``, ``values``, ``ema``,
``graph``). May import ``numerics``, the contract modules (``metadata``,
``series``, ``formatting``) and ``graph``; nothing that touches TensorFlow,
Keras or TensorBoard's readers.

Each statistics rule is ``f(run, thresholds=Thresholds()) -> list[Finding]``;
``diagnose`` runs them all. Notation: a *trained step* is a logged step with
``info["training"] == 1``; a *trained snapshot* is a per-channel snapshot at a
trained step; "marked mismatch" of batch statistics ``(mu_b, var_b)`` against
reference statistics ``(mu_r, var_r)`` means, in some channel,
``|mu_b - mu_r| / sqrt(var_r + eps) > mismatch_shift`` or
``|log((var_b + eps) / (var_r + eps))| > mismatch_log_var``.

Rules (``Thresholds`` field = default):

``stale-moving-stats`` (error)
    The layer trained (with momentum < 1) at logged steps after the first; at
    every one of them the across-channel summaries of moving_mean and
    moving_variance are unchanged from the previous logged step
    (``max |delta| <= unchanged_rtol = 1e-8`` times the rows' magnitude); and
    at one of them the logged drift (mean_shift, log_var_ratio) shows a marked
    mismatch (``mismatch_shift = 0.5``, ``mismatch_log_var = log 2``). Needs
    two logged steps.
``momentum-one`` (error)
    A trained step with momentum >= 1; in a graph (``graph``), a site whose
    moving-average update's momentum constant is 1.
``inverted-momentum`` (warning)
    A trained step with momentum ``< inverted_momentum = 0.5``: the moving
    statistics average fewer than ``1/(1-m) = 2`` batches (PyTorch's momentum,
    the weight of the new batch, copied into Keras); the fix gives
    ``1 - momentum``.
``slow-momentum`` (warning)
    At the latest trained snapshot (step n, momentum m), the EMA still weighs
    its initial value by ``m**n > initial_weight = 0.05`` and the moving
    statistics show a marked mismatch against the average of the batch
    statistics over the trained snapshots of the last ``1/(1-m)`` steps. The
    weight alone does not fire (the initial value may be pretrained
    statistics), nor do moving statistics that do not move at all (still 0/1
    at the latest step, or stale-moving-stats). Needs per-channel snapshots.
``tiny-batch`` (warning)
    A trained step whose batch statistics came from fewer than
    ``min_count = 8`` values per channel.
``shared-layer`` (warning)
    A layer called several times in one training step (per-call statistics
    logged, ``LayerSeries.calls``) whose calls normalise markedly different
    batches: per logged step and channel, the largest standardized mean
    difference between two calls ``|mu_j - mu_k| / sqrt((var_j + var_k)/2 + eps)``
    or log variance ratio (``numerics.moments.call_divergence``), median over
    channels, then over steps, exceeds ``shared_layer_shift = 0.5`` or
    ``shared_layer_log_var = log 2``. Calls on one distribution (a Siamese net
    on two random halves of the same data) differ by sampling noise only and
    stay below.
``replica-batch-too-small`` (warning)
    An unsynchronised layer trained on several replicas (per-replica
    statistics logged, ``LayerSeries.replicas``) normalised over fewer than
    ``min_replica_count = 16`` values per channel on some replica at a logged
    step, or whose replicas' batch means spread by more than
    ``max_replica_mean_spread = 0.5`` of the global batch std (median over
    steps of the mean over channels; about ``1/sqrt(count)`` for evenly
    shuffled independent values, far more for the correlated values of a conv
    feature map from few samples per replica, or for replicas fed differently
    distributed data). Never fires for ``synchronized=True`` layers or
    single-device runs.
``train-inference-gap`` (warning)
    At the latest gap measurement with finite losses, the loss gap relative to
    a scale that does not vanish as the model converges,
    ``|inference - train| / max(|train|, reference_share * reference)``
    with ``reference`` the largest training-mode probe loss of the run
    (``reference_share = 0.1``), exceeds ``relative_loss_gap = 0.25``; or a
    compiled metric's gap, scaled the same way by its own largest
    training-mode value, does; or some layer's compound gap exceeds
    ``compound_gap = 1.0`` (the output difference exceeds the output's own
    RMS: healthy deep networks reach 0.6 and more). Names the layers
    whose score (attribution if measured, else local gap, else compound gap)
    is at least ``attribution_share = 0.5`` of the top score.
``frozen-bn`` (info)
    A logged step where the layer normalised with its moving statistics
    during fit (non-trainable, or called with ``training=False``).
``uninitialized-moving-stats`` (error)
    At the latest logged step every channel's moving statistics are within
    ``initial_atol = 1e-6`` of the initial 0 and 1, and the latest trained
    batch statistics show a marked mismatch against 0/1.
``dead-channels`` (warning)
    At the latest snapshot, moving_variance ``< dead_variance = 1e-6`` in a
    channel, or the batch variance at the latest trained snapshot computed
    from more than one value per channel is.
``non-finite`` (error)
    A NaN or Inf in a logged statistic where a value is expected: batch and
    drift statistics at trained steps, every other statistic at every step.
``ema-error`` (warning)
    At the latest ``PreciseStatsMonitor`` measurement, some channel's moving
    statistics mismatch the layer's precise population statistics (same
    mismatch thresholds); recommends ``tb_bn_plugin.recalibrate``.
``ema-weights-stale-stats`` (warning)
    After a ``fit`` with an EMA optimizer (``use_ema=True``), the probe loss of
    the EMA weights with the moving statistics vs with statistics re-estimated
    for them (``RunData.ema_weights_gap``) differs by more than
    ``relative_loss_gap``, scaled as for ``train-inference-gap``.

Graph rules (``graph.report_graph``, over the BatchNorm sites of a GraphDef):

``update-ops-not-wired`` (warning)
    A site has moving-average update ops and nothing that runs each step
    depends on them.
``momentum-one`` (error)
    The same rule as above, from the update's momentum constant.
``no-update-ops`` (info)
    A site normalises with batch statistics but the graph has no update op
    for it (normal for frozen graphs).
``no-batchnorm`` (info)
    The graph has no BatchNorm op.
``malformed-graph`` (error)
    The input is not a usable GraphDef, or parts of it are inconsistent
    (inputs naming missing nodes, duplicate names, calls to missing functions).
"""

from tb_bn_plugin.diagnostics.catalogue import CATALOGUE, DIAGNOSTICS, diagnose
from tb_bn_plugin.diagnostics.finding import SEVERITY_ORDER, Finding, Rule, severity_rank
from tb_bn_plugin.diagnostics.thresholds import Thresholds

__all__ = [
    "CATALOGUE",
    "DIAGNOSTICS",
    "SEVERITY_ORDER",
    "Finding",
    "Rule",
    "Thresholds",
    "diagnose",
    "severity_rank",
]
