"""What ``BatchNormCallback`` traces for one model, kept for the model's later fits.

Owns ``FitCache`` (``fit_cache(model)``). Users who call ``fit`` in a loop
(one epoch at a time, cross-validation folds, tuner trials) create a new
callback per ``fit``; without this cache every ``fit`` would trace the
instrumented train function, the snapshot function, the gap probe and the
run graph again (seconds of CPU, and TensorFlow's retracing warnings).

The cache lives on the model instance, under an attribute Keras does not
track (nothing of it is saved, and Keras' savers skip plain objects), so it
dies with the model: a module-level table keyed by weak references would
keep every model alive, because the traced train function it must hold
references its model.

Everything but the run graph is tied to the model's *bare* train function
(what Keras made without the callback): ``compile`` drops that function, and
with it the optimizer and loss the cached functions were traced with, so a
new bare function empties the cache.
"""

from __future__ import annotations

from typing import Any, Optional

_ATTRIBUTE = "_tb_bn_fit_cache"


class FitCache:
    """One model's traced work: its bare and instrumented train functions, capture,
    probe-batch stash, gap probe and run graph.

    ``train_functions`` holds each instrumented train function with what it
    was instrumented with, ``(capture, stash_installed, function)``: the
    ``StatsCapture`` (or None) and whether the probe-batch stash was
    installed. ``graph`` is the run graph (a ``GraphDef``) or the exception
    that tracing it raised.
    """

    def __init__(self) -> None:
        self.bare_train_function: Any = None
        self.train_functions: list[tuple[Any, bool, Any]] = []
        self.capture: Any = None  # capture.StatsCapture
        self.stash: Any = None  # probe_batch.FirstBatchStash
        self.gap_probe: Any = None  # gap_probe.GapProbe, or host_gap.HostGapProbe off TensorFlow
        self.gap_key: Optional[tuple] = None
        self.graph: Any = None

    def begin_fit(self, model: Any) -> None:
        """Note the model's bare train function at the start of a ``fit``; drop what a new one
        (after ``compile``) makes stale."""
        current = model.train_function
        if current is None or self.instrumented(current):
            return  # not made yet, or a fit with the callback ended without on_train_end
        if current is not self.bare_train_function:
            self.bare_train_function = current
            self.train_functions = []
            self.capture = self.stash = self.gap_probe = self.gap_key = None

    def use_train_function(self, model: Any, capture: Any, stash_installed: bool) -> None:
        """Make ``model.train_function`` the one instrumented with ``capture`` (and the stash);
        it is traced at its first call in the first ``fit`` that needs it, then reused."""
        for cached_capture, cached_stash, function in self.train_functions:
            if cached_capture is capture and cached_stash == stash_installed:
                model.train_function = function
                return
        model.make_train_function(force=True)
        self.train_functions.append((capture, stash_installed, model.train_function))

    def restore_train_function(self, model: Any) -> None:
        """Give the model back its bare train function: the next ``fit`` without the
        callback runs what it would have run (traced, if it was before)."""
        if self.instrumented(model.train_function):
            model.train_function = self.bare_train_function

    def instrumented(self, function: Any) -> bool:
        """Whether ``function`` is one of the cached instrumented train functions."""
        return any(function is cached for _, _, cached in self.train_functions)

    def __deepcopy__(self, memo: dict) -> FitCache:
        # A copied model traces its own functions.
        return FitCache()


def fit_cache(model: Any) -> FitCache:
    """The model's ``FitCache``, created on first use."""
    cache = model.__dict__.get(_ATTRIBUTE)
    if cache is None:
        cache = FitCache()
        # object.__setattr__: Keras' __setattr__ would track the attribute (and save it).
        object.__setattr__(model, _ATTRIBUTE, cache)
    return cache
