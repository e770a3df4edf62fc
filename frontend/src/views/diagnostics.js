// Diagnostics: one card per problem, i.e. per (run, code): severity, title,
// the fix once, and a sortable table of the affected layers (statistics
// findings, each linking to its layer) or BatchNorm sites (graph findings,
// each linking to the Graph view's site) with their evidence.
import { h, messageBox } from "../dom.js";
import { api } from "../api.js";
import { fmtEvidence, severityRank } from "../format.js";
import { loadRuns, load, severityBadge, layerLink, siteLink, selectorFor } from "./common.js";
import { selectedRuns } from "../selection.js";

// Each problem card's sort of its affected table ({key, dir} by card key), kept
// across re-renders (reloads, filter changes) for as long as the page lives.
const affectedSort = new Map();

/** Findings grouped by (run, code), most severe first; a group keeps its findings' order. */
export function groupFindings(findings) {
  const groups = new Map();
  for (const f of findings) {
    const key = JSON.stringify([f.run || "", f.code]);
    if (!groups.has(key)) groups.set(key, { run: f.run || "", code: f.code, severity: f.severity, findings: [] });
    const g = groups.get(key);
    g.findings.push(f);
    if (severityRank(f.severity) < severityRank(g.severity)) g.severity = f.severity;
  }
  return [...groups.values()].sort(
    (a, b) => severityRank(a.severity) - severityRank(b.severity) || a.run.localeCompare(b.run) || a.code.localeCompare(b.code),
  );
}

const isMapping = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/**
 * The layer/site a key such as `local/<path>` is about (train-inference-gap's
 * per-layer scores), with the key's prefix; the longest matching name wins
 * (paths contain slashes). null when the key names none of `names`.
 */
function perNameKey(key, names) {
  let best = null;
  for (const n of names) {
    if (n && key.length > n.length + 1 && key.endsWith(`/${n}`) && (!best || n.length > best.name.length)) {
      best = { name: n, prefix: key.slice(0, key.length - n.length - 1) };
    }
  }
  return best;
}

/**
 * The evidence of `f` that is about `name` (a layer or site): entries keyed by
 * the finding's other layers/sites are left out, an entry keyed `<what>/<name>`
 * becomes this row's `<what>`, and a mapping keyed by layer (e.g. ema-error's
 * `layers`) contributes only this layer's entry.
 */
function evidenceFor(f, name, names) {
  const out = {};
  for (const [key, value] of Object.entries(f.evidence || {})) {
    if (names.includes(key)) {
      if (key === name) out.detail = value;
      continue;
    }
    const per = perNameKey(key, names);
    if (per) {
      if (per.name === name) out[per.prefix] = value;
    } else if (isMapping(value) && name in value) {
      const mine = value[name];
      if (isMapping(mine)) Object.assign(out, mine);
      else out[key] = mine;
    } else out[key] = value;
  }
  return out;
}

/**
 * One table row per affected layer or site of every finding of the group. A
 * graph site belonging to a logged layer (`site_layers`) names it; where the
 * group's statistics finding lists that layer too (momentum-one read from the
 * logs and from the graph), the site joins the layer's row instead of
 * repeating it, its evidence under `graph`.
 */
function affectedRows(group) {
  const rows = [];
  const sites = [];
  for (const f of group.findings) {
    const kind = Array.isArray(f.sites) ? "site" : "layer";
    const names = (kind === "site" ? f.sites : f.layers) || [];
    if (!names.length) rows.push({ kind: "run", name: "", finding: f, evidence: evidenceFor(f, "", names) });
    for (const name of names) {
      const row = { kind, name, finding: f, evidence: evidenceFor(f, name, names), sites: [] };
      if (kind === "site") {
        row.layer = isMapping(f.site_layers) && typeof f.site_layers[name] === "string" ? f.site_layers[name] : null;
        // Graph evidence lines start with the site's name, which the row already shows.
        const detail = row.evidence.detail;
        if (typeof detail === "string" && detail.startsWith(`${name}: `)) row.evidence.detail = detail.slice(name.length + 2);
        sites.push(row);
      } else rows.push(row);
    }
  }
  for (const site of sites) {
    const layerRow = site.layer ? rows.find((r) => r.kind === "layer" && r.name === site.layer) : null;
    if (!layerRow) rows.push(site);
    else {
      layerRow.sites.push(site.name);
      const { detail, ...rest } = site.evidence;
      Object.assign(layerRow.evidence, rest, detail === undefined ? {} : { graph: detail });
    }
  }
  return rows;
}

function compareCells(a, b) {
  const na = typeof a === "number";
  const nb = typeof b === "number";
  if (na && nb) return a - b;
  if (na !== nb) return na ? -1 : 1;
  return fmtEvidence(a ?? "").localeCompare(fmtEvidence(b ?? ""));
}

