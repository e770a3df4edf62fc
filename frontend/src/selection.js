// The run selector, in the style of TensorBoard's: a checkbox and a colour per
// run, a regex filter, select all / none. The selection lives in the app state
// (remembered while switching views) as the runs left out (`desel`), so a run
// that appears later is selected, as in TensorBoard.
import { h } from "./dom.js";
import { PALETTE } from "./charts.js";

/** The runs left out, from the state's `desel` (a JSON array of names). */
export function deselected(state) {
  try {
    const names = JSON.parse(state.desel || "[]");
    return new Set(Array.isArray(names) ? names.map(String) : []);
  } catch (_err) {
    return new Set();
  }
}

/** The run names the user selected, in the runs route's order. */
export function selectedRuns(runs, state) {
  const out = deselected(state);
  return runs.map((r) => r.run).filter((name) => !out.has(name));
}

/** A run's colour: by its position among all runs, so it stays while others are toggled. */
export function runColor(runs, name) {
  const i = runs.findIndex((r) => r.run === name);
  return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
}

/** The regex of the filter box, or null when empty or not a valid regex (then every run shows). */
export function runPattern(text) {
  if (!text) return null;
  try {
    return new RegExp(text, "i");
  } catch (_err) {
    return null;
  }
}

/**
 * The selector over `runs`. onChange(patch) gets the state's new `desel` /
 * `rx`. Select all / none apply to the runs the regex shows.
 */
export function runSelector(runs, state, onChange) {
  const out = deselected(state);
  const pattern = runPattern(state.rx || "");
  const visible = runs.filter((r) => !pattern || pattern.test(r.run));
  const commit = () => onChange({ desel: out.size ? JSON.stringify([...out].sort()) : "" });
  const regex = h("input", {
    type: "search",
    placeholder: "Filter runs (regex)…",
    "aria-label": "Filter runs by regular expression",
    dataset: { control: "run-regex" },
    value: state.rx || "",
    class: state.rx && !pattern ? "invalid" : null,
  });
  let timer = null;
  regex.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => onChange({ rx: regex.value }), 200);
  });
  const setAll = (on) => {
    for (const r of visible) {
      if (on) out.delete(r.run);
      else out.add(r.run);
    }
    commit();
  };
  const options = visible.map((r) => {
    const box = h("input", {
      type: "checkbox",
      checked: !out.has(r.run),
      dataset: { control: "run-toggle", run: r.run },
      on: {
        change: () => {
          if (box.checked) out.delete(r.run);
          else out.add(r.run);
          commit();
        },
      },
    });
    return h(
      "label",
      { class: "run-option", dataset: { run: r.run, selected: String(!out.has(r.run)) }, title: r.run },
      box,
      h("span", { class: "run-swatch", style: { background: runColor(runs, r.run) }, "aria-hidden": "true" }),
      h("span", { class: "run-option-name" }, r.run),
    );
  });
  const selectedCount = runs.length - runs.filter((r) => out.has(r.run)).length;
  return h(
    "div",
    { class: "run-selector", dataset: { role: "run-selector", selected: selectedCount } },
    h(
      "div",
      { class: "run-selector-head" },
      h("strong", null, "Runs"),
      h("span", { class: "muted", dataset: { role: "run-count" } }, `${selectedCount} of ${runs.length} selected`),
      regex,
      h("button", { type: "button", class: "btn btn-small", dataset: { action: "select-all" }, on: { click: () => setAll(true) } }, "All"),
      h("button", { type: "button", class: "btn btn-small", dataset: { action: "select-none" }, on: { click: () => setAll(false) } }, "None"),
    ),
    h("div", { class: "run-options" }, options.length ? options : h("span", { class: "muted" }, "No run matches the filter.")),
  );
}
