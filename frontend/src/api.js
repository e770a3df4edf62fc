// Client for the plugin's JSON routes (see frontend/API.md).
//
// Routes are fetched relative to the document's base URL. Inside TensorBoard
// the entry page has <base href="plugin/bn_internals/"> under /data/, so
// "runs" resolves to /data/plugin/bn_internals/runs.

export class ApiError extends Error {
  constructor(route, status, message) {
    super(message);
    this.name = "ApiError";
    this.route = route;
    this.status = status;
  }
}

function routeUrl(route, params) {
  const url = new URL(route, document.baseURI);
  if (params) {
    for (const [k, v] of Object.entries(params)) {
      // An array is a repeated parameter (compare?run=a&run=b).
      for (const one of Array.isArray(v) ? v : [v]) {
        if (one !== null && one !== undefined && one !== "") url.searchParams.append(k, String(one));
      }
    }
  }
  return url;
}

const cache = new Map();
let generation = 0;

/** Forget cached responses (on reload). */
export function invalidate() {
  cache.clear();
  generation += 1;
}

export function currentGeneration() {
  return generation;
}

async function fetchJSON(route, params) {
  const url = routeUrl(route, params);
  let resp;
  try {
    resp = await fetch(url.href, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
  } catch (err) {
    throw new ApiError(route, 0, `Could not reach the TensorBoard server (${err && err.message ? err.message : err}).`);
  }
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_err) {
    body = null;
  }
  if (!resp.ok) {
    let msg = body && typeof body.error === "string" ? body.error : text.trim().slice(0, 300);
    if (!msg) msg = resp.statusText || "request failed";
    throw new ApiError(route, resp.status, msg);
  }
  if (body === null || typeof body !== "object") {
    throw new ApiError(route, resp.status, "The server answered with something that is not JSON.");
  }
  return body;
}

/** GET a route, cached until invalidate(). */
export function get(route, params) {
  const key = routeUrl(route, params).href;
  if (!cache.has(key)) {
    const p = fetchJSON(route, params);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return cache.get(key);
}

export const api = {
  runs: () => get("runs"),
  layer: (run, layer, resolution, channel) =>
    get("layer", { run, layer, resolution, channel: channel === null || channel === undefined ? null : channel }),
  compare: (layer, runs, resolution) => get("compare", { layer, run: runs, resolution }),
  gap: (run) => get("gap", { run }),
  diagnostics: (run) => get("diagnostics", run ? { run } : null),
  graph: (run) => get("graph", { run }),
};

export function describeError(err) {
  if (err instanceof ApiError) {
    const where = `GET ${err.route}`;
    return err.status ? `${where} failed (${err.status}): ${err.message}` : `${where} failed: ${err.message}`;
  }
  return `Unexpected error: ${err && err.message ? err.message : String(err)}`;
}
