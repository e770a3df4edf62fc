// Chart helpers on top of uPlot (series, bands, sparklines) and ECharts
// (heatmaps, bar charts). No hand-drawn chart code: these only map our data
// onto the libraries' options.
//
// Every chart container gets data-points = number of x values handed to the
// chart, so tests can check that all returned steps are plotted.
import uPlot from "uplot";
import * as echarts from "echarts/core";
import { HeatmapChart, BarChart } from "echarts/charts";
import { GridComponent, TooltipComponent, VisualMapComponent, LegendComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import { isNum, fmt, tickLabels } from "./format.js";

echarts.use([HeatmapChart, BarChart, GridComponent, TooltipComponent, VisualMapComponent, LegendComponent, CanvasRenderer]);

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function isDark() {
  return document.documentElement.classList.contains("dark");
}

/** Charts created in the current view, disposed on view change. */
const live = new Set();
export function disposeCharts(root) {
  for (const chart of [...live]) {
    if (!root || root.contains(chart.el)) {
      chart.dispose();
      live.delete(chart);
    }
  }
}

function track(el, dispose, resize) {
  const entry = { el, dispose: null };
  let ro = null;
  if (resize && typeof ResizeObserver !== "undefined") {
    let lastW = el.clientWidth;
    ro = new ResizeObserver(() => {
      const w = el.clientWidth;
      if (w > 0 && Math.abs(w - lastW) > 1) {
        lastW = w;
        resize(w);
      }
    });
    ro.observe(el);
  }
  entry.dispose = () => {
    if (ro) ro.disconnect();
    dispose();
  };
  live.add(entry);
  return entry;
}

function axisStyle() {
  const text = cssVar("--text-2") || "#616161";
  const grid = cssVar("--grid") || "rgba(0,0,0,0.07)";
  return {
    stroke: text,
    grid: { stroke: grid, width: 1 },
    ticks: { stroke: grid, width: 1 },
    font: `11px ${cssVar("--font") || "sans-serif"}`,
  };
}

function fmtTick(_u, vals) {
  return tickLabels(vals);
}

/**
 * An axis as wide as its longest tick label (uPlot's `size` hook), so labels
 * such as "-1.25M" are never clipped, and no wider than needed.
 */
function axisSize(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1 && axis._size) return axis._size; // settled: avoid re-measuring each layout cycle
  const longest = (values || []).reduce((acc, v) => (v && v.length > acc.length ? v : acc), "");
  let width = 0;
  if (longest) {
    u.ctx.font = axis.font[0];
    width = u.ctx.measureText(longest).width / (window.devicePixelRatio || 1);
  }
  return Math.ceil(width + axis.ticks.size + axis.gap + 4);
}

function withAlpha(color, alpha) {
  // Accept #rrggbb or rgb()/rgba(); fall back to the color itself.
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (m) {
    const n = parseInt(m[1], 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }
  return color;
}

// Tick spacings of the step axis: whole steps only (a run logged at steps 1-4 has no step 1.5).
const STEP_INCRS = [1, 2, 5].flatMap((m) => Array.from({ length: 10 }, (_, e) => m * 10 ** e)).sort((a, b) => a - b);

export const PALETTE = ["#1976d2", "#e65100", "#2e7d32", "#8e24aa", "#00838f", "#c2185b", "#6d4c41", "#546e7a", "#f9a825", "#3949ab"];

function cleanValues(values, n, positiveOnly) {
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const v = values ? values[i] : null;
    out[i] = isNum(v) && (!positiveOnly || v > 0) ? v : null;
  }
  return out;
}

/**
 * A time-series chart over steps.
 * series: [{label, values, color, width, dash, stepped, band: {lo, hi}, scale, spanGaps}]
 * (spanGaps: draw across missing values, for runs overlaid on the union of their steps)
 * opts: {height, yLabel, logY, syncKey, y2: {label, range}}
 */
