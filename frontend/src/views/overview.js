// Overview: runs x BN layers in model order, drift sparkline, gaps, badges;
// sortable by drift / local gap / compound gap; filter by name.
import { h, whenVisible } from "../dom.js";
import { sparkline, cssVar } from "../charts.js";
import { fmt, isNum, severityRank } from "../format.js";
import { loadRuns, severityBadge, layerLink, selectorFor, siteLink } from "./common.js";
import { selectedRuns, runColor } from "../selection.js";

const SORT_KEYS = {
  drift: { label: "Drift", title: "Latest mean over channels of the normalised mean shift |batch mean − moving mean| / √(moving var + ε)" },
  local_gap: { label: "Local gap", title: "Latest local train/inference gap of this layer" },
  compound_gap: { label: "Compound gap", title: "Latest compound train/inference gap up to this layer" },
};

function compareRows(key, dir) {
  return (a, b) => {
    const va = a.layer[key];
    const vb = b.layer[key];
    const na = isNum(va);
    const nb = isNum(vb);
    if (!na && !nb) return a.order - b.order;
    if (!na) return 1; // missing values last, whatever the direction
    if (!nb) return -1;
    const d = dir === "asc" ? va - vb : vb - va;
    return d !== 0 ? d : a.order - b.order;
  };
}

function modeText(layer) {
  const parts = [layer.training ? "batch stats" : "moving stats"];
  if (layer.trainable === false) parts.push("frozen");
  return parts.join(", ");
}

/**
 * A run's problems per severity, counted as Diagnostics shows them: one per
 * code (`codes`: code -> layers it names), and the layers they name.
 */
function problemCounts(layers) {
  const bySeverity = new Map();
  for (const layer of layers) {
    for (const d of layer.diagnostics || []) {
      if (!bySeverity.has(d.severity)) bySeverity.set(d.severity, { severity: d.severity, codes: new Map(), layers: new Set() });
      const p = bySeverity.get(d.severity);
      p.codes.set(d.code, (p.codes.get(d.code) || 0) + 1);
      p.layers.add(layer.path);
    }
  }
  return [...bySeverity.values()].sort((a, b) => severityRank(a.severity) - severityRank(b.severity));
}

/** A run's graph findings (runs route `graph_findings`), each linking to its first site. */
function graphFindingBadges(ctx, run) {
  const found = (Array.isArray(run.graph_findings) ? run.graph_findings : []).slice();
  found.sort((a, b) => severityRank(a.severity) - severityRank(b.severity));
  if (!found.length) return null;
  return h(
    "div",
    { class: "badges graph-findings", dataset: { role: "graph-findings" } },
    found.map((f) => {
      const sites = Array.isArray(f.sites) ? f.sites : [];
      const badge = severityBadge(f.severity, `graph: ${f.code}`);
      badge.dataset.code = f.code;
      const layers = [...new Set(Object.values(f.site_layers || {}))];
      badge.title = `${f.title || f.code}${layers.length ? `\nlayers: ${layers.join(", ")}` : ""}`;
      return sites.length ? siteLink(ctx, run.run, sites[0], badge) : badge;
    }),
  );
}

