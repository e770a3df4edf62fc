// Pieces shared by the views.
import { h, messageBox } from "../dom.js";
import { api, describeError, ApiError } from "../api.js";
import { fmtEvidence } from "../format.js";
import { runSelector } from "../selection.js";

export const EMPTY_GUIDANCE = "No BN Internals data yet: add BatchNormCallback(log_dir=...) to model.fit";

/**
 * Await `promise`; on failure replace the panel with a readable error and
 * return null. Returns undefined when the render went stale.
 */
export async function load(panel, ctx, promise, what) {
  try {
    const value = await promise;
    if (!ctx.isCurrent()) return undefined;
    return value;
  } catch (err) {
    if (!ctx.isCurrent()) return undefined;
    ctx.begin();
    panel.appendChild(errorBox(err, what));
    panel.dataset.state = "error";
    return null;
  }
}

export function errorBox(err, what) {
  const title = what ? `Could not load ${what}` : "Could not load data";
  const status = err instanceof ApiError ? err.status : null;
  const box = messageBox("error", title, describeError(err));
  if (status) box.dataset.status = String(status);
  return box;
}

export function emptyBox() {
  return messageBox(
    "empty",
    EMPTY_GUIDANCE,
    "Then point TensorBoard's --logdir at that directory and press reload. ",
    "Runs appear here as soon as the callback has written its first summaries.",
  );
}

/** Fetch runs; renders the empty-logdir guidance and returns null when there are none. */
export async function loadRuns(panel, ctx) {
  const data = await load(panel, ctx, api.runs(), "the list of runs");
  if (!data) return data;
  const runs = Array.isArray(data.runs) ? data.runs : [];
  if (!runs.length) {
    ctx.begin();
    panel.appendChild(emptyBox());
    panel.dataset.state = "empty";
    return null;
  }
  return runs;
}

export function pickRun(runs, wanted, accept = () => true) {
  const ok = runs.filter(accept);
  const found = ok.find((r) => r.run === wanted);
  return found || ok[0] || null;
}

/** <label>Run <select></label> over `runs` (names inserted as text). */
export function runSelect(runs, current, onChange, { label = "Run", allLabel = null, control = "run" } = {}) {
  const select = h("select", { dataset: { control }, on: { change: () => onChange(select.value) } });
  if (allLabel !== null) select.appendChild(h("option", { value: "" }, allLabel));
  for (const r of runs) {
    const name = typeof r === "string" ? r : r.run;
    const opt = h("option", { value: name }, name);
    if (name === current) opt.selected = true;
    select.appendChild(opt);
  }
  if (current === null || current === undefined || current === "") select.value = allLabel !== null ? "" : select.value;
  return h("label", null, label, select);
}

export function severityBadge(severity, text) {
  const sev = ["error", "warning", "info"].includes(severity) ? severity : "info";
  return h("span", { class: ["badge", `sev-${sev}`], dataset: { severity: sev }, title: `severity: ${sev}` }, text || sev);
}

/** A button that opens a layer's detail view. */
export function layerLink(ctx, run, path, { channel = null, label = null } = {}) {
  return h(
    "button",
    {
      type: "button",
      class: "linklike layer-link",
      dataset: { run, layer: path, openLayer: "" },
      title: `Open layer detail: ${path}`,
      on: { click: () => ctx.open("layer", { run, layer: path, channel: channel === null ? null : String(channel) }) },
    },
    label === null ? path : label,
  );
}

export function evidenceTable(evidence) {
  const entries = Object.entries(evidence || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h(
    "table",
    { class: "evidence" },
    h(
      "tbody",
      null,
      entries.map(([k, v]) =>
        h("tr", { dataset: { key: k } }, h("td", null, k), h("td", { class: "mono" }, fmtEvidence(v))),
      ),
    ),
  );
}

/** The run selector at the top of a view; a change re-renders the view with the new selection. */
export function selectorFor(ctx, runs) {
  return runSelector(runs, ctx.state, (patch) => ctx.update(patch));
}

/** A button that opens the Graph view of `run` at BatchNorm site `site` (scrolled to it). */
export function siteLink(ctx, run, site, label = null) {
  return h(
    "button",
    {
      type: "button",
      class: "linklike site-link",
      dataset: { run, site },
      title: `Show this site in the Graph view: ${site}`,
      on: { click: () => ctx.open("graph", { run, site }) },
    },
    label === null ? site : label,
  );
}
