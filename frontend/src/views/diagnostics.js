// Diagnostics: every finding with severity, evidence, affected layers (links
// to the layer view, channels too) and the fix paragraph.
import { h, messageBox } from "../dom.js";
import { api } from "../api.js";
import { severityRank } from "../format.js";
import { loadRuns, load, runSelect, severityBadge, layerLink, evidenceTable } from "./common.js";

export function findingCard(ctx, f, { run = f.run, kind = "layers" } = {}) {
  const layers = Array.isArray(f.layers) ? f.layers : [];
  const sites = Array.isArray(f.sites) ? f.sites : [];
  const channels = f.channels && typeof f.channels === "object" ? f.channels : {};
  const affected =
    kind === "layers"
      ? layers.map((path) => {
          const chs = Array.isArray(channels[path]) ? channels[path] : [];
          return h(
            "span",
            { class: "affected", dataset: { layer: path } },
            layerLink(ctx, run, path),
            chs.length
              ? h(
                  "span",
                  { class: "muted" },
                  " (channels ",
                  chs.slice(0, 12).flatMap((c, i) => [i ? ", " : "", layerLink(ctx, run, path, { channel: c, label: String(c) })]),
                  chs.length > 12 ? `, … ${chs.length - 12} more` : "",
                  ")",
                )
              : null,
          );
        })
      : sites.map((name) =>
          h(
            "button",
            {
              type: "button",
              class: "linklike affected site-link",
              dataset: { site: name },
              title: "Show this site's graph",
              on: {
                click: () => {
                  const el = [...document.querySelectorAll(".site[data-site]")].find((x) => x.dataset.site === name);
                  if (el) {
                    el.scrollIntoView({ block: "start" });
                    el.classList.add("site-flash");
                    setTimeout(() => el.classList.remove("site-flash"), 1200);
                  }
                },
              },
            },
            name,
          ),
        );
  return h(
    "article",
    { class: "finding", dataset: { code: f.code, severity: f.severity, run: run || "" } },
    h(
      "div",
      { class: "finding-head" },
      severityBadge(f.severity),
      h("span", { class: "finding-title" }, f.title || f.code),
      h("code", { class: "finding-code" }, f.code),
      run ? h("span", { class: "finding-run" }, `run: ${run}`) : null,
    ),
    affected.length
      ? h(
          "div",
          { class: "finding-section" },
          h("div", { class: "label" }, kind === "layers" ? "Affected layers" : "Affected sites"),
          h("div", { class: "layer-links" }, affected),
        )
      : null,
    h("div", { class: "finding-section" }, h("div", { class: "label" }, "Evidence"), evidenceTable(f.evidence)),
    f.fix ? h("div", { class: "finding-section" }, h("div", { class: "label" }, "Fix"), h("p", { class: "fix" }, f.fix)) : null,
  );
}

export async function renderDiagnostics(panel, ctx) {
  const runs = await loadRuns(panel, ctx);
  if (!runs) return;
  const state = ctx.state;
  const runFilter = runs.some((r) => r.run === state.drun) ? state.drun : "";
  const data = await load(panel, ctx, api.diagnostics(runFilter || null), "diagnostics");
  if (!data) return;
  ctx.begin();
  const sevFilter = ["error", "warning", "info"].includes(state.sev) ? state.sev : "";
  const all = (Array.isArray(data.diagnostics) ? data.diagnostics : []).slice();
  all.sort((a, b) => severityRank(a.severity) - severityRank(b.severity) || String(a.run).localeCompare(String(b.run)) || String(a.code).localeCompare(String(b.code)));
  const shown = all.filter((f) => (!sevFilter || f.severity === sevFilter) && (!runFilter || f.run === runFilter));
  const counts = { error: 0, warning: 0, info: 0 };
  for (const f of all) counts[f.severity] = (counts[f.severity] || 0) + 1;

  const sevSelect = h("select", { dataset: { control: "severity" }, on: { change: () => ctx.update({ sev: sevSelect.value }) } });
  for (const [v, label] of [["", "All severities"], ["error", "Errors"], ["warning", "Warnings"], ["info", "Info"]]) {
    sevSelect.appendChild(h("option", { value: v, selected: v === sevFilter }, label));
  }
  panel.appendChild(h("h2", null, "Diagnostics"));
  panel.appendChild(
    h(
      "div",
      { class: "controls" },
      runSelect(runs, runFilter, (v) => ctx.update({ drun: v }), { allLabel: "All runs", control: "diag-run" }),
      h("label", null, "Severity", sevSelect),
      h(
        "span",
        { class: "summary-counts", dataset: { role: "counts" } },
        severityBadge("error", `${counts.error} error${counts.error === 1 ? "" : "s"}`),
        severityBadge("warning", `${counts.warning} warning${counts.warning === 1 ? "" : "s"}`),
        severityBadge("info", `${counts.info} info`),
      ),
    ),
  );
  const list = h("div", { class: "findings", dataset: { count: shown.length } });
  panel.appendChild(list);
  if (!shown.length) {
    list.appendChild(messageBox("info", all.length ? "No finding matches the filter." : "No findings: nothing suspicious in the logged BN statistics."));
    return;
  }
  for (const f of shown) list.appendChild(findingCard(ctx, f));
}
