"""Dev server for the BN Internals frontend: the built bundle + fixture data.

Serves the same URL layout as TensorBoard, so the bundle runs exactly as it
does inside TensorBoard's plugin iframe:

* ``/``: a stand-in for TensorBoard's page: a header with a Reload button
  (broadcasts ``experimental.DataReloaded`` over TensorBoard's plugin host
  protocol), a dark-mode toggle (``body.dark-mode``), and the plugin iframe.
* ``/data/plugin_entry.html?name=bn_internals``: TensorBoard's plugin entry
  HTML, byte for byte the same markup and Content-Security-Policy as
  ``tensorboard/backend/application.py:_serve_plugin_entry``.
* ``/data/plugin/bn_internals/index.js`` (and other files of
  ``tb_bn_plugin/plugin/static/``): the built bundle.
* ``/data/plugin/bn_internals/{runs,layer,compare,gap,diagnostics,graph}``: fixture
  data from ``fixtures/make_fixtures.py`` following ``API.md``.
* ``/__dev__/scenario?name=demo|small|big|empty|error``: switch the fake logdir;
  ``/__dev__/stats``: how often each route was requested.

Usage::

    npm --prefix frontend run build
    python frontend/dev_server.py [--port 6007] [--scenario demo] [--latency-ms 0]

Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import mimetypes
import os
import sys
import textwrap
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STATIC_DIR = os.path.join(REPO, "tb_bn_plugin", "plugin", "static")
PLUGIN_NAME = "bn_internals"
ES_MODULE_PATH = "/index.js"

sys.path.insert(0, os.path.join(HERE, "fixtures"))
import make_fixtures  # noqa: E402


def entry_html(name: str) -> tuple[str, str]:
    """TensorBoard's plugin entry page and its script's sha256 (for the CSP)."""
    module_json = json.dumps("." + ES_MODULE_PATH)
    script_content = f"import({module_json}).then((m) => void m.render());"
    digest = hashlib.sha256(script_content.encode("utf-8")).digest()
    script_sha = base64.b64encode(digest).decode("ascii")
    html = textwrap.dedent(
        """
        <!DOCTYPE html>
        <head><base href="plugin/{name}/" /></head>
        <body><script type="module">{script_content}</script></body>
        """
    ).format(name=name, script_content=script_content)
    return html, script_sha


def tensorboard_csp(script_shas: list[str]) -> str:
    """The Content-Security-Policy TensorBoard sends with HTML (http_util.Respond)."""
    script_src = " ".join(["'self'", "'unsafe-eval'"] + [f"'sha256-{s}'" for s in script_shas])
    return ";".join(
        [
            "default-src 'self'",
            "font-src 'self' data:",
            "frame-src 'self' https://ui.perfetto.dev",
            "img-src 'self' data: blob:",
            "object-src 'none'",
            "style-src 'self' https://www.gstatic.com data: 'unsafe-inline'",
            "connect-src 'self'",
            f"script-src {script_src}",
        ]
    )


HOST_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>TensorBoard (dev stand-in)</title>
<style>
  body { margin: 0; font: 14px Roboto, system-ui, sans-serif; background: #fff; color: #212121; }
  body.dark-mode { background: #303030; color: #fff; }
  .tb-top { display: flex; align-items: center; gap: 16px; height: 64px; padding: 0 16px; background: #f57c00; color: #fff; }
  body.dark-mode .tb-top { background: #ef6c00; }
  .tb-top .brand { font-size: 20px; font-weight: 500; }
  .tb-top .tab { text-transform: uppercase; font-weight: 500; opacity: .9; border-bottom: 2px solid #fff; padding: 6px 0; }
  .tb-top .spacer { flex: 1; }
  .tb-top button { background: none; border: 1px solid rgba(255,255,255,.7); color: #fff; border-radius: 4px; padding: 4px 10px; cursor: pointer; }
  #hash { font: 12px monospace; opacity: .85; }
  iframe { display: block; border: 0; width: 100%; height: calc(100vh - 64px); }
</style></head>
<body>
  <div class="tb-top"><span class="brand">TensorBoard</span><span class="tab">BN Internals</span><span class="spacer"></span>
    <span id="hash"></span>
    <button id="tb-dark" type="button">Toggle dark mode</button>
    <button id="tb-reload" type="button" title="Reload data">Reload</button></div>
  <iframe id="plugin" src="data/plugin_entry.html?name=bn_internals" title="BN Internals"></iframe>
  <script src="/__dev__/host.js"></script>
</body></html>
"""

HOST_JS = r"""
// Minimal TensorBoard plugin host (protocol of TensorBoard's plugin_api_host).
(function () {
  const ports = [];
  let nextId = 0;
  window.__tbHost = { ports: ports, reloads: 0 };
  window.addEventListener("message", function (ev) {
    if (ev.data !== "experimental.bootstrap" || !ev.ports || !ev.ports[0]) return;
    const port = ev.ports[0];
    port.onmessage = function (m) {
      let msg;
      try { msg = JSON.parse(m.data); } catch (e) { return; }
      if (!msg || msg.isReply) return;
      let payload = null;
      if (msg.type === "experimental.GetRuns") payload = [];
      else if (msg.type === "experimental.GetURLPluginData") payload = {};
      port.postMessage(JSON.stringify({ type: msg.type, id: msg.id, payload: payload, error: null, isReply: true }));
    };
    port.start();
    ports.push(port);
  });
  function broadcast(type, payload) {
    for (const port of ports) {
      port.postMessage(JSON.stringify({ type: type, id: nextId++, payload: payload, error: null, isReply: false }));
    }
  }
  window.__tbHost.broadcast = broadcast;
  document.getElementById("tb-reload").addEventListener("click", function () {
    window.__tbHost.reloads++;
    broadcast("experimental.DataReloaded", undefined);
  });
  document.getElementById("tb-dark").addEventListener("click", function () {
    document.body.classList.toggle("dark-mode");
  });
  const hashEl = document.getElementById("hash");
  function showHash() { hashEl.textContent = location.hash; }
  window.addEventListener("hashchange", showHash);
  showHash();
})();
"""


