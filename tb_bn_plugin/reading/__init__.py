"""Reading logged BN Internals back: the only code touching TensorBoard's data-provider internals.

Owns, one module each: where data is read from (``provider``: a logdir opened
with TensorBoard's event multiplexer, or the plugin's data provider, and
tensor decoding), which tags a run has (``tags``), events -> ``series``
dataclasses (``decode``, with the layouts in ``records``), the cache of parsed
layer series (``cache``), loading whole runs plus the public
``read_stats``/``read_gap`` (``load``), a run's stored graph (``graph``) and
corrupt or truncated event files (``event_files``). May import ``numerics``,
the contract modules and ``graph``; never ``training``, ``diagnostics`` or
``plugin``.
"""
