// Graph: each BN site's switch as a small graph laid out by dagre and drawn
// as plain SVG: predicate -> switch -> training path (batch statistics) /
// inference path (moving statistics) -> merge, plus the moving-statistics
// update ops and their wiring to the train op. Runs trained on JAX or PyTorch
// have no TensorFlow graph: their sites (from `step_functions`) are the two
// step functions, and whether the train step applied the updates was
// measured (`updates_applied`) instead of read from the wiring.
import { graphlib, layout } from "@dagrejs/dagre";
import { h, s, messageBox, copyButton, whenVisible } from "../dom.js";
import { api, ApiError } from "../api.js";
import { fmt } from "../format.js";
import { parentUrlWithHash, openInParent } from "../host.js";
import { loadRuns, pickRun, runSelect, errorBox, layerLink } from "./common.js";
import { groupFindings, problemCard, scrollToSite } from "./diagnostics.js";

const MAX_PATH_NODES = 6;
const KIND_TEXT = {
  switch_merge: "tf.cond: Switch / Merge",
  functional_if: "functional If / StatelessIf",
  separate_functions: "separate training and inference functions",
  unswitched: "unswitched: a single path",
};
const ROLE_TEXT = {
  predicate: "predicate",
  switch: "switch",
  training: "training path",
  inference: "inference path",
  merge: "merge",
  update: "update op",
  trainop: "train op",
  trainstate: "train step result",
};

/** Whether the site's updates were measured on a real train step (no TensorFlow graph). */
function measuredUpdates(site) {
  return (site.updates_wired === null || site.updates_wired === undefined) && typeof site.updates_applied === "boolean";
}

let measureCtx = null;
function textWidth(text, font) {
  if (!measureCtx) measureCtx = document.createElement("canvas").getContext("2d");
  measureCtx.font = font;
  return measureCtx.measureText(text).width;
}

/** The last `keep` components of an op name, cut from the left to `max` characters. */
export function shortName(op, max = 30, keep = 2) {
  const parts = String(op).split("/");
  let name = parts.length > keep ? parts.slice(-keep).join("/") : String(op);
  if (name.length > max) name = `…${name.slice(-(max - 1))}`;
  return name;
}

/** Short labels for a site's nodes, lengthened where two different ops would read the same. */
function labelNodes(nodes) {
  for (const n of nodes) n.text = n.label || shortName(n.op);
  for (let keep = 3; keep <= 6; keep++) {
    const byText = new Map();
    for (const n of nodes) {
      if (n.label) continue;
      if (!byText.has(n.text)) byText.set(n.text, new Set());
      byText.get(n.text).add(n.op);
    }
    let changed = false;
    for (const n of nodes) {
      if (!n.label && byText.get(n.text).size > 1) {
        n.text = shortName(n.op, 44, keep);
        changed = true;
      }
    }
    if (!changed) break;
  }
}

function graphsHash(run) {
  return `graphs&run=${encodeURIComponent(run)}`;
}

export function graphsLink(run) {
  const hash = graphsHash(run);
  const href = parentUrlWithHash(hash) || `${new URL("../../../", document.baseURI).href}#${hash}`;
  return h(
    "a",
    {
      href,
      target: "_parent",
      class: "find-in-graphs",
      dataset: { graphsRun: run },
      title: "Open TensorBoard's Graphs tab for this run, then search for the op name",
      on: {
        click: (ev) => {
          if (openInParent(hash)) ev.preventDefault();
        },
      },
    },
    "Find in Graphs tab",
  );
}

