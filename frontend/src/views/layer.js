// Layer detail: batch vs moving statistics over steps (summarised across
// channels with a band, any channel on demand), channel x step heatmaps,
// gamma/beta, momentum and the EMA's remaining initial weight, and the EMA's
// error against precise statistics when a PreciseStatsMonitor logged it.
import { h, messageBox, whenVisible } from "../dom.js";
import { api } from "../api.js";
import { seriesChart, heatmap, cssVar, PALETTE } from "../charts.js";
import { fmt, isNum } from "../format.js";
import { loadRuns, pickRun, runSelect, errorBox, selectorFor, evidenceTable, severityBadge, siteLink } from "./common.js";
import { layerNavigator } from "./layer_nav.js";
import { overlayCard } from "./overlay.js";
import { selectedRuns, runColor } from "../selection.js";

// The statistics overlaid across the selected runs (compare route), in this order.
const COMPARE_CHARTS = [
  ["mean_shift", "Normalised mean shift"],
  ["log_var_ratio", "Log variance ratio"],
  ["moving_mean", "Moving mean"],
  ["moving_variance", "Moving variance"],
];

const BANDS = {
  p: { label: "p05–p95 across channels", lo: "p05", hi: "p95" },
  m: { label: "min–max across channels", lo: "min", hi: "max" },
};

function chartCard(key, title, sub, { wide = false } = {}) {
  const body = h("div", { class: "chart-body", dataset: { chart: key } });
  const card = h("figure", { class: ["chart-card", wide ? "wide" : null], dataset: { card: key } }, h("figcaption", null, title), sub ? h("div", { class: "chart-sub" }, sub) : null, body);
  return { card, body };
}

function summarySeries(summary, stat, label, color, band) {
  const s = summary && summary[stat];
  if (!s) return null;
  return {
    label,
    values: s.mean,
    color,
    band: band ? { lo: s[band.lo], hi: s[band.hi] } : null,
  };
}

// tb_bn_plugin.EmaError fields: [key, label, quantity (colour), max over channels (dashed)].
const EMA_FIELDS = [
  ["mean_shift", "mean shift", "shift", false],
  ["max_mean_shift", "max mean shift", "shift", true],
  ["abs_log_var_ratio", "|log var ratio|", "variance", false],
  ["max_abs_log_var_ratio", "max |log var ratio|", "variance", true],
];

/**
 * The EMA-vs-precise error chart (ema: the layer route's `ema_error`), with a
 * recalibrate hint when the latest measurement is over the ema-error thresholds.
 * Returns the card and a function drawing the chart once the card is in the DOM.
 */
function emaErrorChart(ema, syncKey) {
  const fields = ema.fields || {};
  const c = chartCard(
    "ema_error",
    "EMA error vs precise statistics",
    "PreciseStatsMonitor: moving statistics against the precise population statistics of its held sample. " +
      "|moving − precise mean| / √(precise var + ε) and |log variance ratio|; solid: mean over channels, dashed: max.",
  );
  const latest = (key) => (Array.isArray(fields[key]) ? fields[key][ema.steps.length - 1] : null);
  const over = Object.entries(ema.thresholds || {})
    .map(([key, limit]) => [key, latest(key), limit])
    .filter(([, value, limit]) => isNum(value) && isNum(limit) && value > limit);
  if (over.length) {
    const detail = over.map(([key, value, limit]) => `${key} ${fmt(value)} > ${fmt(limit)}`).join(", ");
    c.card.insertBefore(
      h("p", { class: "chart-hint", dataset: { hint: "recalibrate" } }, `Large EMA error (${detail}): run tb_bn_plugin.recalibrate(model, train_data) to replace the moving statistics with precise ones.`),
      c.body,
    );
  }
  const colors = { shift: cssVar("--accent"), variance: "#6a1b9a" };
  const series = EMA_FIELDS.map(([key, label, quantity, isMax]) => ({
    label,
    values: fields[key],
    color: colors[quantity],
    dash: isMax ? [5, 4] : undefined,
  }));
  const opts = {
    syncKey,
    xLabel: "step",
    yLabel: "error (std; |log ratio|)",
    yRangeFn: (_u, _min, max) => [0, isNum(max) && max > 0 ? max * 1.05 : 1], // errors are >= 0
  };
  return { card: c.card, draw: () => seriesChart(c.body, ema.steps, series, opts) };
}

