"""Everything that runs inside the user's training: the only code that touches Keras internals.

Owns the callback and the logger, the capture of batch statistics inside the
train step, the gap probe, precise statistics and graph tracing. What differs
between Keras flavours lives in ``compat`` (one adapter per flavour). May
import ``numerics``, the contract modules (to write summaries), ``graph``
and ``diagnostics``; never ``reading``, ``plugin`` or ``cli``.
"""
