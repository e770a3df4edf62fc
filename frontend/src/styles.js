// All styles, injected as one <style> element by JS (TensorBoard's CSP allows
// 'unsafe-inline' styles and 'self' stylesheets; a <style> element keeps the
// plugin a single ES module with nothing else to serve).
import uplotCss from "uplot/dist/uPlot.min.css";

const css = String.raw`
:root {
  --font: Roboto, "Helvetica Neue", "Segoe UI", system-ui, -apple-system, Arial, sans-serif;
  --mono: "Roboto Mono", ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  --accent: #f57c00;
  --accent-soft: rgba(245, 124, 0, 0.12);
  --bg: #ffffff;
  --bg-alt: #f5f5f5;
  --card: #ffffff;
  --border: #e0e0e0;
  --text: #212121;
  --text-2: #616161;
  --link: #1565c0;
  --train: #e65100;
  --train-soft: rgba(230, 81, 0, 0.16);
  --infer: #1565c0;
  --infer-soft: rgba(21, 101, 192, 0.16);
  --sev-error: #c62828;
  --sev-error-bg: #ffebee;
  --sev-warning: #8d5a00;
  --sev-warning-bg: #fff3cd;
  --sev-info: #37474f;
  --sev-info-bg: #eceff1;
  --ok: #2e7d32;
  --grid: rgba(0, 0, 0, 0.07);
  --focus: #f57c00;
  color-scheme: light;
}
:root.dark {
  --accent: #ef6c00;
  --accent-soft: rgba(239, 108, 0, 0.22);
  --bg: #303030;
  --bg-alt: #3a3a3a;
  --card: #383838;
  --border: #555555;
  --text: #e8e8e8;
  --text-2: #b0b0b0;
  --link: #82b1ff;
  --train: #ffa040;
  --train-soft: rgba(255, 160, 64, 0.2);
  --infer: #64b5f6;
  --infer-soft: rgba(100, 181, 246, 0.2);
  --sev-error: #ff8a80;
  --sev-error-bg: #4a2626;
  --sev-warning: #ffd54f;
  --sev-warning-bg: #4a3f1c;
  --sev-info: #cfd8dc;
  --sev-info-bg: #3f4549;
  --ok: #81c784;
  --grid: rgba(255, 255, 255, 0.09);
  color-scheme: dark;
}
html, body { margin: 0; padding: 0; background: var(--bg); color: var(--text); }
/* Scrolling to an element (a site link, a card) stops below the sticky header, not under it. */
html { scroll-padding-top: 56px; }
body { font: 13px/1.45 var(--font); }
* { box-sizing: border-box; }
button, input, select { font: inherit; color: inherit; }
:focus-visible { outline: 2px solid var(--focus); outline-offset: 2px; }
code, .mono { font-family: var(--mono); font-size: 12px; }
.bn-app { min-height: 100vh; display: flex; flex-direction: column; }
.bn-header { position: sticky; top: 0; z-index: 5; display: flex; align-items: flex-end; gap: 16px;
  padding: 0 16px; background: var(--bg); border-bottom: 1px solid var(--border); }
.bn-tabs { display: flex; gap: 2px; flex-wrap: wrap; }
.bn-tab { appearance: none; background: none; border: none; border-bottom: 2px solid transparent;
  padding: 12px 14px 10px; cursor: pointer; color: var(--text-2); font-weight: 500; letter-spacing: .02em;
  text-transform: uppercase; font-size: 12.5px; }
.bn-tab:hover { color: var(--text); background: var(--bg-alt); }
.bn-tab[aria-selected="true"] { color: var(--accent); border-bottom-color: var(--accent); }
.bn-toolbar { margin-left: auto; display: flex; align-items: center; gap: 10px; padding: 6px 0; color: var(--text-2); font-size: 12px; }
.bn-main { padding: 14px 16px 32px; flex: 1; }
.bn-panel[hidden] { display: none; }
h2 { font-size: 16px; font-weight: 500; margin: 4px 0 10px; }
h3 { font-size: 14px; font-weight: 500; margin: 16px 0 8px; }
.muted { color: var(--text-2); }
.btn { appearance: none; border: 1px solid var(--border); background: var(--card); color: var(--text);
  border-radius: 4px; padding: 5px 10px; cursor: pointer; line-height: 1.2; }
.btn:hover { border-color: var(--accent); }
.btn-primary { background: var(--accent); border-color: var(--accent); color: #fff; }
.btn-small { padding: 2px 7px; font-size: 11.5px; }
.linklike { appearance: none; background: none; border: none; padding: 0; color: var(--link); cursor: pointer;
  text-align: left; font: inherit; overflow-wrap: anywhere; }
.linklike:hover { text-decoration: underline; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 10px 16px; margin: 0 0 12px; }
.controls label { display: inline-flex; align-items: center; gap: 6px; color: var(--text-2); }
.controls select, .controls input { background: var(--card); border: 1px solid var(--border); border-radius: 4px; padding: 4px 6px; color: var(--text); }
.controls select { max-width: 420px; }
input[type="search"] { min-width: 260px; }
.message { border: 1px solid var(--border); border-left: 4px solid var(--text-2); background: var(--card);
  padding: 12px 14px; border-radius: 4px; margin: 8px 0 12px; max-width: 960px; }
.message-error { border-left-color: var(--sev-error); }
.message-warning { border-left-color: var(--sev-warning); }
.message-empty, .message-info { border-left-color: var(--accent); }
.message-title { font-weight: 500; margin-bottom: 4px; word-break: break-word; }
.message-body { color: var(--text-2); word-break: break-word; }
.loading { display: flex; align-items: center; gap: 8px; color: var(--text-2); padding: 12px 0; }
.spinner { width: 14px; height: 14px; border: 2px solid var(--border); border-top-color: var(--accent); border-radius: 50%;
  animation: bn-spin .8s linear infinite; }
@keyframes bn-spin { to { transform: rotate(360deg); } }
.copy-buffer { position: fixed; left: -9999px; top: 0; opacity: 0; }

/* cards & summaries */
.run-cards { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 12px; }
.run-card { background: var(--card); border: 1px solid var(--border); border-radius: 4px; padding: 8px 12px; min-width: 220px; max-width: 420px; }
.run-card .run-name { font-weight: 500; word-break: break-all; }
.run-card .kv { color: var(--text-2); font-size: 12px; }
.run-errors { margin: 4px 0 0; padding-left: 18px; color: var(--sev-error); font-size: 12px; }
.kv-grid { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 12px; }
.kv-grid dt { color: var(--text-2); }
.kv-grid dd { margin: 0; word-break: break-all; }
.config-strip { display: flex; flex-wrap: wrap; gap: 6px 18px; background: var(--card); border: 1px solid var(--border);
  border-radius: 4px; padding: 8px 12px; margin-bottom: 12px; font-size: 12px; }
.config-strip span b { font-weight: 500; }

/* tables */
.table-wrap { overflow-x: auto; border: 1px solid var(--border); border-radius: 4px; background: var(--card); }
table.data { border-collapse: collapse; width: 100%; font-size: 12.5px; }
table.data th, table.data td { padding: 5px 8px; border-bottom: 1px solid var(--border); text-align: left; vertical-align: middle; }
table.data thead th { position: sticky; top: 0; background: var(--bg-alt); font-weight: 500; color: var(--text-2); white-space: nowrap; z-index: 1; }
table.data tbody tr:hover { background: var(--accent-soft); }
table.data td.num, table.data th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.data td.layer-cell { min-width: 200px; max-width: 420px; }
table.data td.run-cell { max-width: 160px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: var(--text-2); }
.sort-btn { appearance: none; background: none; border: none; padding: 0; color: inherit; font: inherit; cursor: pointer; font-weight: 500; white-space: nowrap; }
.sort-btn:hover { color: var(--text); }
.sort-btn .sort-ind { display: inline-block; width: 1em; color: var(--accent); }
.sparkline { width: 140px; height: 28px; }
.sparkline-empty { color: var(--text-2); font-size: 11px; }
.gap-bar { position: relative; height: 6px; background: var(--bg-alt); border-radius: 3px; margin-top: 3px; min-width: 60px; }
.gap-bar > span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px; background: var(--accent); }

/* badges */
.badges { display: flex; flex-wrap: wrap; gap: 4px; }
.badge { display: inline-block; border-radius: 10px; padding: 1px 8px; font-size: 11px; font-weight: 500; border: 1px solid transparent; white-space: nowrap; }
.sev-error { color: var(--sev-error); background: var(--sev-error-bg); border-color: var(--sev-error); }
.sev-warning { color: var(--sev-warning); background: var(--sev-warning-bg); border-color: var(--sev-warning); }
.sev-info { color: var(--sev-info); background: var(--sev-info-bg); border-color: var(--border); }
.badge-ok { color: var(--ok); border-color: var(--ok); }
.flag { font-size: 11px; color: var(--text-2); }

/* charts */
.chart-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 12px; }
.chart-card { background: var(--card); border: 1px solid var(--border); border-radius: 4px; padding: 8px 10px 6px; margin: 0; min-width: 0; }
.chart-card.wide { grid-column: 1 / -1; }
.chart-card figcaption { font-weight: 500; font-size: 12.5px; margin-bottom: 2px; }
.chart-card .chart-sub { color: var(--text-2); font-size: 11.5px; margin-bottom: 4px; }
.chart-card .chart-hint { color: var(--sev-warning); background: var(--sev-warning-bg); font-size: 11.5px; padding: 3px 6px; border-radius: 3px; margin: 0 0 4px; }
.chart-body { width: 100%; min-height: 40px; }
.echart-body { width: 100%; }
.uplot { font-family: var(--font); }
.u-legend { font-size: 11.5px; color: var(--text); }
.u-legend .u-marker { border-radius: 2px; }
.u-legend th { font-weight: 400; }
.u-select { background: var(--accent-soft); }

/* diagnostics */
.finding { background: var(--card); border: 1px solid var(--border); border-left: 4px solid var(--border); border-radius: 4px;
  padding: 10px 14px; margin-bottom: 10px; max-width: 1100px; }
.finding[data-severity="error"] { border-left-color: var(--sev-error); }
.finding[data-severity="warning"] { border-left-color: var(--sev-warning); }
.finding[data-severity="info"] { border-left-color: var(--text-2); }
.finding-head { display: flex; align-items: baseline; flex-wrap: wrap; gap: 8px; }
.finding-title { font-weight: 500; font-size: 14px; word-break: break-word; }
.finding-code { color: var(--text-2); }
.finding-run { color: var(--text-2); font-size: 12px; word-break: break-all; }
.finding-section { margin-top: 8px; }
.finding-section > .label { color: var(--text-2); font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em; margin-bottom: 2px; }
.finding .fix { margin: 2px 0 0; white-space: pre-wrap; word-break: break-word; }
/* A problem over 50 layers stays about one screen: its table scrolls (header kept), the fix stays in view. */
.finding .table-wrap { max-height: 24em; overflow-y: auto; }
.layer-links { display: flex; flex-wrap: wrap; gap: 4px 14px; }
.evidence { border-collapse: collapse; font-size: 12px; }
.evidence td { padding: 1px 14px 1px 0; vertical-align: top; word-break: break-all; }
.evidence td:first-child { color: var(--text-2); white-space: nowrap; }
.summary-counts { display: flex; gap: 8px; align-items: center; margin-bottom: 10px; }

/* graph */
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center; font-size: 12px; margin: 0 0 12px; }
.legend-item { display: inline-flex; align-items: center; gap: 6px; }
.legend svg { overflow: visible; }
.site { background: var(--card); border: 1px solid var(--border); border-radius: 4px; padding: 10px 14px; margin-bottom: 12px; }
.site.site-flash { border-color: var(--accent); box-shadow: 0 0 0 2px var(--accent-soft); }
.site-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 14px; margin-bottom: 6px; }
.site-name { font-weight: 500; word-break: break-all; }
.site-graph-wrap { overflow-x: auto; min-height: 80px; }
svg.site-graph { display: block; font-family: var(--font); font-size: 11px; }
svg.site-graph .node rect { fill: var(--bg-alt); stroke: var(--border); stroke-width: 1.2; rx: 4; }
svg.site-graph .node text { fill: var(--text); }
svg.site-graph .node { cursor: pointer; }
svg.site-graph .node:focus { outline: none; }
svg.site-graph .node:focus rect, svg.site-graph .node.selected rect { stroke: var(--accent); stroke-width: 2.5; }
svg.site-graph .node.path-training rect { fill: var(--train-soft); stroke: var(--train); }
svg.site-graph .node.path-inference rect { fill: var(--infer-soft); stroke: var(--infer); }
svg.site-graph .node.node-switch rect, svg.site-graph .node.node-merge rect, svg.site-graph .node.node-predicate rect { stroke-width: 1.6; }
svg.site-graph .node.node-trainop rect { fill: none; stroke-dasharray: none; stroke: var(--text-2); }
svg.site-graph .node.node-update rect { fill: var(--bg); }
svg .edge { fill: none; stroke: var(--text-2); stroke-width: 1.4; }
svg .edge.path-training { stroke: var(--train); stroke-width: 2.4; }
svg .edge.path-inference { stroke: var(--infer); stroke-width: 2.4; }
svg .edge.update-wired { stroke: var(--ok); stroke-width: 1.8; }
svg .edge.update-unwired { stroke: var(--sev-error); stroke-width: 1.8; stroke-dasharray: 6 4; }
svg .edge.update-unknown { stroke: var(--text-2); stroke-dasharray: 2 3; }
svg .edge-label-bg { fill: var(--card); }
svg .edge-label { fill: var(--text-2); font-size: 10px; }
svg .edge-label.warn { fill: var(--sev-error); font-weight: 500; }
.arrow-train { fill: var(--train); } .arrow-infer { fill: var(--infer); } .arrow-ok { fill: var(--ok); }
.arrow-bad { fill: var(--sev-error); } .arrow-plain { fill: var(--text-2); }
.wire-warning { color: var(--sev-error); font-weight: 500; }
.op-details { margin-top: 8px; font-size: 12px; }
.op-details summary { cursor: pointer; color: var(--text-2); }
.op-list { list-style: none; padding: 0; margin: 6px 0 0; display: grid; gap: 3px; }
.op-list li { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
.op-list .op-role { min-width: 110px; color: var(--text-2); font-size: 11.5px; }
.op-list code { word-break: break-all; }
.op-selected { margin-top: 6px; display: flex; flex-wrap: wrap; align-items: center; gap: 8px; font-size: 12px; min-height: 24px; }
.run-selector { background: var(--card); border: 1px solid var(--border); border-radius: 4px; padding: 6px 10px; margin: 0 0 12px; }
.run-selector-head { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 12px; }
.run-selector-head input { background: var(--card); border: 1px solid var(--border); border-radius: 4px; padding: 3px 6px; color: var(--text); min-width: 200px; }
.run-selector-head input.invalid { border-color: var(--sev-error); }
.run-options { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 6px; max-height: 120px; overflow: auto; }
.run-option { display: inline-flex; align-items: center; gap: 5px; cursor: pointer; max-width: 360px; }
.run-option-name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.run-swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; flex: none; }
.run-card { border-left-width: 4px; }
.layer-nav { display: inline-flex; flex-wrap: wrap; align-items: center; gap: 6px 8px; }
.compare-view { margin: 0 0 14px; }
.compare-legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 0 0 8px; color: var(--text-2); }
.compare-run { display: inline-flex; align-items: center; gap: 5px; word-break: break-all; }
.affected-table { font-size: 12px; }
.affected-table td.mono, .affected-table td.affected { white-space: nowrap; }
.shared-evidence { color: var(--text-2); font-size: 12px; }
.finding-count { color: var(--text-2); font-size: 12px; }
.graph-findings .site-link { padding: 0; }
.replica-finding .evidence { margin: 6px 0; }
`;

let injected = false;
export function injectStyles() {
  if (injected) return;
  injected = true;
  const style = document.createElement("style");
  style.dataset.bnInternals = "styles";
  style.textContent = uplotCss + "\n" + css;
  document.head.appendChild(style);
}