/** Nodes and edges of one site; pure data, laid out by dagre. */
export function siteModel(site) {
  const nodes = [];
  const edges = [];
  const add = (role, op, cls, extra = {}) => {
    const id = `n${nodes.length}`;
    nodes.push({ id, role, op, cls, ...extra });
    return id;
  };
  const chain = (ops, role) => {
    const list = Array.isArray(ops) ? ops : [];
    if (!list.length) return [];
    const shown = list.length > MAX_PATH_NODES ? [...list.slice(0, MAX_PATH_NODES - 1), null] : list;
    const ids = shown.map((op) =>
      op === null
        ? add(role, list.slice(MAX_PATH_NODES - 1).join("\n"), `path-${role}`, { label: `+${list.length - MAX_PATH_NODES + 1} more ops`, more: list.slice(MAX_PATH_NODES - 1) })
        : add(role, op, `path-${role}`),
    );
    for (let i = 1; i < ids.length; i++) edges.push({ from: ids[i - 1], to: ids[i], cls: `path-${role}` });
    return ids;
  };
  const pred = site.predicate ? add("predicate", site.predicate, "node-predicate") : null;
  const sw = site.switch_op ? add("switch", site.switch_op, "node-switch") : null;
  if (pred && sw) edges.push({ from: pred, to: sw, cls: "edge-control", label: "pred" });
  const tIds = chain(site.training_path, "training");
  const iIds = chain(site.inference_path, "inference");
  const merge = site.merge_op ? add("merge", site.merge_op, "node-merge") : null;
  const head = sw || pred;
  if (head && tIds.length) edges.push({ from: head, to: tIds[0], cls: "path-training", label: sw ? "true" : null });
  if (head && iIds.length) edges.push({ from: head, to: iIds[0], cls: "path-inference", label: sw ? "false" : null });
  if (merge && tIds.length) edges.push({ from: tIds[tIds.length - 1], to: merge, cls: "path-training" });
  if (merge && iIds.length) edges.push({ from: iIds[iIds.length - 1], to: merge, cls: "path-inference" });
  const updates = Array.isArray(site.update_ops) ? site.update_ops : [];
  if (updates.length) {
    const measured = measuredUpdates(site);
    const trainOp = measured
      ? add("trainstate", "moving statistics after the train step", "node-trainop", { label: "moving statistics" })
      : add("trainop", "train op", "node-trainop", { label: "train op" });
    const wired = measured ? site.updates_applied : site.updates_wired;
    const wcls = wired === true ? "update-wired" : wired === false ? "update-unwired" : "update-unknown";
    const missing = measured ? "not applied" : "not wired";
    for (const op of updates) {
      const u = add("update", op, "node-update");
      if (tIds.length) edges.push({ from: tIds[tIds.length - 1], to: u, cls: "edge-feed", label: null });
      edges.push({ from: u, to: trainOp, cls: wcls, label: wired === false ? missing : wired === null || wired === undefined ? "unknown" : null });
    }
  }
  return { nodes, edges };
}

function markerDefs(prefix) {
  const defs = s("defs");
  for (const [key, cls] of [
    ["train", "arrow-train"],
    ["infer", "arrow-infer"],
    ["ok", "arrow-ok"],
    ["bad", "arrow-bad"],
    ["plain", "arrow-plain"],
  ]) {
    defs.appendChild(
      s(
        "marker",
        { id: `${prefix}-${key}`, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse", markerUnits: "userSpaceOnUse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: cls }),
      ),
    );
  }
  return defs;
}

function markerFor(cls) {
  if (cls === "path-training") return "train";
  if (cls === "path-inference") return "infer";
  if (cls === "update-wired") return "ok";
  if (cls === "update-unwired") return "bad";
  return "plain";
}

let siteCounter = 0;
const NODE_FONT = "11px Roboto, system-ui, sans-serif";
const ROLE_FONT = "9.5px Roboto, system-ui, sans-serif";