export async function renderOverview(panel, ctx) {
  const allRuns = await loadRuns(panel, ctx);
  if (!allRuns) return;
  ctx.begin();
  const chosen = new Set(selectedRuns(allRuns, ctx.state));
  const runs = allRuns.filter((r) => chosen.has(r.run));
  const state = ctx.state;
  let sortKey = SORT_KEYS[state.sort] ? state.sort : null;
  let sortDir = state.dir === "asc" ? "asc" : "desc";

  // Run summary cards.
  const cards = h("div", { class: "run-cards" });
  let total = 0;
  for (const run of runs) {
    const layers = Array.isArray(run.layers) ? run.layers : [];
    total += layers.length;
    const problems = problemCounts(layers);
    const gap = run.gap;
    cards.appendChild(
      h(
        "div",
        { class: "run-card", dataset: { run: run.run }, style: { borderLeftColor: runColor(allRuns, run.run) } },
        h("div", { class: "run-name" }, run.run),
        h("div", { class: "kv" }, `${layers.length} BN layer${layers.length === 1 ? "" : "s"}`, run.has_graph ? " · graph" : ""),
        gap
          ? h(
              "div",
              { class: "kv", dataset: { role: "run-gap" } },
              `step ${gap.step}: train loss ${fmt(gap.train_loss)} · inference loss ${fmt(gap.inference_loss)}`,
            )
          : h("div", { class: "kv" }, "no train/inference gap logged"),
        problems.length
          ? h(
              "div",
              { class: "badges", dataset: { role: "run-problems" }, style: { marginTop: "4px" } },
              problems.map((p) => {
                const badge = severityBadge(p.severity, `${p.codes.size} ${p.severity === "info" ? "info" : `${p.severity}${p.codes.size > 1 ? "s" : ""}`} · ${p.layers.size} layer${p.layers.size > 1 ? "s" : ""}`);
                badge.dataset.problems = String(p.codes.size);
                badge.dataset.layers = String(p.layers.size);
                badge.title = [...p.codes].map(([code, n]) => `${code}: ${n} layer${n > 1 ? "s" : ""}`).join("\n");
                return badge;
              }),
            )
          : null,
        graphFindingBadges(ctx, run),
        run.errors && run.errors.length ? h("ul", { class: "run-errors", dataset: { role: "run-errors" } }, run.errors.map((e) => h("li", null, e))) : null,
      ),
    );
  }

  // Rows.
  const rows = [];
  let order = 0;
  for (const run of runs) {
    const layers = (Array.isArray(run.layers) ? run.layers : []).slice().sort((a, b) => a.index - b.index);
    for (const layer of layers) rows.push({ run: run.run, layer, order: order++, tr: null, match: "" });
  }

  const accent = cssVar("--accent");
  for (const row of rows) {
    const { layer } = row;
    row.match = `${row.run}\u0000${layer.path}`.toLowerCase();
    const spark = h("div", { class: "sparkline", dataset: { sparkline: "", points: "0" }, role: "img", "aria-label": `drift over steps for ${layer.path}` });
    const sp = layer.sparkline;
    if (sp && Array.isArray(sp.steps) && sp.steps.length > 1) {
      whenVisible(spark, (el) => {
        if (el.isConnected) sparkline(el, sp.steps, sp.values || [], { color: accent });
      });
    } else {
      spark.className = "sparkline-empty";
      spark.textContent = "—";
    }
    const diags = (layer.diagnostics || []).slice().sort((a, b) => severityRank(a.severity) - severityRank(b.severity));
    row.tr = h(
      "tr",
      {
        dataset: {
          run: row.run,
          layer: layer.path,
          index: layer.index,
          drift: isNum(layer.drift) ? layer.drift : "",
          localGap: isNum(layer.local_gap) ? layer.local_gap : "",
          compoundGap: isNum(layer.compound_gap) ? layer.compound_gap : "",
        },
      },
      h("td", { class: "run-cell", title: row.run }, row.run),
      h("td", { class: "num" }, String(layer.index)),
      h("td", { class: "layer-cell" }, layerLink(ctx, row.run, layer.path)),
      h("td", { class: "num" }, String(layer.channels)),
      h("td", { class: "num" }, fmt(layer.momentum)),
      h("td", { class: "flag" }, modeText(layer)),
      h("td", { class: "num" }, `${layer.num_steps}`, h("div", { class: "flag" }, `last ${layer.last_step}`)),
      h("td", null, spark),
      h("td", { class: "num", dataset: { col: "drift" } }, fmt(layer.drift)),
      h("td", { class: "num", dataset: { col: "local_gap" } }, fmt(layer.local_gap)),
      h("td", { class: "num", dataset: { col: "compound_gap" } }, fmt(layer.compound_gap)),
      h("td", null, h("div", { class: "badges" }, diags.length ? diags.map((d) => severityBadge(d.severity, d.code)) : h("span", { class: "muted" }, "—"))),
    );
  }

  // Header with sort buttons.
  const sortButtons = {};
  const headCell = (label, key, cls) => {
    if (!key) return h("th", { class: cls, scope: "col" }, label);
    const ind = h("span", { class: "sort-ind", "aria-hidden": "true" });
    const btn = h(
      "button",
      {
        type: "button",
        class: "sort-btn",
        dataset: { sort: key },
        title: `${SORT_KEYS[key].title}. Click to sort.`,
        on: {
          click: () => {
            if (sortKey !== key) {
              sortKey = key;
              sortDir = "desc";
            } else if (sortDir === "desc") sortDir = "asc";
            else sortKey = null;
            applySort();
            ctx.update({ sort: sortKey || "", dir: sortKey ? sortDir : "" }, { rerender: false });
          },
        },
      },
      label,
      ind,
    );
    const th = h("th", { class: cls, scope: "col", dataset: { sortKey: key } }, btn);
    sortButtons[key] = { th, ind };
    return th;
  };
  const thead = h(
    "thead",
    null,
    h(
      "tr",
      null,
      headCell("Run"),
      headCell("#", null, "num"),
      headCell("Layer"),
      headCell("Channels", null, "num"),
      headCell("Momentum", null, "num"),
      headCell("Mode"),
      headCell("Steps", null, "num"),
      headCell("Drift over steps"),
      headCell(SORT_KEYS.drift.label, "drift", "num"),
      headCell(SORT_KEYS.local_gap.label, "local_gap", "num"),
      headCell(SORT_KEYS.compound_gap.label, "compound_gap", "num"),
      headCell("Diagnostics"),
    ),
  );
  const tbody = h("tbody");
  const table = h("table", { class: "data overview-table", dataset: { table: "overview" } }, thead, tbody);

  const countEl = h("span", { class: "muted", dataset: { role: "row-count" }, "aria-live": "polite" });
  const noMatch = h("div", { class: "message message-info", hidden: true, dataset: { role: "no-match" } }, "No layer matches the filter.");

  function applySort() {
    const sorted = sortKey ? rows.slice().sort(compareRows(sortKey, sortDir)) : rows.slice().sort((a, b) => a.order - b.order);
    for (const row of sorted) tbody.appendChild(row.tr); // re-appending moves existing rows
    for (const [key, { th, ind }] of Object.entries(sortButtons)) {
      const on = key === sortKey;
      th.setAttribute("aria-sort", on ? (sortDir === "asc" ? "ascending" : "descending") : "none");
      ind.textContent = on ? (sortDir === "asc" ? "▲" : "▼") : "";
    }
    table.dataset.sort = sortKey || "";
    table.dataset.dir = sortKey ? sortDir : "";
  }

  function applyFilter(text) {
    const q = text.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const hit = !q || row.match.includes(q);
      row.tr.hidden = !hit;
      if (hit) shown++;
    }
    countEl.textContent = q ? `${shown} of ${rows.length} layers match` : `${rows.length} layers in ${runs.length} run${runs.length === 1 ? "" : "s"}`;
    noMatch.hidden = shown > 0 || rows.length === 0;
    table.dataset.shown = String(shown);
  }

  let filterTimer = null;
  const filter = h("input", {
    type: "search",
    placeholder: "Filter layers by name…",
    "aria-label": "Filter layers by name (substring, case-insensitive)",
    dataset: { control: "filter" },
    value: state.filter || "",
    on: {
      input: () => {
        applyFilter(filter.value);
        clearTimeout(filterTimer);
        filterTimer = setTimeout(() => ctx.update({ filter: filter.value }, { rerender: false }), 250);
      },
    },
  });

  applySort();
  applyFilter(filter.value);

  panel.appendChild(h("h2", null, "Overview"));
  panel.appendChild(selectorFor(ctx, allRuns));
  panel.appendChild(cards);
  panel.appendChild(h("div", { class: "controls" }, filter, countEl));
  if (rows.length) {
    panel.appendChild(h("div", { class: "table-wrap" }, table));
    panel.appendChild(noMatch);
  } else {
    panel.appendChild(h("div", { class: "message message-info" }, "These runs have no BN layer data yet."));
  }
  panel.dataset.rows = String(rows.length);
}