export function seriesChart(container, steps, series, opts = {}) {
  const n = steps.length;
  const xs = Float64Array.from(steps);
  const data = [xs];
  const uSeries = [{ label: opts.xLabel || "step", value: (_u, v) => (v === null || v === undefined ? "—" : String(v)) }];
  const bands = [];
  const hiddenLegend = [];
  const logY = Boolean(opts.logY);
  for (const sr of series) {
    const color = sr.color || PALETTE[(uSeries.length - 1) % PALETTE.length];
    const values = cleanValues(sr.values, n, logY && (sr.scale || "y") === "y");
    data.push(values);
    uSeries.push({
      label: sr.label,
      stroke: color,
      width: sr.width || 1.6,
      dash: sr.dash,
      scale: sr.scale || "y",
      spanGaps: Boolean(sr.spanGaps),
      points: { show: n <= 60 },
      paths: sr.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
      value: (_u, v) => (v === null || v === undefined ? "—" : fmt(v)),
    });
    const mainIdx = uSeries.length - 1;
    if (sr.band && sr.band.lo && sr.band.hi) {
      data.push(cleanValues(sr.band.hi, n, logY));
      uSeries.push({ label: `${sr.label} hi`, stroke: "transparent", width: 0, scale: sr.scale || "y", points: { show: false }, spanGaps: false });
      const hiIdx = uSeries.length - 1;
      data.push(cleanValues(sr.band.lo, n, logY));
      uSeries.push({ label: `${sr.label} lo`, stroke: "transparent", width: 0, scale: sr.scale || "y", points: { show: false }, spanGaps: false });
      const loIdx = uSeries.length - 1;
      bands.push({ series: [hiIdx, loIdx], fill: withAlpha(color, 0.16) });
      hiddenLegend.push(hiIdx, loIdx);
    }
    void mainIdx;
  }
  const ax = axisStyle();
  const axes = [
    { ...ax, label: opts.xLabel || undefined, size: 34, incrs: STEP_INCRS, values: (_u, vals) => vals.map((v) => (v === null ? "" : fmt(v, 4))) },
    { ...ax, label: opts.yLabel || undefined, size: axisSize, values: fmtTick },
  ];
  const scales = { x: { time: false }, y: logY ? { distr: 3 } : { auto: true } };
  if (opts.y2) {
    scales.y2 = { auto: !opts.y2.range, range: opts.y2.range };
    axes.push({ ...ax, scale: "y2", side: 1, label: opts.y2.label, size: axisSize, grid: { show: false }, values: fmtTick });
  }
  if (opts.yRange) scales.y = { ...scales.y, auto: false, range: opts.yRange };
  if (opts.yRangeFn) scales.y = { ...scales.y, range: opts.yRangeFn };
  const width = Math.max(200, container.clientWidth || 560);
  const uopts = {
    width,
    height: opts.height || 220,
    scales,
    axes,
    series: uSeries,
    bands,
    legend: { live: true },
    cursor: opts.syncKey ? { sync: { key: opts.syncKey }, drag: { x: true, y: false } } : { drag: { x: true, y: false } },
  };
  const u = new uPlot(uopts, data, container);
  // Band edges stay out of the legend (the band itself is drawn).
  const rows = u.root.querySelectorAll(".u-legend .u-series");
  for (const idx of hiddenLegend) if (rows[idx]) rows[idx].style.display = "none";
  container.dataset.points = String(n);
  container.dataset.series = String(series.length);
  container.dataset.yScale = logY ? "log" : "linear";
  container.dataset.chart = container.dataset.chart || "series";
  track(
    container,
    () => u.destroy(),
    (w) => u.setSize({ width: Math.max(200, w), height: opts.height || 220 }),
  );
  return u;
}

/** A tiny line chart without axes, for table rows. */
export function sparkline(container, steps, values, opts = {}) {
  const n = Math.min(steps.length, values.length);
  const color = opts.color || cssVar("--accent") || "#f57c00";
  const u = new uPlot(
    {
      width: opts.width || 140,
      height: opts.height || 28,
      pxAlign: false,
      cursor: { show: false },
      select: { show: false },
      legend: { show: false },
      scales: { x: { time: false }, y: { auto: true } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: color, width: 1.3, fill: withAlpha(color, 0.14), points: { show: false }, spanGaps: true }],
      padding: [3, 2, 3, 2],
    },
    [Float64Array.from(steps.slice(0, n)), cleanValues(values, n, false)],
    container,
  );
  container.dataset.points = String(n);
  track(container, () => u.destroy(), null);
  return u;
}

function quantileAbs(matrix, q) {
  const vals = [];
  for (const row of matrix) for (const v of row || []) if (isNum(v)) vals.push(Math.abs(v));
  if (!vals.length) return 1;
  vals.sort((a, b) => a - b);
  return vals[Math.min(vals.length - 1, Math.floor(q * (vals.length - 1)))] || 1e-12;
}

/**
 * Channel x step heatmap. matrix: C rows of T values (aligned with steps).
 * opts: {diverging, label, onPick(channel), height}
 */
