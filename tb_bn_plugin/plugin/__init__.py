"""The BN Internals TensorBoard plugin: HTTP only.

Owns the loader and the thin HTTP shell (``loader``: routes, static files,
TensorBoard's errors as JSON), the pure route functions (``routes``, one
module per route plus parameter parsing and the JSON encoding) that answer
the contract in ``frontend/API.md``, and the built frontend (``static/``).
May import ``reading``, ``diagnostics``, ``graph``, the contract modules and
``numerics``; never ``training`` or ``cli``.
"""
