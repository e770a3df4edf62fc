"""The BN Internals TensorBoard plugin: the loader and the thin HTTP shell over ``routes``.

Routes (under ``/data/plugin/bn_internals/``, contract in ``frontend/API.md``):
``runs``, ``layer``, ``compare``, ``gap``, ``diagnostics``, ``graph`` answer JSON; anything
else is a file of ``static/`` (``index.js`` is the frontend's ES module).
The route functions raise TensorBoard's errors (``tensorboard.errors``):
the shell answers them as ``{"error": message}`` with their status, 400
(``InvalidArgumentError``: bad parameters) or 404 (``NotFoundError``: unknown
run or layer, no readable data).

Sampling: TensorBoard keeps only 10 samples per tag of an unknown plugin's
tensors. ``BNInternalsLoader.fix_flags`` sets ``--samples_per_plugin
bn_internals=0`` (keep every sample) unless the user gave a value for
``bn_internals``; TensorBoard forwards the flag to both loaders (the Python
``EventMultiplexer`` and the Rust data server, where 0 becomes ``all``).

Warming: inside ``tensorboard``, a background thread computes the overview
(``runs``) every ``--bn_internals_warm_interval`` seconds (default 30, 0: never)
into the plugin's cache, so the tab opens on results computed before: a cold
overview of 10 runs x 100 layers takes about a second, a warm one a fraction. Only
runs whose data changed are computed again. While the data is still arriving
(TensorBoard loading a large logdir: the overview differs from the last
warm-up's, lists no run yet, or cannot be computed yet) the next warm-up comes after
``SETTLING_WARM_S`` instead, within TensorBoard's first ``SETTLING_WINDOW_S``,
so a tab opened right after the load finds it warm.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from tensorboard import context as tb_context
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_bn_plugin import metadata
from tb_bn_plugin.plugin.routes import compare, diagnostics, gap, graph, layer, params, runs
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.provider import ExperimentSource, plugin_provider

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Samples kept per tag when the user does not choose: all of them.
ALL_SAMPLES_HINT = 0
# Seconds between background overview computations (``--bn_internals_warm_interval``).
DEFAULT_WARM_INTERVAL_S = 30.0
# The first one comes sooner, and so does each next one while the data is still changing: the
# tab is often opened right after TensorBoard starts or finishes loading.
SETTLING_WARM_S = 5.0
# ... but only in TensorBoard's first minutes (its initial load): a run that is still training
# changes the overview at every round, and must not cost a warm-up every 5 s for hours.
SETTLING_WINDOW_S = 600.0

logger = logging.getLogger(__name__)

Impl = Callable[[ExperimentSource, Any], dict[str, Any]]


class BNInternalsPlugin(base_plugin.TBPlugin):
    """Serves BN Internals data (batch vs moving statistics, gaps, diagnostics, graph paths)."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._provider = plugin_provider(
            context.data_provider, context.multiplexer, context.logdir or ""
        )
        self._cache = SeriesCache()
        interval = getattr(context.flags, "bn_internals_warm_interval", 0.0) or 0.0
        if interval > 0:
            _start_warming(self, interval)

    def warm(self) -> dict[str, Any]:
        """Compute the overview into the cache, as the tab's first request would; returns it."""
        source = ExperimentSource(self._provider, tb_context.RequestContext(), experiment_id="")
        return runs.runs_impl(source, self._cache)

    def get_plugin_apps(self) -> dict[str, Callable]:
        return {
            "/runs": self._runs_route,
            "/layer": self._layer_route,
            "/compare": self._compare_route,
            "/gap": self._gap_route,
            "/diagnostics": self._diagnostics_route,
            "/graph": self._graph_route,
            "/*": self._static_route,
        }

    def is_active(self) -> bool:
        return (
            False  # TensorBoard activates the tab when its data provider lists bn_internals data.
        )

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="BN Internals")

    @wrappers.Request.application
    def _runs_route(self, request: wrappers.Request) -> wrappers.Response:
        return self._serve(request, lambda source, args: runs.runs_impl(source, self._cache))

    @wrappers.Request.application
    def _layer_route(self, request: wrappers.Request) -> wrappers.Response:
        return self._serve(
            request,
            lambda source, args: layer.layer_impl(
                source,
                params.required(args, "run"),
                params.required(args, "layer"),
                resolution=_resolution(args),
                channel=params.int_param(args, "channel", None, 0),
                cache=self._cache,
            ),
        )

    @wrappers.Request.application
    def _compare_route(self, request: wrappers.Request) -> wrappers.Response:
        return self._serve(
            request,
            lambda source, args: compare.compare_impl(
                source,
                params.required(args, "layer"),
                params.required_list(args, "run"),
                resolution=_resolution(args),
                cache=self._cache,
            ),
        )

    @wrappers.Request.application
    def _gap_route(self, request: wrappers.Request) -> wrappers.Response:
        return self._serve(
            request, lambda source, args: gap.gap_impl(source, params.required(args, "run"))
        )

    @wrappers.Request.application
    def _diagnostics_route(self, request: wrappers.Request) -> wrappers.Response:
        return self._serve(
            request,
            lambda source, args: diagnostics.diagnostics_impl(
                source, args.get("run") or None, self._cache
            ),
        )

    @wrappers.Request.application
    def _graph_route(self, request: wrappers.Request) -> wrappers.Response:
        return self._serve(
            request, lambda source, args: graph.graph_impl(source, params.required(args, "run"))
        )

    @wrappers.Request.application
    def _static_route(self, request: wrappers.Request) -> wrappers.Response:
        prefix = f"/plugin/{metadata.PLUGIN_NAME}/"
        name = request.path.split(prefix, 1)[-1]
        path = _static_file(name)
        if path is None:
            return _json(request, {"error": f"not found: {name!r}"}, 404)
        with open(path, "rb") as f:
            content = f.read()
        content_type = "text/javascript" if name.endswith(".js") else mimetypes.guess_type(name)[0]
        return http_util.Respond(request, content, content_type or "application/octet-stream")

    def _serve(self, request: wrappers.Request, impl: Impl) -> wrappers.Response:
        source = ExperimentSource(
            self._provider,
            plugin_util.context(request.environ),
            plugin_util.experiment_id(request.environ),
        )
        try:
            return _json(request, impl(source, request.args), 200)
        except errors.PublicError as err:
            return _json(request, {"error": error_message(err)}, err.http_code)