export function heatmap(container, steps, matrix, opts = {}) {
  const C = matrix.length;
  const T = steps.length;
  const data = [];
  for (let c = 0; c < C; c++) {
    const row = matrix[c] || [];
    for (let t = 0; t < T; t++) {
      const v = row[t];
      if (isNum(v)) data.push([t, c, v]);
    }
  }
  const hi = quantileAbs(matrix, 0.99);
  const dark = isDark();
  const text = cssVar("--text-2") || "#666";
  const diverging = Boolean(opts.diverging);
  const colors = diverging
    ? dark
      ? ["#64b5f6", "#303030", "#ff8a65"]
      : ["#1565c0", "#f7f7f7", "#c62828"]
    : dark
      ? ["#303030", "#8d6e63", "#ffb74d", "#fff3e0"]
      : ["#fff8f0", "#ffcc80", "#f57c00", "#7f2704"];
  const height = opts.height || Math.min(420, Math.max(180, C * 6 + 70));
  container.style.height = `${height}px`;
  const chart = echarts.init(container, null, { renderer: "canvas" });
  chart.setOption({
    animation: false,
    grid: { left: 52, right: 92, top: 10, bottom: 40 },
    tooltip: {
      renderMode: "richText",
      formatter: (p) => `channel ${p.value[1]}, step ${steps[p.value[0]]}\n${opts.label || "value"}: ${fmt(p.value[2])}`,
    },
    xAxis: {
      type: "category",
      data: steps.map(String),
      name: "step",
      nameLocation: "middle",
      nameGap: 26,
      axisLabel: { color: text, interval: Math.max(0, Math.ceil(T / 12) - 1) },
      axisLine: { lineStyle: { color: text } },
    },
    yAxis: {
      type: "category",
      data: Array.from({ length: C }, (_v, i) => String(i)),
      name: "channel",
      nameLocation: "middle",
      nameGap: 36,
      inverse: true,
      axisLabel: { color: text, interval: Math.max(0, Math.ceil(C / Math.max(4, Math.floor((height - 60) / 14))) - 1) },
      axisLine: { lineStyle: { color: text } },
    },
    visualMap: {
      type: "continuous",
      min: diverging ? -hi : 0,
      max: hi,
      calculable: true,
      realtime: false,
      orient: "vertical",
      right: 4,
      top: 10,
      itemHeight: Math.max(60, height - 90),
      textStyle: { color: text },
      formatter: (v) => fmt(v, 3),
      inRange: { color: colors },
    },
    series: [
      {
        type: "heatmap",
        data,
        progressive: 4000,
        progressiveThreshold: 8000,
        emphasis: { disabled: true },
      },
    ],
  });
  if (opts.onPick) chart.on("click", (p) => p && p.value && opts.onPick(p.value[1]));
  container.dataset.points = String(T);
  container.dataset.channels = String(C);
  track(
    container,
    () => chart.dispose(),
    () => chart.resize(),
  );
  return chart;
}

/**
 * Horizontal bar chart: categories (e.g. layer paths) x several series.
 * series: [{label, values, color}]
 */
export function barChart(container, categories, series, opts = {}) {
  const text = cssVar("--text-2") || "#666";
  const height = opts.height || Math.max(160, categories.length * (14 + 6 * series.length) + 70);
  container.style.height = `${height}px`;
  const chart = echarts.init(container, null, { renderer: "canvas" });
  const short = (name) => (name.length > 42 ? `…${name.slice(-41)}` : name);
  chart.setOption({
    animation: false,
    grid: { left: 12, right: 24, top: 30, bottom: 24, containLabel: true },
    legend: { top: 0, textStyle: { color: cssVar("--text") || "#222" } },
    tooltip: {
      trigger: "axis",
      renderMode: "richText",
      axisPointer: { type: "shadow" },
      formatter: (items) => {
        const list = Array.isArray(items) ? items : [items];
        if (!list.length) return "";
        const head = categories[list[0].dataIndex];
        return [head, ...list.map((it) => `${it.seriesName}: ${fmt(it.value)}`)].join("\n");
      },
    },
    xAxis: { type: "value", axisLabel: { color: text, formatter: (v) => fmt(v, 3) }, splitLine: { lineStyle: { color: cssVar("--grid") || "#eee" } } },
    yAxis: {
      type: "category",
      inverse: true,
      data: categories,
      axisLabel: { color: text, formatter: short },
      axisLine: { lineStyle: { color: text } },
    },
    series: series.map((sr, i) => ({
      name: sr.label,
      type: "bar",
      data: sr.values.map((v) => (isNum(v) ? v : null)),
      itemStyle: { color: sr.color || PALETTE[i % PALETTE.length] },
      barMaxWidth: 14,
    })),
  });
  if (opts.onPick) chart.on("click", (p) => p && opts.onPick(categories[p.dataIndex]));
  container.dataset.points = String(categories.length);
  track(
    container,
    () => chart.dispose(),
    () => chart.resize(),
  );
  return chart;
}