class DevState:
    def __init__(self, scenario: str, latency_ms: int = 0):
        self.lock = threading.Lock()
        self.latency_ms = latency_ms
        self.stats: dict[str, int] = {}
        self.set_scenario(scenario)

    def set_scenario(self, name: str) -> None:
        ds = make_fixtures.Dataset(name)
        with self.lock:
            self.dataset = ds
            self.scenario = name

    def count(self, route: str) -> None:
        with self.lock:
            self.stats[route] = self.stats.get(route, 0) + 1


class Handler(BaseHTTPRequestHandler):
    server_version = "bn-internals-dev/1"
    state: DevState  # set on the subclass by make_server

    def log_message(self, fmt, *args):  # quiet unless BN_DEV_VERBOSE
        if os.environ.get("BN_DEV_VERBOSE"):
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache, must-revalidate")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")
        self._send(status, body, "application/json")

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):  # noqa: C901 - a flat router
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in params.items()}
        path = url.path
        st = self.state
        if path in ("/", "/index.html"):
            return self._send(
                200,
                HOST_HTML.encode("utf-8"),
                "text/html; charset=utf-8",
                {"Content-Security-Policy": tensorboard_csp([])},
            )
        if path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon")
        if path == "/__dev__/host.js":
            return self._send(200, HOST_JS.encode("utf-8"), "application/javascript; charset=utf-8")
        if path == "/__dev__/scenario":
            name = q.get("name", "demo")
            try:
                st.set_scenario(name)
            except ValueError as e:
                return self._json(400, {"error": str(e)})
            return self._json(200, {"scenario": name})
        if path == "/__dev__/stats":
            with st.lock:
                return self._json(200, {"scenario": st.scenario, "requests": dict(st.stats)})
        if path == "/data/plugin_entry.html":
            name = q.get("name")
            if name != PLUGIN_NAME:
                return self._send(404, b"Not found", "text/plain")
            html, sha = entry_html(name)
            return self._send(
                200,
                html.encode("utf-8"),
                "text/html; charset=utf-8",
                {"Content-Security-Policy": tensorboard_csp([sha])},
            )
        prefix = f"/data/plugin/{PLUGIN_NAME}/"
        if path.startswith(prefix):
            route = path[len(prefix) :]
            st.count(route)
            if st.latency_ms:
                time.sleep(st.latency_ms / 1000.0)
            ds = st.dataset
            try:
                if route == "runs":
                    return self._json(200, ds.runs_route())
                if route == "layer":
                    return self._json(
                        200,
                        ds.layer_route(
                            q.get("run"), q.get("layer"), q.get("resolution"), q.get("channel")
                        ),
                    )
                if route == "compare":
                    return self._json(
                        200,
                        ds.compare_route(
                            q.get("layer"), params.get("run", []), q.get("resolution")
                        ),
                    )
                if route == "gap":
                    return self._json(200, ds.gap_route(q.get("run")))
                if route == "diagnostics":
                    return self._json(200, ds.diagnostics_route(q.get("run")))
                if route == "graph":
                    return self._json(200, ds.graph_route(q.get("run")))
            except make_fixtures.RouteError as e:
                return self._json(e.status, {"error": e.message})
            # Static files of the plugin (index.js and friends), by name.
            name = route.lstrip("/")
            if name and "/" not in name and not name.startswith("."):
                fpath = os.path.join(STATIC_DIR, name)
                if os.path.isfile(fpath):
                    with open(fpath, "rb") as f:
                        body = f.read()
                    ctype = (
                        "application/javascript; charset=utf-8"
                        if name.endswith((".js", ".mjs"))
                        else (mimetypes.guess_type(name)[0] or "application/octet-stream")
                    )
                    return self._send(200, body, ctype)
            return self._json(404, {"error": f"no such route: {route}"})
        return self._send(404, b"Not found", "text/plain")


def make_server(
    port: int = 0, scenario: str = "demo", latency_ms: int = 0, host: str = "127.0.0.1"
):
    """A ready (not yet serving) server; its URL is http://127.0.0.1:<server.server_port>/."""
    state = DevState(scenario, latency_ms)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.dev_state = state
    return server


def serve_in_thread(port: int = 0, scenario: str = "demo", latency_ms: int = 0):
    """Start a server in a daemon thread; returns (server, base_url). Call server.shutdown() when done."""
    server = make_server(port, scenario, latency_ms)
    t = threading.Thread(target=server.serve_forever, name="bn-dev-server", daemon=True)
    t.start()
    return server, f"http://127.0.0.1:{server.server_port}/"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Serve the BN Internals bundle with fixture data (127.0.0.1 only)."
    )
    ap.add_argument("--port", type=int, default=6007)
    ap.add_argument("--scenario", default="demo", choices=make_fixtures.SCENARIOS)
    ap.add_argument(
        "--latency-ms", type=int, default=0, help="delay every data route (to see loading states)"
    )
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(STATIC_DIR, "index.js")):
        print(
            "tb_bn_plugin/plugin/static/index.js is missing: run `npm --prefix frontend ci && npm --prefix frontend run build`",
            file=sys.stderr,
        )
    server = make_server(args.port, args.scenario, args.latency_ms)
    print(
        f"BN Internals dev server: http://127.0.0.1:{server.server_port}/ (scenario {args.scenario}); Ctrl-C to stop",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