/**
 * "in the graph: <site>": the run graph's sites of this layer (layer route
 * `graph_sites`), each opening the Graph view there; the way back from the
 * site links of the overview and Diagnostics. Null without a site.
 */
function graphSites(ctx, run, sites) {
  const names = Array.isArray(sites) ? sites.filter((s) => typeof s === "string") : [];
  if (!names.length) return null;
  const links = names.flatMap((site, i) => (i ? [", ", siteLink(ctx, run, site)] : [siteLink(ctx, run, site)]));
  return h("span", { dataset: { role: "graph-sites" } }, h("b", null, "in the graph: "), ...links);
}

export function resolutionFor(panel) {
  const dpr = Math.min(2, window.devicePixelRatio || 1);
  const w = (panel.clientWidth || document.documentElement.clientWidth || 1000) * dpr;
  return Math.max(500, Math.min(2000, Math.round(w)));
}

export async function renderLayer(panel, ctx) {
  const runs = await loadRuns(panel, ctx);
  if (!runs) return;
  const state = ctx.state;
  const run = pickRun(runs, state.run, (r) => Array.isArray(r.layers) && r.layers.length > 0);
  if (!run) {
    ctx.begin();
    panel.appendChild(messageBox("empty", "No run has BN layer data yet.", "Layer details appear once BatchNormCallback has logged a step."));
    panel.dataset.state = "empty";
    return;
  }
  const layers = run.layers.slice().sort((a, b) => a.index - b.index);
  const layerMeta = layers.find((l) => l.path === state.layer) || layers[0];
  const missingLayer = state.layer && state.layer !== layerMeta.path ? state.layer : null;
  let channel = state.channel !== undefined && state.channel !== null && state.channel !== "" ? Number(state.channel) : null;
  if (channel !== null && (!Number.isInteger(channel) || channel < 0 || channel >= layerMeta.channels)) channel = null;
  const bandKey = BANDS[state.band] ? state.band : "p";
  const band = BANDS[bandKey];
  const resolution = resolutionFor(panel);

  // Overlay: the selected runs that log this layer (matched by path), the shown run first.
  const chosen = new Set(selectedRuns(runs, state));
  const compared = [run, ...runs.filter((r) => r !== run && chosen.has(r.run) && (r.layers || []).some((l) => l.path === layerMeta.path))];
  const comparing = compared.length > 1 && chosen.has(run.run);
  let data;
  let loadError = null;
  let comparison = null;
  try {
    [data, comparison] = await Promise.all([
      api.layer(run.run, layerMeta.path, resolution, channel),
      comparing ? api.compare(layerMeta.path, compared.map((r) => r.run), resolution).catch((err) => ({ error: err })) : null,
    ]);
  } catch (err) {
    loadError = err;
  }
  if (!ctx.isCurrent()) return;
  ctx.begin();

  // Controls.
  const bandSelect = h("select", { dataset: { control: "band" }, on: { change: () => ctx.update({ band: bandSelect.value }) } });
  for (const [k, b] of Object.entries(BANDS)) bandSelect.appendChild(h("option", { value: k, selected: k === bandKey }, b.label));
  const chInput = h("input", {
    type: "number",
    min: 0,
    max: Math.max(0, layerMeta.channels - 1),
    step: 1,
    placeholder: `0–${Math.max(0, layerMeta.channels - 1)}`,
    style: { width: "90px" },
    dataset: { control: "channel" },
    "aria-label": "Channel index",
    value: channel === null ? "" : String(channel),
  });
  const showChannel = () => {
    const v = chInput.value.trim();
    if (v === "") ctx.update({ channel: "" });
    else {
      const k = Number(v);
      if (Number.isInteger(k) && k >= 0 && k < layerMeta.channels) ctx.update({ channel: String(k) });
      else chInput.setCustomValidity(`Channel must be 0–${layerMeta.channels - 1}`), chInput.reportValidity();
    }
  };
  chInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") showChannel();
  });
  chInput.addEventListener("input", () => chInput.setCustomValidity(""));
  panel.appendChild(h("h2", null, "Layer detail"));
  panel.appendChild(selectorFor(ctx, runs));
  panel.appendChild(
    h(
      "div",
      { class: "controls" },
      runSelect(
        runs.filter((r) => Array.isArray(r.layers) && r.layers.length),
        run.run,
        (v) => ctx.update({ run: v, layer: "", channel: "" }),
      ),
      layerNavigator(ctx, layers, layerMeta.path, state.lorder),
      h("label", null, "Band", bandSelect),
      h(
        "label",
        null,
        "Channel",
        chInput,
        h("button", { type: "button", class: "btn btn-small", dataset: { action: "show-channel" }, on: { click: showChannel } }, "Show"),
        channel !== null ? h("button", { type: "button", class: "btn btn-small", dataset: { action: "clear-channel" }, on: { click: () => ctx.update({ channel: "" }) } }, "Clear") : null,
      ),
    ),
  );
  if (missingLayer) panel.appendChild(messageBox("warning", "Layer not found in this run", `“${missingLayer}” is not logged in run “${run.run}”; showing “${layerMeta.path}”.`));
  if (loadError) {
    panel.appendChild(errorBox(loadError, `layer “${layerMeta.path}”`));
    panel.dataset.state = "error";
    return;
  }

  const cfg = data.config || {};
  const steps = Array.isArray(data.steps) ? data.steps : [];
  const root = h("div", {
    class: "layer-detail",
    dataset: {
      run: run.run,
      layer: layerMeta.path,
      points: steps.length,
      numSteps: layerMeta.num_steps,
      resolution,
      channel: channel === null ? "" : channel,
    },
  });
  const flag = (v) => (v === true ? "yes" : v === false ? "no" : "—");
  root.appendChild(
    h(
      "div",
      { class: "config-strip", dataset: { role: "config" } },
      h("span", null, h("b", null, "Layer "), h("code", null, cfg.path || layerMeta.path)),
      h("span", null, h("b", null, "Index "), String(cfg.index ?? layerMeta.index)),
      h("span", null, h("b", null, "Channels "), String(cfg.channels ?? layerMeta.channels)),
      h("span", null, h("b", null, "Axis "), String(cfg.axis ?? layerMeta.axis)),
      h("span", null, h("b", null, "Momentum "), fmt(cfg.momentum ?? layerMeta.momentum)),
      h("span", null, h("b", null, "ε "), fmt(cfg.epsilon ?? layerMeta.epsilon)),
      h("span", null, h("b", null, "Center "), flag(cfg.center)),
      h("span", null, h("b", null, "Scale "), flag(cfg.scale)),
      h("span", null, h("b", null, "Synchronized "), flag(cfg.synchronized)),
      h("span", null, h("b", null, "Renorm "), flag(cfg.renorm)),
      h("span", null, h("b", null, "Steps "), `${layerMeta.num_steps} logged, ${steps.length} plotted`),
      graphSites(ctx, run.run, data.graph_sites),
    ),
  );
  panel.appendChild(root);
  const charts = [];
  const overlays = comparison ? compareSection(runs, layerMeta.path, comparison) : null;
  if (overlays) root.appendChild(overlays.section);
  if (!steps.length) {
    root.appendChild(messageBox("info", "No steps logged for this layer yet."));
    if (overlays) overlays.draw();
    return;
  }
  if (overlays) charts.push(overlays.draw);

  const train = cssVar("--train");
  const infer = cssVar("--infer");
  const summary = data.summary || {};
  const grid = h("div", { class: "chart-grid" });
  root.appendChild(grid);
  const sync = "bn-layer";
  const add = (key, title, sub, series, opts = {}) => {
    const present = series.filter(Boolean);
    if (!present.length) return;
    const c = chartCard(key, title, sub, opts);
    grid.appendChild(c.card);
    charts.push(() => seriesChart(c.body, steps, present, { syncKey: sync, ...opts }));
  };
  const bandNote = `Line: mean across channels; band: ${band.label}.`;
  add("mean", "Mean: batch vs moving", bandNote, [
    summarySeries(summary, "batch_mean", "batch mean", train, band),
    summarySeries(summary, "moving_mean", "moving mean", infer, band),
  ]);
  add("variance", "Variance: batch vs moving", bandNote, [
    summarySeries(summary, "batch_variance", "batch variance", train, band),
    summarySeries(summary, "moving_variance", "moving variance", infer, band),
  ]);
  add("mean_shift", "Normalised mean shift", "|batch mean − moving mean| / √(moving var + ε). " + bandNote, [
    summarySeries(summary, "mean_shift", "mean shift", cssVar("--accent"), band),
  ]);
  add("log_var_ratio", "Log variance ratio", "log((batch var + ε) / (moving var + ε)); 0 = inference scales like training. " + bandNote, [
    summarySeries(summary, "log_var_ratio", "log var ratio", "#6a1b9a", band),
  ]);
  if (summary.gamma || summary.beta) {
    add("gamma_beta", "γ (scale) and β (offset)", bandNote, [
      summarySeries(summary, "gamma", "gamma", "#2e7d32", band),
      summarySeries(summary, "beta", "beta", "#00838f", band),
    ]);
  }
  const info = data.info || {};
  add(
    "momentum",
    "Momentum and the EMA's remaining initial weight",
    "momentum^steps: how much the moving statistics still remember their initial values (right axis).",
    [
      { label: "momentum", values: info.momentum, color: cssVar("--text-2"), stepped: true },
      { label: "EMA initial weight", values: data.ema_initial_weight, color: cssVar("--accent"), scale: "y2" },
    ],
    { y2: { label: "initial weight", range: [0, 1] }, yRangeFn: (_u, min, max) => [Math.min(isNum(min) ? min : 0.9, 0.9), Math.max(isNum(max) ? max : 1, 1)] },
  );
  add(
    "mode",
    "Mode",
    "training = 1 when the step normalised with batch statistics; trainable = 1 when the layer was trainable. Values per channel in the batch on the right axis.",
    [
      { label: "training", values: info.training, color: train, stepped: true },
      { label: "trainable", values: info.trainable, color: infer, stepped: true, dash: [4, 3] },
      Array.isArray(info.count) ? { label: "count", values: info.count, color: cssVar("--text-2"), scale: "y2", stepped: true } : null,
    ],
    { height: 160, yRange: [-0.05, 1.05], y2: Array.isArray(info.count) ? { label: "count" } : undefined },
  );

  if (data.replicas && Array.isArray(data.replicas.steps) && data.replicas.steps.length) {
    const replicas = replicaCharts(data.replicas, sync);
    for (const card of replicas.cards) grid.appendChild(card);
    charts.push(...replicas.draws);
  }

  if (data.calls && Array.isArray(data.calls.steps) && data.calls.steps.length) {
    const calls = callCharts(data.calls, sync);
    for (const card of calls.cards) grid.appendChild(card);
    charts.push(...calls.draws);
  }

  const ema = data.ema_error;
  if (ema && Array.isArray(ema.steps) && ema.steps.length) {
    const chart = emaErrorChart(ema, sync);
    grid.appendChild(chart.card);
    charts.push(chart.draw);
  } else {
    grid.appendChild(
      h("div", { class: "chart-card wide muted", dataset: { note: "ema-error" } }, "No EMA-vs-precise error logged for this layer: add tb_bn_plugin.PreciseStatsMonitor(log_dir, held_out_x) to model.fit's callbacks to measure it on a held sample each epoch."),
    );
  }

  // Heatmaps.
  const chSteps = Array.isArray(data.channel_steps) ? data.channel_steps : [];
  const maps = data.heatmaps || {};
  const pick = (k) => ctx.update({ channel: String(k) });
  const heat = (key, title, sub, matrix, diverging) => {
    if (!Array.isArray(matrix) || !matrix.length || !chSteps.length) return;
    const c = chartCard(`heatmap-${key}`, title, sub, { wide: true });
    c.body.classList.add("echart-body");
    c.body.dataset.heatmap = key;
    grid.appendChild(c.card);
    // Heatmaps are the costly part and sit below the fold: draw when near the viewport.
    c.body.style.height = `${Math.min(420, Math.max(180, matrix.length * 6 + 70))}px`;
    whenVisible(c.body, (el) => {
      if (el.isConnected) heatmap(el, chSteps, matrix, { diverging, label: key, onPick: pick });
    });
  };
  heat("mean_shift", "Channel × step: normalised mean shift", "Click a cell to show that channel.", maps.mean_shift, false);
  heat("log_var_ratio", "Channel × step: log variance ratio", "Blue: batch variance below moving; red: above. Click a cell to show that channel.", maps.log_var_ratio, true);
  if (!chSteps.length) {
    grid.appendChild(h("div", { class: "chart-card wide muted" }, "No per-channel snapshots logged for this layer yet: the heatmaps and the channel selector need them."));
  }

  // One channel on demand.
  const ch = data.channel;
  if (channel !== null && ch && ch.values) {
    const vals = ch.values;
    const chGrid = h("div", { class: "chart-grid", dataset: { role: "channel-charts", channel: ch.index } });
    root.appendChild(h("h3", null, `Channel ${ch.index}`));
    root.appendChild(chGrid);
    const addCh = (key, title, series) => {
      const present = series.filter((s) => s && Array.isArray(s.values));
      if (!present.length) return;
      const c = chartCard(key, title, `At the ${chSteps.length} steps with per-channel snapshots.`);
      chGrid.appendChild(c.card);
      charts.push(() => seriesChart(c.body, chSteps, present, { syncKey: "bn-channel" }));
    };
    addCh("channel-mean", `Channel ${ch.index}: mean`, [
      { label: "batch mean", values: vals.batch_mean, color: train },
      { label: "moving mean", values: vals.moving_mean, color: infer },
    ]);
    addCh("channel-variance", `Channel ${ch.index}: variance`, [
      { label: "batch variance", values: vals.batch_variance, color: train },
      { label: "moving variance", values: vals.moving_variance, color: infer },
    ]);
    addCh("channel-drift", `Channel ${ch.index}: drift`, [
      { label: "mean shift", values: vals.mean_shift, color: cssVar("--accent") },
      { label: "log var ratio", values: vals.log_var_ratio, color: "#6a1b9a" },
    ]);
    addCh("channel-gamma-beta", `Channel ${ch.index}: γ and β`, [
      vals.gamma ? { label: "gamma", values: vals.gamma, color: "#2e7d32" } : null,
      vals.beta ? { label: "beta", values: vals.beta, color: "#00838f" } : null,
    ]);
  } else if (channel !== null) {
    root.appendChild(messageBox("warning", `No per-channel values for channel ${channel}`, "The server answered without channel data."));
  }

  // Draw after the cards are in the DOM (widths known).
  for (const draw of charts) draw();
  const main = grid.querySelector('[data-chart="mean"]');
  if (main && isNum(Number(main.dataset.points))) root.dataset.plotted = main.dataset.points;
}

