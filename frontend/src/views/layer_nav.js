// Finding the layer that matters among 50+: a searchable picker, "worst first"
// orders (by drift or gap, from the runs route), previous/next buttons and
// keys ("[" and "]", or "k" and "j", outside text fields).
import { h } from "../dom.js";
import { fmt, isNum } from "../format.js";

export const LAYER_ORDERS = {
  model: { label: "Model order" },
  drift: { label: "Worst drift first", key: "drift" },
  local_gap: { label: "Worst local gap first", key: "local_gap" },
  compound_gap: { label: "Worst compound gap first", key: "compound_gap" },
};

/** `layers` (runs route rows) in `order`: model order, or largest |value| first, missing values last. */
export function orderedLayers(layers, order) {
  const byIndex = layers.slice().sort((a, b) => a.index - b.index);
  const key = (LAYER_ORDERS[order] || LAYER_ORDERS.model).key;
  if (!key) return byIndex;
  const score = (l) => (isNum(l[key]) ? Math.abs(l[key]) : -1);
  return byIndex.sort((a, b) => score(b) - score(a) || a.index - b.index);
}

// One document-level key handler; each layer render points it at its layers.
let stepLayer = null;
document.addEventListener("keydown", (ev) => {
  if (!stepLayer || document.documentElement.dataset.activeView !== "layer") return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t && (t.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(t.tagName))) return;
  const delta = ev.key === "]" || ev.key === "j" ? 1 : ev.key === "[" || ev.key === "k" ? -1 : 0;
  if (!delta) return;
  ev.preventDefault();
  stepLayer(delta);
});

/**
 * The layer picker of the layer view. `layers`: the run's rows; `current`:
 * the shown layer's path; `order`: a LAYER_ORDERS key.
 */
export function layerNavigator(ctx, layers, current, order) {
  const orderKey = LAYER_ORDERS[order] ? order : "model";
  const ordered = orderedLayers(layers, orderKey);
  const metric = LAYER_ORDERS[orderKey].key;
  const at = Math.max(0, ordered.findIndex((l) => l.path === current));
  const go = (path) => ctx.update({ layer: path, channel: "" });
  const step = (delta) => {
    const next = ordered[at + delta];
    if (next) go(next.path);
  };
  stepLayer = step;

  const label = (l) => `${l.index} · ${l.path}${metric ? ` — ${metric.replace("_", " ")} ${fmt(l[metric])}` : ""}`;
  const select = h("select", { dataset: { control: "layer" }, "aria-label": "Layer", on: { change: () => go(select.value) } });
  const fill = (query) => {
    const q = query.trim().toLowerCase();
    const hits = ordered.filter((l) => !q || l.path.toLowerCase().includes(q));
    select.replaceChildren(...(hits.some((l) => l.path === current) ? [] : [h("option", { value: current, disabled: true }, `${current} (hidden by the search)`)]), ...hits.map((l) => h("option", { value: l.path, selected: l.path === current }, label(l))));
    select.value = current;
    search.dataset.matches = String(hits.length);
    return hits;
  };
  const search = h("input", {
    type: "search",
    placeholder: `Search ${layers.length} layers…`,
    "aria-label": "Search layers by name",
    dataset: { control: "layer-search" },
  });
  search.addEventListener("input", () => fill(search.value));
  search.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter") return;
    const hits = fill(search.value);
    if (hits.length) go(hits[0].path);
  });
  fill("");
  const orderSelect = h("select", { dataset: { control: "layer-order" }, "aria-label": "Layer order", on: { change: () => ctx.update({ lorder: orderSelect.value }) } });
  for (const [k, o] of Object.entries(LAYER_ORDERS)) orderSelect.appendChild(h("option", { value: k, selected: k === orderKey }, o.label));
  const button = (action, text, delta, title) =>
    h("button", { type: "button", class: "btn btn-small", dataset: { action }, title, disabled: !ordered[at + delta], on: { click: () => step(delta) } }, text);
  return h(
    "span",
    { class: "layer-nav", dataset: { role: "layer-nav", position: at + 1, layers: ordered.length, order: orderKey } },
    h("label", null, "Layer", search, select),
    orderSelect,
    button("prev-layer", "‹ Prev", -1, "Previous layer in this order (keys [ or k)"),
    h("span", { class: "muted", dataset: { role: "layer-position" } }, `${at + 1} / ${ordered.length}`),
    button("next-layer", "Next ›", 1, "Next layer in this order (keys ] or j)"),
  );
}