/** Lay out and draw one site as SVG; onSelect(node) when a node is picked. */
export function drawSite(site, onSelect) {
  const model = siteModel(site);
  const g = new graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 14, ranksep: 34, edgesep: 10, marginx: 6, marginy: 6 });
  g.setDefaultEdgeLabel(() => ({}));
  labelNodes(model.nodes);
  for (const n of model.nodes) {
    n.roleText = ROLE_TEXT[n.role];
    const w = Math.max(textWidth(n.text, NODE_FONT), textWidth(n.roleText, ROLE_FONT)) + 16;
    g.setNode(n.id, { width: Math.ceil(Math.max(64, w)), height: 34 });
  }
  model.edges.forEach((e) => g.setEdge(e.from, e.to, { label: e.label || "", width: e.label ? textWidth(e.label, ROLE_FONT) + 4 : 0, height: e.label ? 12 : 0, labelpos: "c" }));
  layout(g);
  const graph = g.graph();
  const W = Math.ceil(graph.width || 100);
  const H = Math.ceil(graph.height || 60);
  const prefix = `bnsite${++siteCounter}`;
  const svg = s("svg", {
    class: "site-graph",
    width: W,
    height: H,
    viewBox: `0 0 ${W} ${H}`,
    role: "group",
    "aria-label": `Switch graph of ${site.name}`,
    dataset: { nodes: model.nodes.length, edges: model.edges.length },
  });
  svg.appendChild(markerDefs(prefix));
  const edgeLayer = s("g", { class: "edges" });
  const nodeLayer = s("g", { class: "nodes" });
  svg.appendChild(edgeLayer);
  svg.appendChild(nodeLayer);
  model.edges.forEach((e) => {
    const le = g.edge(e.from, e.to);
    if (!le || !le.points) return;
    const d = le.points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
    edgeLayer.appendChild(
      s("path", { d, class: ["edge", e.cls], "marker-end": `url(#${prefix}-${markerFor(e.cls)})`, dataset: { from: e.from, to: e.to } }),
    );
    if (e.label && Number.isFinite(le.x)) {
      const tw = textWidth(e.label, ROLE_FONT) + 6;
      edgeLayer.appendChild(s("rect", { x: (le.x - tw / 2).toFixed(1), y: (le.y - 7).toFixed(1), width: tw.toFixed(1), height: 13, rx: 3, class: "edge-label-bg" }));
      edgeLayer.appendChild(s("text", { x: le.x.toFixed(1), y: (le.y + 3).toFixed(1), "text-anchor": "middle", class: ["edge-label", e.cls === "update-unwired" ? "warn" : null] }, e.label));
    }
  });
  for (const n of model.nodes) {
    const ln = g.node(n.id);
    const x = ln.x - ln.width / 2;
    const y = ln.y - ln.height / 2;
    const node = s(
      "g",
      {
        class: ["node", `node-${n.role}`, n.cls],
        transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
        tabindex: "0",
        role: "button",
        "aria-label": `${n.roleText}: ${n.more ? n.more.join(", ") : n.op}`,
        dataset: { role: n.role, op: n.more ? n.more[0] : n.op },
      },
      s("title", null, n.more ? n.more.join("\n") : n.op),
      s("rect", { width: ln.width, height: ln.height, rx: 4, ry: 4 }),
      s("text", { x: 8, y: 12, class: "node-role", "font-size": "9.5", fill: "currentColor", opacity: "0.7" }, n.roleText),
      s("text", { x: 8, y: 26, class: "node-label" }, n.text),
    );
    const pick = () => {
      for (const el of svg.querySelectorAll(".node.selected")) el.classList.remove("selected");
      node.classList.add("selected");
      onSelect(n);
    };
    node.addEventListener("click", pick);
    node.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        pick();
      }
    });
    nodeLayer.appendChild(node);
  }
  return svg;
}

