"""What the BN Internals plugin's routes answer: pure functions, no HTTP.

One module per route (``runs``, ``layer``, ``compare``, ``gap``, ``diagnostics``,
``graph``), each with an ``*_impl`` that takes a
``reading.provider.ExperimentSource`` plus already parsed parameters
(``params``) and returns a JSON-safe dict (``encoding``: NaN and Inf become
``None``), following the contract in ``frontend/API.md``. Bad parameters
raise TensorBoard's ``errors.InvalidArgumentError`` (400), unknown runs or
layers and unreadable data ``errors.NotFoundError`` (404); ``plugin.loader``
turns both into ``{"error": ...}``.

Downsampling happens where the data is read: the data provider returns at
most the requested number of events per tag, always keeping the last logged
step, so a long run costs what is shown rather than what was logged. Over
TensorBoard's Python loader the sample is evenly spaced and keeps the first
step too (``reading.provider.MultiplexerProvider``); the Rust data server's is
a seeded random sample, deterministic for the same data. The ``layer`` route
reads ``resolution`` summary records and at most that many per-channel
snapshots (fewer for wide layers, ``layer.HEATMAP_CELLS``); the overview, its
diagnostics and the ``diagnostics`` route read ``runs.OVERVIEW_POINTS``
events per tag; the ``gap`` route reads every measurement.
"""
