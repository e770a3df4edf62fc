"""Reading logged BN Internals back: the only code that touches TensorBoard's data-provider internals.

Owns opening a logdir, listing and decoding this plugin's tags into
``series`` dataclasses (``data``), reading a run's stored graph (``graph``)
and detecting corrupt or truncated event files (``event_files``). May import
``numerics``, the contract modules and ``graph``; never ``training``,
``diagnostics`` or ``plugin``.
"""