/**
 * The card of one problem. `inGraph`: rendered by the Graph view, whose site
 * links scroll to the site on the page instead of opening the Graph view.
 */
export function problemCard(ctx, group, { inGraph = false } = {}) {
  const rows = affectedRows(group);
  // The titles of the findings with rows: a graph site that joined its layer's row adds none.
  const titles = [...new Set(rows.map((r) => r.finding.title || r.finding.code))];
  const fixes = [...new Set(group.findings.map((f) => f.fix).filter(Boolean))];
  const allKeys = [];
  for (const row of rows) for (const k of Object.keys(row.evidence)) if (!allKeys.includes(k)) allKeys.push(k);
  // Evidence equal in every row (momentum, thresholds, ...) is said once above the table.
  const same = (k) => rows.length > 1 && rows.every((r) => k in r.evidence && fmtEvidence(r.evidence[k]) === fmtEvidence(rows[0].evidence[k]));
  const shared = allKeys.filter(same);
  const keys = allKeys.filter((k) => !shared.includes(k));
  const what = rows.every((r) => r.kind === "site") ? "site" : "layer";
  const named = rows.filter((r) => r.name).length;

  const toSite = (name) => (inGraph ? inPageSiteLink(name) : siteLink(ctx, group.run, name));
  const nameCell = (row) => {
    if (row.kind === "layer") {
      return h(
        "td",
        { class: "affected", dataset: { layer: row.name } },
        layerLink(ctx, group.run, row.name),
        channelLinks(ctx, group.run, row),
        row.sites.length ? h("span", { class: "muted affected-sites", dataset: { role: "graph-sites" } }, " · graph ", row.sites.flatMap((name, i) => [i ? ", " : "", toSite(name)])) : null,
      );
    }
    if (row.kind === "site") {
      return h(
        "td",
        { class: "affected", dataset: { site: row.name } },
        toSite(row.name),
        row.layer ? h("span", { class: "muted site-layer", dataset: { role: "site-layer" } }, " · layer ", layerLink(ctx, group.run, row.layer)) : null,
      );
    }
    return h("td", { class: "muted" }, "whole run");
  };
  const rowEls = rows.map((row) =>
    h(
      "tr",
      { dataset: row.kind === "site" ? { site: row.name } : { layer: row.name } },
      nameCell(row),
      titles.length > 1 ? h("td", { class: "finding-row-title" }, row.finding.title || "") : null,
      keys.map((k) => h("td", { class: "mono", dataset: { key: k } }, k in row.evidence ? fmtEvidence(row.evidence[k]) : "—")),
    ),
  );
  const tbody = h("tbody", null, rowEls);
  const cardKey = JSON.stringify([inGraph, group.run, group.code]);
  const headCells = {};
  const applySort = ({ key, dir }) => {
    const order = rows.map((r, i) => i).sort((i, j) => dir * compareCells(rows[i].evidence[key], rows[j].evidence[key]) || i - j);
    for (const i of order) tbody.appendChild(rowEls[i]);
    for (const [k, th] of Object.entries(headCells)) th.setAttribute("aria-sort", k !== key ? "none" : dir > 0 ? "ascending" : "descending");
  };
  const sortBy = (key) => {
    const before = affectedSort.get(cardKey);
    // A first click sorts numbers largest first (the worst evidence on top), text A to Z.
    const dir = before && before.key === key ? -before.dir : typeof rows.find((r) => key in r.evidence)?.evidence[key] === "number" ? -1 : 1;
    affectedSort.set(cardKey, { key, dir });
    applySort({ key, dir });
  };
  const headCell = (key) => {
    const th = h("th", { scope: "col", dataset: { sortKey: key }, "aria-sort": "none" });
    th.appendChild(h("button", { type: "button", class: "sort-btn", dataset: { sortCol: key }, title: "Sort by this column", on: { click: () => sortBy(key) } }, key));
    headCells[key] = th;
    return th;
  };
  const table = h(
    "table",
    { class: "data affected-table", dataset: { table: "affected", rows: rows.length } },
    h("thead", null, h("tr", null, h("th", { scope: "col" }, what === "site" ? "Site" : "Layer"), titles.length > 1 ? h("th", { scope: "col" }, "Finding") : null, keys.map(headCell))),
    tbody,
  );
  const kept = affectedSort.get(cardKey);
  if (kept && keys.includes(kept.key)) applySort(kept);
  return h(
    "article",
    { class: "finding", dataset: { code: group.code, severity: group.severity, run: group.run, count: named } },
    h(
      "div",
      { class: "finding-head" },
      severityBadge(group.severity),
      h("span", { class: "finding-title" }, titles.length === 1 ? titles[0] : `${titles[0]} (and ${titles.length - 1} more)`),
      h("code", { class: "finding-code" }, group.code),
      named ? h("span", { class: "finding-count", dataset: { role: "affected-count" } }, `${named} ${what}${named === 1 ? "" : "s"}`) : null,
      group.run && !inGraph ? h("span", { class: "finding-run" }, `run: ${group.run}`) : null,
    ),
    shared.length
      ? h(
          "div",
          { class: "finding-section shared-evidence", dataset: { role: "shared-evidence" } },
          h("span", { class: "label" }, "Every row: "),
          shared.map((k, i) => h("span", { dataset: { key: k } }, i ? " · " : "", `${k} `, h("span", { class: "mono" }, fmtEvidence(rows[0].evidence[k])))),
        )
      : null,
    h("div", { class: "finding-section table-wrap" }, table),
    fixes.length ? h("div", { class: "finding-section" }, h("div", { class: "label" }, "Fix"), fixes.map((fix) => h("p", { class: "fix" }, fix))) : null,
  );
}