/**
 * The chosen layer across the selected runs (the compare route's answer),
 * one line per run in the run selector's colours. Returns the section and a
 * function drawing its charts once it is in the DOM.
 */
function compareSection(runs, path, comparison) {
  const section = h("section", { class: "compare-view", dataset: { role: "compare", layer: path } });
  section.appendChild(h("h3", null, "Across the selected runs"));
  if (comparison.error) {
    section.appendChild(errorBox(comparison.error, `layer “${path}” across the selected runs`));
    return { section, draw: () => {} };
  }
  const series = Array.isArray(comparison.runs) ? comparison.runs : [];
  section.dataset.runs = String(series.length);
  section.appendChild(
    h(
      "div",
      { class: "compare-legend" },
      series.map((r) =>
        h(
          "span",
          { class: "compare-run", dataset: { run: r.run } },
          h("span", { class: "run-swatch", style: { background: runColor(runs, r.run) }, "aria-hidden": "true" }),
          `${r.run} (momentum ${fmt(r.momentum)}, ${r.steps.length} points)`,
        ),
      ),
    ),
  );
  const grid = h("div", { class: "chart-grid" });
  section.appendChild(grid);
  const draws = [];
  for (const [stat, title] of COMPARE_CHARTS) {
    const lines = series
      .filter((r) => r.summary && r.summary[stat])
      .map((r) => ({ label: r.run, steps: r.steps, values: r.summary[stat].mean, color: runColor(runs, r.run) }));
    if (!lines.length) continue;
    const c = overlayCard(`compare-${stat}`, title, "Mean across channels, one line per run.", lines, { syncKey: "bn-compare" });
    grid.appendChild(c.card);
    draws.push(c.draw);
  }
  return { section, draw: () => draws.forEach((d) => d()) };
}

