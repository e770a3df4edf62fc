"""Everything that runs inside the user's training: the only code that touches Keras internals.

* ``callback`` / ``logger``: the two front ends (``model.fit``, custom loops);
  both drive a ``session.LoggingSession`` (discovery, capture, writer, cadence).
* ``capture``: finding BatchNormalization layers and capturing their batch
  statistics inside the training step.
* ``probe_batch``, ``layer_tap``, ``gap_probe``: the train/inference gap on a
  fixed probe batch (the batch, tapping the layers, the passes).
* ``precise``: precise (population) statistics, recalibration, their monitor.
* ``graph_trace``: tracing a model's training and inference steps into a GraphDef.
* ``compat``: what differs between Keras flavours, one adapter per flavour
  behind one protocol (``compat.base.KerasFlavour``).

May import ``numerics``, ``formatting``, the contract modules (``metadata``,
``series``, ``records``, ``summary``), ``graph`` and ``diagnostics``; never
``reading``, ``plugin`` or ``cli``.
"""