function channelLinks(ctx, run, row) {
  const channels = isMapping(row.finding.channels) && Array.isArray(row.finding.channels[row.name]) ? row.finding.channels[row.name] : [];
  if (!channels.length) return null;
  return h(
    "span",
    { class: "muted" },
    " (channels ",
    channels.slice(0, 4).flatMap((c, i) => [i ? ", " : "", layerLink(ctx, run, row.name, { channel: c, label: String(c) })]),
    channels.length > 4 ? `, +${channels.length - 4}` : "",
    ")",
  );
}

/** A site link inside the Graph view: scrolls to the site's section and flashes it. */
function inPageSiteLink(name) {
  return h(
    "button",
    { type: "button", class: "linklike site-link", dataset: { site: name }, title: "Show this site's graph", on: { click: () => scrollToSite(name) } },
    name,
  );
}

export function scrollToSite(name) {
  const el = [...document.querySelectorAll(".site[data-site]")].find((x) => x.dataset.site === name);
  if (!el) return false;
  el.scrollIntoView({ block: "start" });
  el.classList.add("site-flash");
  setTimeout(() => el.classList.remove("site-flash"), 1200);
  return true;
}

export async function renderDiagnostics(panel, ctx) {
  const runs = await loadRuns(panel, ctx);
  if (!runs) return;
  const state = ctx.state;
  const data = await load(panel, ctx, api.diagnostics(), "diagnostics");
  if (!data) return;
  ctx.begin();
  // The run selector's runs, as in the overview (findings without a run always show).
  const chosen = new Set(selectedRuns(runs, state));
  const sevFilter = ["error", "warning", "info"].includes(state.sev) ? state.sev : "";
  const groups = groupFindings(Array.isArray(data.diagnostics) ? data.diagnostics : []).filter((g) => !g.run || chosen.has(g.run));
  const shown = groups.filter((g) => !sevFilter || g.severity === sevFilter);
  const counts = { error: 0, warning: 0, info: 0 };
  for (const g of groups) counts[g.severity] = (counts[g.severity] || 0) + 1;

  const sevSelect = h("select", { dataset: { control: "severity" }, on: { change: () => ctx.update({ sev: sevSelect.value }) } });
  for (const [v, label] of [["", "All severities"], ["error", "Errors"], ["warning", "Warnings"], ["info", "Info"]]) {
    sevSelect.appendChild(h("option", { value: v, selected: v === sevFilter }, label));
  }
  panel.appendChild(h("h2", null, "Diagnostics"));
  panel.appendChild(selectorFor(ctx, runs));
  panel.appendChild(
    h(
      "div",
      { class: "controls" },
      h("label", null, "Severity", sevSelect),
      h(
        "span",
        { class: "summary-counts", dataset: { role: "counts" }, title: "Problems in the selected runs: one per run and code" },
        severityBadge("error", `${counts.error} error${counts.error === 1 ? "" : "s"}`),
        severityBadge("warning", `${counts.warning} warning${counts.warning === 1 ? "" : "s"}`),
        severityBadge("info", `${counts.info} info`),
      ),
    ),
  );
  const list = h("div", { class: "findings", dataset: { count: shown.length } });
  panel.appendChild(list);
  if (!shown.length) {
    const none = !chosen.size ? "No run selected: choose runs above." : groups.length ? "No finding matches the filter." : "No findings: nothing suspicious in the logged BN statistics of the selected runs.";
    list.appendChild(messageBox("info", none));
    return;
  }
  for (const g of shown) list.appendChild(problemCard(ctx, g));
}
