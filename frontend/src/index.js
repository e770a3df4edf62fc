// BN Internals: TensorBoard plugin frontend. TensorBoard's entry page runs
//   import("./index.js").then((m) => void m.render());
// inside an iframe; render() builds the whole page.
import { injectStyles } from "./styles.js";
import { h, clear, spinner, messageBox, forgetDetached } from "./dom.js";
import { invalidate, describeError } from "./api.js";
import { connectHost, watchTheme } from "./host.js";
import { disposeCharts } from "./charts.js";
import { renderOverview } from "./views/overview.js";
import { renderLayer } from "./views/layer.js";
import { renderGap } from "./views/gap.js";
import { renderDiagnostics } from "./views/diagnostics.js";
import { renderGraph } from "./views/graph.js";

const VIEWS = [
  { id: "overview", title: "Overview", render: renderOverview },
  { id: "layer", title: "Layer detail", render: renderLayer },
  { id: "gap", title: "Gap", render: renderGap },
  { id: "diagnostics", title: "Diagnostics", render: renderDiagnostics },
  { id: "graph", title: "Graph", render: renderGraph },
];
const STATE_KEYS = ["view", "run", "layer", "channel", "sort", "dir", "filter", "band", "sev", "glog", "desel", "rx", "lorder", "site"];
const REFRESH_MS = 30000;

function parseHash() {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const state = {};
  for (const key of STATE_KEYS) if (params.has(key)) state[key] = params.get(key);
  if (!VIEWS.some((v) => v.id === state.view)) state.view = "overview";
  return state;
}

function writeHash(state) {
  const params = new URLSearchParams();
  for (const key of STATE_KEYS) {
    const v = state[key];
    if (v !== null && v !== undefined && v !== "") params.set(key, String(v));
  }
  // Absolute URL: a bare "#..." would resolve against <base href>.
  const url = `${window.location.pathname}${window.location.search}#${params.toString()}`;
  try {
    window.history.replaceState(null, "", url);
  } catch (_err) {
    // sandboxed / file: ignore
  }
}

class App {
  constructor(root) {
    this.root = root;
    this.state = parseHash();
    this.renderToken = 0;
    this.lastRefresh = 0;
    this.panels = {};
    this.tabs = {};
  }

  mount() {
    const tablist = h("div", { class: "bn-tabs", role: "tablist", "aria-label": "BN Internals views" });
    for (const view of VIEWS) {
      const tab = h(
        "button",
        {
          type: "button",
          class: "bn-tab",
          role: "tab",
          id: `bn-tab-${view.id}`,
          "aria-controls": `bn-panel-${view.id}`,
          dataset: { tab: view.id },
          on: { click: () => this.open(view.id) },
        },
        view.title,
      );
      this.tabs[view.id] = tab;
      tablist.appendChild(tab);
    }
    tablist.addEventListener("keydown", (ev) => this.onTabKey(ev));
    this.updatedEl = h("span", { class: "updated", "aria-live": "polite", dataset: { role: "updated" } });
    const refreshBtn = h(
      "button",
      { type: "button", class: "btn btn-small", dataset: { action: "refresh" }, title: "Re-fetch data (also happens on TensorBoard's reload and every 30 s)", on: { click: () => this.reload("button") } },
      "Refresh",
    );
    const header = h("header", { class: "bn-header" }, tablist, h("div", { class: "bn-toolbar" }, this.updatedEl, refreshBtn));
    const main = h("main", { class: "bn-main" });
    for (const view of VIEWS) {
      const panel = h("section", {
        class: "bn-panel",
        role: "tabpanel",
        id: `bn-panel-${view.id}`,
        "aria-labelledby": `bn-tab-${view.id}`,
        dataset: { view: view.id },
        hidden: true,
      });
      this.panels[view.id] = panel;
      main.appendChild(panel);
    }
    clear(this.root);
    this.root.appendChild(h("div", { class: "bn-app", dataset: { bnApp: "" } }, header, main));
    this.show();
  }

  onTabKey(ev) {
    const ids = VIEWS.map((v) => v.id);
    const cur = ids.indexOf(ev.target.dataset.tab);
    if (cur < 0) return;
    let next = null;
    if (ev.key === "ArrowRight") next = (cur + 1) % ids.length;
    else if (ev.key === "ArrowLeft") next = (cur - 1 + ids.length) % ids.length;
    else if (ev.key === "Home") next = 0;
    else if (ev.key === "End") next = ids.length - 1;
    if (next === null) return;
    ev.preventDefault();
    this.open(ids[next]);
    this.tabs[ids[next]].focus();
  }

