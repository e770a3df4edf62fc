// Gap: model-level train vs inference loss (and metrics) over time; per-layer
// compound and local gap (latest as bars + table, and over time); attribution.
import { h, messageBox } from "../dom.js";
import { api } from "../api.js";
import { seriesChart, barChart, cssVar, PALETTE } from "../charts.js";
import { fmt, isNum, last } from "../format.js";
import { loadRuns, pickRun, runSelect, errorBox, layerLink, selectorFor } from "./common.js";
import { overlayCard } from "./overlay.js";
import { selectedRuns, runColor } from "../selection.js";

const TOP_N = 8;

function card(key, title, sub, wide) {
  const body = h("div", { class: "chart-body", dataset: { chart: key } });
  return { body, card: h("figure", { class: ["chart-card", wide ? "wide" : null], dataset: { card: key } }, h("figcaption", null, title), sub ? h("div", { class: "chart-sub" }, sub) : null, body) };
}

export async function renderGap(panel, ctx) {
  const runs = await loadRuns(panel, ctx);
  if (!runs) return;
  const run = pickRun(runs, ctx.state.run);
  // Overlay: every selected run with a logged gap (a run whose gap fails to load is left out).
  const chosen = selectedRuns(runs, ctx.state).filter((name) => runs.find((r) => r.run === name).gap);
  let data;
  let loadError = null;
  let overlaid = [];
  try {
    [data, overlaid] = await Promise.all([
      api.gap(run.run),
      chosen.length > 1 ? Promise.all(chosen.map((name) => api.gap(name).catch(() => null))) : [],
    ]);
  } catch (err) {
    loadError = err;
  }
  if (!ctx.isCurrent()) return;
  ctx.begin();
  panel.appendChild(h("h2", null, "Train / inference gap"));
  panel.appendChild(selectorFor(ctx, runs));
  // Losses on a log axis: an inference loss of 1e6 next to a train loss of 3 leaves the latter flat at 0 on a linear one.
  const logY = ctx.state.glog === "1";
  const logBox = h("input", { type: "checkbox", checked: logY, dataset: { control: "gap-log" }, on: { change: () => ctx.update({ glog: logBox.checked ? "1" : "" }) } });
  const logToggle = h("label", { title: "Plot the losses and metrics on a logarithmic axis" }, logBox, "Log scale");
  const overlay = gapOverlay(runs, (overlaid || []).filter((g) => g && Array.isArray(g.steps) && g.steps.length), logY);
  if (overlay) {
    panel.appendChild(h("div", { class: "controls" }, logToggle));
    panel.appendChild(overlay.card);
    overlay.draw();
  }
  panel.appendChild(h("div", { class: "controls" }, runSelect(runs, run.run, (v) => ctx.update({ run: v })), overlay ? null : logToggle));
  if (loadError) {
    panel.appendChild(errorBox(loadError, `the gap of run “${run.run}”`));
    panel.dataset.state = "error";
    return;
  }
  const steps = Array.isArray(data.steps) ? data.steps : [];
  const layerData = data.layers && typeof data.layers === "object" ? data.layers : {};
  const root = h("div", { class: "gap-view", dataset: { run: run.run, points: steps.length } });
  panel.appendChild(root);
  if (!steps.length) {
    root.appendChild(
      messageBox(
        "info",
        "No train/inference gap logged for this run.",
        "The gap compares the model's loss with batch statistics (training mode) against moving statistics (inference mode) on the same data; it is logged when the callback is given data to evaluate it on.",
      ),
    );
    panel.dataset.state = "empty";
    return;
  }
  const train = cssVar("--train");
  const infer = cssVar("--infer");
  const grid = h("div", { class: "chart-grid" });
  root.appendChild(grid);
  const draws = [];

  const loss = card("gap-loss", "Loss: training mode vs inference mode", "Same batches evaluated with batch statistics (training) and with moving statistics (inference).");
  grid.appendChild(loss.card);
  draws.push(() =>
    seriesChart(
      loss.body,
      steps,
      [
        { label: "train loss", values: data.train_loss, color: train },
        { label: "inference loss", values: data.inference_loss, color: infer },
      ],
      { syncKey: "bn-gap", logY },
    ),
  );
  for (const [name, m] of Object.entries(data.metrics || {})) {
    const c = card("gap-metric", `Metric: ${name}`, null);
    c.body.dataset.metric = name;
    grid.appendChild(c.card);
    draws.push(() =>
      seriesChart(
        c.body,
        steps,
        [
          { label: `train ${name}`, values: m.train, color: train },
          { label: `inference ${name}`, values: m.inference, color: infer },
        ],
        { syncKey: "bn-gap", logY },
      ),
    );
  }

  // Per-layer: latest values in model order (order of the runs route).
  const runLayers = (run.layers || []).slice().sort((a, b) => a.index - b.index).map((l) => l.path);
  const paths = runLayers.filter((p) => p in layerData);
  for (const p of Object.keys(layerData)) if (!paths.includes(p)) paths.push(p);
  const latest = paths.map((p) => {
    const d = layerData[p] || {};
    return {
      path: p,
      compound: last(d.compound),
      local: last(d.local),
      local_derived: last(d.local_derived),
      attribution: last(d.attribution),
    };
  });
  const hasAttribution = latest.some((r) => isNum(r.attribution));

  if (paths.length) {
    const bars = card("gap-layers", "Per-layer gap (latest)", "Compound: gap of the model up to this layer; local: this layer's own contribution. Click a bar to open the layer.", true);
    bars.body.classList.add("echart-body");
    grid.appendChild(bars.card);
    draws.push(() =>
      barChart(
        bars.body,
        paths,
        [
          { label: "compound gap", values: latest.map((r) => r.compound), color: cssVar("--accent") },
          { label: "local gap", values: latest.map((r) => r.local), color: "#6a1b9a" },
        ],
        { onPick: (p) => ctx.open("layer", { run: run.run, layer: p, channel: "" }) },
      ),
    );

    // Over time: the TOP_N layers with the largest latest compound gap.
    const ranked = latest.filter((r) => isNum(r.compound)).sort((a, b) => Math.abs(b.compound) - Math.abs(a.compound)).slice(0, TOP_N);
    if (ranked.length) {
      const over = card("gap-layers-time", `Compound gap over time (top ${ranked.length} layers)`, "Layers with the largest latest compound gap.", true);
      grid.appendChild(over.card);
      draws.push(() =>
        seriesChart(
          over.body,
          steps,
          ranked.map((r, i) => ({ label: r.path, values: layerData[r.path].compound, color: PALETTE[i % PALETTE.length] })),
          { syncKey: "bn-gap", height: 260 },
        ),
      );
      const localRanked = latest.filter((r) => isNum(r.local)).sort((a, b) => Math.abs(b.local) - Math.abs(a.local)).slice(0, TOP_N);
      if (localRanked.length) {
        const lo = card("gap-local-time", `Local gap over time (top ${localRanked.length} layers)`, "Layers with the largest latest local gap.", true);
        grid.appendChild(lo.card);
        draws.push(() =>
          seriesChart(
            lo.body,
            steps,
            localRanked.map((r, i) => ({ label: r.path, values: layerData[r.path].local, color: PALETTE[i % PALETTE.length] })),
            { syncKey: "bn-gap", height: 260 },
          ),
        );
      }
    }
    if (hasAttribution) {
      const at = card("gap-attribution", "Attribution (latest)", "Share of the model's gap attributed to each layer.", true);
      at.body.classList.add("echart-body");
      grid.appendChild(at.card);
      draws.push(() =>
        barChart(at.body, paths, [{ label: "attribution", values: latest.map((r) => r.attribution), color: "#00838f" }], {
          onPick: (p) => ctx.open("layer", { run: run.run, layer: p, channel: "" }),
        }),
      );
    }

    // Table.
    const tbody = h(
      "tbody",
      null,
      latest.map((r) =>
        h(
          "tr",
          { dataset: { layer: r.path, compound: isNum(r.compound) ? r.compound : "", local: isNum(r.local) ? r.local : "" } },
          h("td", { class: "layer-cell" }, layerLink(ctx, run.run, r.path)),
          h("td", { class: "num" }, fmt(r.compound)),
          h("td", { class: "num" }, fmt(r.local)),
          h("td", { class: "num" }, fmt(r.local_derived)),
          hasAttribution ? h("td", { class: "num" }, fmt(r.attribution)) : null,
        ),
      ),
    );
    root.appendChild(h("h3", null, "Per-layer gap, latest values"));
    root.appendChild(
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "data gap-table", dataset: { table: "gap" } },
          h(
            "thead",
            null,
            h(
              "tr",
              null,
              h("th", null, "Layer"),
              h("th", { class: "num" }, "Compound"),
              h("th", { class: "num" }, "Local"),
              h("th", { class: "num", title: "Local gap derived from consecutive compound gaps" }, "Local (derived)"),
              hasAttribution ? h("th", { class: "num" }, "Attribution") : null,
            ),
          ),
          tbody,
        ),
      ),
    );
  } else {
    root.appendChild(messageBox("info", "No per-layer gap logged for this run."));
  }
  for (const d of draws) d();
}

/** The selected runs' train (solid) and inference (dashed) losses on one chart; null under two runs. */
function gapOverlay(runs, gaps, logY) {
  if (gaps.length < 2) return null;
  const lines = gaps.flatMap((g) => [
    { label: `${g.run} · train`, steps: g.steps, values: g.train_loss, color: runColor(runs, g.run) },
    { label: `${g.run} · inference`, steps: g.steps, values: g.inference_loss, color: runColor(runs, g.run), dash: [6, 4] },
  ]);
  const c = overlayCard(
    "gap-compare",
    `Loss across ${gaps.length} selected runs: training mode vs inference mode`,
    "Solid: train loss (batch statistics); dashed: inference loss (moving statistics). One colour per run.",
    lines,
    { wide: true, height: 280, logY },
  );
  c.card.dataset.runs = String(gaps.length);
  return c;
}