class BNInternalsLoader(base_plugin.TBLoader):
    """Loads the plugin and makes TensorBoard keep every BN Internals sample."""

    def define_flags(self, parser: Any) -> None:
        parser.add_argument(
            "--bn_internals_warm_interval",
            type=float,
            default=DEFAULT_WARM_INTERVAL_S,
            help="BN Internals: seconds between background computations of the overview "
            f"(every {SETTLING_WARM_S:g} s at first and while the data still changes), so the "
            "tab opens fast; 0 turns them off.",
        )

    def fix_flags(self, flags: Any) -> None:
        samples = getattr(flags, "samples_per_plugin", None)
        if samples is None:
            samples = flags.samples_per_plugin = {}
        samples.setdefault(metadata.PLUGIN_NAME, ALL_SAMPLES_HINT)

    def load(self, context: base_plugin.TBContext) -> BNInternalsPlugin:
        return BNInternalsPlugin(context)


def _start_warming(plugin: BNInternalsPlugin, interval: float) -> None:
    """A daemon thread calling ``plugin.warm()`` while the plugin lives: every ``interval`` s
    once the overview has settled, every ``SETTLING_WARM_S`` s before."""
    plugin_ref = weakref.ref(plugin)
    # Set when the plugin is collected: the thread ends then, not after its current wait.
    gone = threading.Event()
    weakref.finalize(plugin, gone.set)

    def loop() -> None:
        delay, last = SETTLING_WARM_S, None
        settling_until = time.monotonic() + SETTLING_WINDOW_S
        while not gone.wait(delay):
            live = plugin_ref()
            if live is None:
                return
            try:
                overview = live.warm()
            except Exception:  # noqa: BLE001 - a failed warm-up only leaves the cache cold
                # E.g. the data server still starting; the next round or a request tries again.
                logger.debug("BN Internals: warming the overview failed", exc_info=True)
                overview = None
            del live
            # No run yet is not settled either: the data server lists nothing until it has read.
            settled = bool(overview and overview["runs"]) and overview == last
            settled = settled or time.monotonic() > settling_until
            delay, last = (interval if settled else SETTLING_WARM_S), overview

    threading.Thread(target=loop, name="bn_internals_warm", daemon=True).start()


def error_message(err: errors.PublicError) -> str:
    """What a route's error says, without the code name TensorBoard's errors prefix it with."""
    text = str(err)
    _code_name, sep, details = text.partition(": ")
    return details if sep else text


def _static_file(name: str) -> str | None:
    """The file ``name`` names inside ``STATIC_DIR``; ``None`` if missing, a folder or outside."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    root = os.path.realpath(STATIC_DIR)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    return path


def _json(request: wrappers.Request, body: dict[str, Any], code: int) -> wrappers.Response:
    # Serialised here: strict (the routes already turned NaN/Inf into null) and compact.
    text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    return http_util.Respond(request, text, "application/json", code=code)


def _resolution(args) -> int:
    """The ``resolution`` parameter of the layer and compare routes (points per series)."""
    return params.int_param(args, "resolution", layer.DEFAULT_RESOLUTION, 2, layer.MAX_RESOLUTION)