function legend() {
  const swatch = (cls, label, extra = null) =>
    h(
      "span",
      { class: "legend-item", dataset: { legend: cls } },
      s("svg", { width: 34, height: 10, class: "legend-swatch", "aria-hidden": "true" }, s("line", { x1: 1, y1: 5, x2: 33, y2: 5, class: ["edge", cls] })),
      label,
      extra,
    );
  return h(
    "div",
    { class: "legend", role: "list", "aria-label": "Legend" },
    swatch("path-training", "training path: normalises with batch statistics"),
    swatch("path-inference", "inference path: normalises with moving statistics"),
    swatch("update-wired", "update ops wired to the train op (or, without a TensorFlow graph, applied by the train step)"),
    swatch("update-unwired", "update ops NOT wired / NOT applied (moving statistics never update)"),
    swatch("update-unknown", "wiring unknown / not decided"),
  );
}

function opList(run, site, inGraphsTab) {
  const items = [];
  const push = (role, op) => op && items.push({ role, op });
  push("predicate", site.predicate);
  push("switch", site.switch_op);
  for (const op of site.training_path || []) push("training path", op);
  for (const op of site.inference_path || []) push("inference path", op);
  push("merge", site.merge_op);
  for (const op of site.update_ops || []) push("update op", op);
  return h(
    "details",
    { class: "op-details" },
    h("summary", null, `All ${items.length} op names`),
    h(
      "ul",
      { class: "op-list" },
      items.map((it) => h("li", { dataset: { op: it.op } }, h("span", { class: "op-role" }, it.role), h("code", null, it.op), copyButton(it.op))),
    ),
    inGraphsTab ? h("div", { class: "muted", style: { marginTop: "4px" } }, graphsLink(run)) : null,
  );
}

function siteSection(ctx, run, site, inGraphsTab) {
  const measured = measuredUpdates(site);
  const wired = measured ? site.updates_applied : site.updates_wired;
  const selected = h("div", { class: "op-selected", dataset: { role: "selected-op" } }, h("span", { class: "muted" }, "Click an op to show its full name."));
  const onSelect = (n) => {
    const ops = n.more || [n.op];
    selected.replaceChildren(
      h("span", { class: "muted" }, `${ROLE_TEXT[n.role]}:`),
      ...ops.slice(0, 8).flatMap((op) => [h("code", null, op), n.role === "trainop" || n.role === "trainstate" ? null : copyButton(op)]),
      inGraphsTab ? graphsLink(run) : null,
    );
  };
  const wrap = h("div", { class: "site-graph-wrap", style: { minHeight: "90px" } });
  whenVisible(wrap, (el) => {
    if (!el.isConnected) return;
    el.style.minHeight = "";
    el.appendChild(drawSite(site, onSelect));
  });
  return h(
    "section",
    { class: "site", dataset: { site: site.name, layer: site.layer || "", kind: site.kind, wired: wired === true ? "true" : wired === false ? "false" : "unknown" } },
    h(
      "div",
      { class: "site-head" },
      h("span", { class: "site-name" }, site.name),
      // The logged layer this op scope belongs to (graph route `layer`): its statistics.
      site.layer ? h("span", { class: "site-layer", dataset: { role: "site-layer" } }, "layer ", layerLink(ctx, run, site.layer)) : null,
      h("span", { class: "muted" }, KIND_TEXT[site.kind] || site.kind),
      site.momentum !== null && site.momentum !== undefined ? h("span", { class: "muted" }, `momentum ${fmt(site.momentum)}`) : null,
      wired === true
        ? h("span", { class: "badge badge-ok" }, measured ? "updates applied by the train step" : "updates wired")
        : wired === false
          ? h("span", { class: "badge sev-error wire-warning", role: "note" }, measured ? "⚠ the train step does not apply the updates" : "⚠ update ops not wired to the train op")
          : (site.update_ops || []).length
            ? h("span", { class: "badge sev-info" }, measured || !inGraphsTab ? "updates not decided" : "update wiring unknown")
            : null,
    ),
    wired === false
      ? h(
          "div",
          { class: "wire-warning", style: { fontSize: "12px", marginBottom: "4px" } },
          measured
            ? "The train step left the moving mean and variance unchanged although it normalised with different batch statistics: the updates are computed but dropped, so inference keeps normalising with stale statistics."
            : "The moving-statistics updates do not run with the train op, so the moving mean and variance stay at their initial values and inference normalises with them.",
        )
      : null,
    wrap,
    selected,
    opList(run, site, inGraphsTab),
  );
}

