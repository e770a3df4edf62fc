// Overlays of several runs on one chart: each run's series on the union of
// their steps (runs log at different steps), one colour per run.
import { h } from "../dom.js";
import { seriesChart } from "../charts.js";

/**
 * entries: [{steps, values}] -> {steps: sorted union, values: one array per
 * entry aligned with it, null where the entry has no value at that step}.
 */
export function alignSteps(entries) {
  const union = [...new Set(entries.flatMap((e) => e.steps))].sort((a, b) => a - b);
  const at = new Map(union.map((s, i) => [s, i]));
  const values = entries.map((e) => {
    const out = new Array(union.length).fill(null);
    e.steps.forEach((s, i) => {
      out[at.get(s)] = e.values ? e.values[i] ?? null : null;
    });
    return out;
  });
  return { steps: union, values };
}

/** A chart card drawing `lines` ([{label, steps, values, color, dash}]) over their aligned steps. */
export function overlayCard(key, title, sub, lines, opts = {}) {
  const body = h("div", { class: "chart-body", dataset: { chart: key } });
  const card = h("figure", { class: ["chart-card", opts.wide ? "wide" : null], dataset: { card: key } }, h("figcaption", null, title), sub ? h("div", { class: "chart-sub" }, sub) : null, body);
  const aligned = alignSteps(lines);
  const draw = () =>
    seriesChart(
      body,
      aligned.steps,
      lines.map((l, i) => ({ label: l.label, values: aligned.values[i], color: l.color, dash: l.dash, spanGaps: true })),
      { syncKey: opts.syncKey, height: opts.height, logY: opts.logY },
    );
  return { card, draw };
}