  /** Switch view, optionally changing state (e.g. {run, layer}). */
  open(view, patch = {}) {
    const next = { ...this.state, ...patch, view };
    if (view !== "layer" && !("channel" in patch)) next.channel = this.state.channel;
    this.state = next;
    writeHash(this.state);
    this.show();
  }

  /** Change state of the current view and re-render it. */
  update(patch, { rerender = true } = {}) {
    this.state = { ...this.state, ...patch };
    writeHash(this.state);
    if (rerender) this.show();
  }

  show() {
    const active = this.state.view;
    for (const view of VIEWS) {
      const on = view.id === active;
      this.tabs[view.id].setAttribute("aria-selected", on ? "true" : "false");
      this.tabs[view.id].tabIndex = on ? 0 : -1;
      this.panels[view.id].hidden = !on;
    }
    document.documentElement.dataset.activeView = active;
    this.renderActive();
  }

  /**
   * Render the active view. soft=true (reloads) keeps the current content on
   * screen until the new data is in, then swaps it, keeping scroll and focus.
   */
  async renderActive(soft = false) {
    const token = ++this.renderToken;
    const view = VIEWS.find((v) => v.id === this.state.view);
    const panel = this.panels[view.id];
    for (const p of Object.values(this.panels)) {
      if (p === panel) continue;
      disposeCharts(p);
      clear(p);
    }
    const scrollY = window.scrollY;
    const focused = document.activeElement && panel.contains(document.activeElement) ? document.activeElement.dataset.control : null;
    const begin = () => {
      disposeCharts(panel);
      clear(panel);
      forgetDetached();
    };
    if (!soft || !panel.firstChild) {
      begin();
      panel.appendChild(spinner());
    }
    panel.dataset.state = "loading";
    const ctx = {
      state: { ...this.state },
      isCurrent: () => token === this.renderToken,
      begin,
      open: (v, patch) => this.open(v, patch),
      update: (patch, opts) => this.update(patch, opts),
    };
    try {
      await view.render(panel, ctx);
      if (ctx.isCurrent()) {
        if (panel.dataset.state === "loading") panel.dataset.state = "ready";
        this.markUpdated();
      }
    } catch (err) {
      console.error(err);
      if (ctx.isCurrent()) {
        ctx.begin();
        panel.appendChild(messageBox("error", "This view failed to render", describeError(err)));
        panel.dataset.state = "error";
      }
    }
    if (!ctx.isCurrent()) return;
    if (soft) window.scrollTo(0, scrollY);
    // Controls that re-render their view (run selector, layer search) keep the focus.
    if (focused) {
      const el = [...panel.querySelectorAll("[data-control]")].find((x) => x.dataset.control === focused);
      if (el) el.focus();
    }
    if (!document.documentElement.dataset.firstRenderMs) {
      document.documentElement.dataset.firstRenderMs = String(Math.round(performance.now()));
    }
  }

  markUpdated() {
    this.lastRefresh = Date.now();
    const t = new Date(this.lastRefresh);
    this.updatedEl.textContent = `Updated ${t.toLocaleTimeString()}`;
  }

  reload(reason) {
    invalidate();
    document.documentElement.dataset.reloads = String(Number(document.documentElement.dataset.reloads || 0) + 1);
    document.documentElement.dataset.lastReload = reason;
    this.renderActive(true);
  }
}

let app = null;

export function render() {
  injectStyles();
  if (!document.querySelector("meta[name=viewport]")) {
    document.head.appendChild(h("meta", { name: "viewport", content: "width=device-width, initial-scale=1" }));
  }
  document.title = "BN Internals";
  watchTheme((dark) => {
    document.documentElement.classList.toggle("dark", dark);
    document.documentElement.dataset.theme = dark ? "dark" : "light";
    if (app) app.renderActive(true);
  });
  let root = document.getElementById("bn-internals-root");
  if (!root) {
    root = h("div", { id: "bn-internals-root" });
    document.body.appendChild(root);
  }
  app = new App(root);
  app.mount();
  // Deep links: a changed #fragment (e.g. typed or set by a test) opens that state.
  window.addEventListener("hashchange", () => {
    app.state = parseHash();
    app.show();
  });
  const host = connectHost({
    onReload: (type) => app.reload(type === "experimental.DataReloaded" ? "tensorboard" : "runs-changed"),
    onConnected: () => {
      document.documentElement.dataset.host = "tensorboard";
    },
  });
  // Periodic refetch only without TensorBoard's plugin host (which reloads us
  // on its reload button and on its own auto-reload, if the user keeps it on).
  setInterval(() => {
    if (document.hidden || host.connected) return;
    if (Date.now() - app.lastRefresh >= REFRESH_MS - 500) app.reload("timer");
  }, REFRESH_MS);
  return app;
}