/**
 * Per-replica batch statistics (tf.distribute, unsynchronised layers): one
 * line per replica beside the global statistics, and the layer's
 * replica-batch-too-small finding with its evidence.
 */
function replicaCharts(replicas, syncKey) {
  return groupCharts(replicas, syncKey, {
    role: "replica",
    group: "replica",
    title: "per replica",
    note: "Mean across channels; each replica normalised with its own batch statistics. Thick: the global batch.",
    total: { label: "global", values: replicas.global || {} },
    quiet: (n) => `${n} replicas: no replica-batch-too-small finding for this layer.`,
  });
}

/**
 * Per-call batch statistics of a layer called several times in one training
 * step (a shared layer): one line per call, the calls' divergence (the
 * shared-layer measure, median over channels) against its thresholds, and the
 * layer's shared-layer finding.
 */
function callCharts(calls, syncKey) {
  const out = groupCharts(calls, syncKey, {
    role: "call",
    group: "call",
    title: "per call",
    note: "Mean across channels; each call of the layer in a step normalised with its own batch statistics (call 0 first).",
    total: null,
    quiet: (n) => `${n} calls per step on similarly distributed batches: no shared-layer finding for this layer.`,
  });
  const limits = calls.thresholds || {};
  const c = chartCard("calls-divergence", "Difference between the calls", "Median over channels: largest standardized mean difference |μj − μk| / √((σ²j + σ²k)/2 + ε) and |log variance ratio| between two calls. Dashed: the shared-layer thresholds.");
  out.cards.splice(2, 0, c.card);
  const flat = (v) => (Array.isArray(calls.steps) ? calls.steps.map(() => v) : []);
  out.draws.push(() =>
    seriesChart(
      c.body,
      calls.steps,
      [
        { label: "mean shift", values: calls.mean_shift, color: PALETTE[0] },
        { label: "|log var ratio|", values: calls.log_var_ratio, color: PALETTE[1] },
        { label: "shift threshold", values: flat(limits.mean_shift), color: PALETTE[0], dash: [4, 3] },
        { label: "log var threshold", values: flat(limits.log_var_ratio), color: PALETTE[1], dash: [4, 3] },
      ],
      { syncKey },
    ),
  );
  return out;
}