export async function renderGraph(panel, ctx) {
  const runs = await loadRuns(panel, ctx);
  if (!runs) return;
  const withGraph = runs.filter((r) => r.has_graph);
  const run = pickRun(withGraph.length ? withGraph : runs, ctx.state.run);
  let data;
  let loadError = null;
  try {
    data = await api.graph(run.run);
  } catch (err) {
    // 404: the run has no graph, or its stored graph is unreadable; the message says which.
    if (err instanceof ApiError && err.status === 404) data = { run: run.run, sites: [], findings: [], error: err.message };
    else loadError = err;
  }
  if (!ctx.isCurrent()) return;
  ctx.begin();
  panel.appendChild(h("h2", null, "Graph: training / inference switch per BN site"));
  panel.appendChild(h("div", { class: "controls" }, runSelect(withGraph.length ? withGraph : runs, run.run, (v) => ctx.update({ run: v }))));
  if (!withGraph.length) {
    panel.appendChild(messageBox("info", "No run has a graph logged.", "Log the model graph (e.g. TensorBoard(write_graph=True) or tf.summary.trace_export) to see each BN layer's switch between batch and moving statistics."));
  }
  if (loadError) {
    panel.appendChild(errorBox(loadError, `the graph of run “${run.run}”`));
    panel.dataset.state = "error";
    return;
  }
  const view = h("div", { class: "graph-view", dataset: { run: run.run } });
  panel.appendChild(view);
  if (data.error) view.appendChild(messageBox("warning", "The graph of this run could not be analysed", data.error));
  const described = data.step_functions || null;
  if (described) {
    view.appendChild(
      messageBox(
        "info",
        `No TensorFlow graph: trained on ${described.backend}`,
        `Each BN layer's training path runs in ${described.train_function} (batch statistics) and its inference path in ${described.inference_function} (moving statistics): two separate functions. Whether the train step applies the moving-statistic updates was measured on training step ${described.step}.`,
      ),
    );
    view.dataset.backend = described.backend;
  }
  const findings = Array.isArray(data.findings) ? data.findings : [];
  if (findings.length) {
    view.appendChild(h("h3", null, "Findings"));
    for (const group of groupFindings(findings.map((f) => ({ ...f, run: run.run, sites: Array.isArray(f.sites) ? f.sites : [] })))) {
      view.appendChild(problemCard(ctx, group, { inGraph: true }));
    }
  }
  const sites = Array.isArray(data.sites) ? data.sites : [];
  view.appendChild(h("h3", null, `${sites.length} BN site${sites.length === 1 ? "" : "s"}`));
  view.appendChild(legend());
  if (!sites.length) {
    if (!data.error) view.appendChild(messageBox("info", "No BN switch found in this run's graph."));
    return;
  }
  const list = h("div", { class: "sites" });
  const filter = h("input", {
    type: "search",
    placeholder: "Filter sites by name or layer…",
    "aria-label": "Filter BN sites by name",
    dataset: { control: "site-filter" },
    on: {
      input: () => {
        const q = filter.value.trim().toLowerCase();
        const names = (el) => `${el.dataset.site}\n${el.dataset.layer || ""}`.toLowerCase();
        for (const el of list.children) el.hidden = Boolean(q) && !names(el).includes(q);
      },
    },
  });
  if (sites.length > 4) view.appendChild(h("div", { class: "controls" }, filter));
  view.appendChild(list);
  for (const site of sites) list.appendChild(siteSection(ctx, run.run, site, !described));
  // Opened from a finding elsewhere (#view=graph&site=...): show that site.
  if (ctx.state.site && run.run === ctx.state.run) requestAnimationFrame(() => scrollToSite(ctx.state.site));
}
