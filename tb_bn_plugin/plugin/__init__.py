"""The BN Internals TensorBoard plugin: HTTP only.

Owns the loader and the HTTP shell (``loader``), the pure route functions
(``routes``) that answer the contract in ``frontend/API.md``, and the built
frontend (``static/``). May import ``reading``, ``diagnostics``, ``graph``,
the contract modules and ``numerics``; never ``training`` or ``cli``.
"""