/** Charts of batch statistics normalised in separate groups (replicas or calls), and the finding. */
function groupCharts(groups, syncKey, kind) {
  const steps = groups.steps;
  const text = cssVar("--text");
  const cards = [];
  const draws = [];
  for (const [stat, title] of [["batch_mean", "Batch mean"], ["batch_variance", "Batch variance"]]) {
    const perGroup = Array.isArray(groups[stat]) ? groups[stat] : [];
    const c = chartCard(`${kind.role}s-${stat === "batch_mean" ? "mean" : "variance"}`, `${title} ${kind.title}`, kind.note);
    cards.push(c.card);
    const series = perGroup.map((values, i) => ({ label: `${kind.group} ${i}`, values, color: PALETTE[i % PALETTE.length] }));
    if (kind.total) series.push({ label: kind.total.label, values: kind.total.values[stat], color: text, width: 2.6 });
    draws.push(() => seriesChart(c.body, steps, series, { syncKey }));
  }
  const f = groups.finding;
  const role = `${kind.role}-finding`;
  cards.push(
    f
      ? h(
          "div",
          { class: `chart-card wide ${role}`, dataset: { role, code: f.code, severity: f.severity } },
          h("div", { class: "finding-head" }, severityBadge(f.severity), h("span", { class: "finding-title" }, f.title), h("code", { class: "finding-code" }, f.code)),
          evidenceTable(f.evidence),
          h("p", { class: "fix" }, f.fix),
        )
      : h("div", { class: "chart-card wide muted", dataset: { role } }, kind.quiet(Array.isArray(groups.count) ? groups.count.length : 0)),
  );
  return { cards, draws };
}
