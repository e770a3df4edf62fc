// Number formatting shared by the views.

export function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/** Compact number: 4 significant digits, exponent for very small/large. */
export function fmt(v, digits = 4) {
  if (!isNum(v)) return "—";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
  if (Number.isInteger(v) && a < 1e5) return String(v);
  return String(Number(v.toPrecision(digits)));
}

/** An evidence value: numbers to 6 significant digits, nested mappings/lists spelled out. */
export function fmtEvidence(v) {
  if (typeof v === "number") return String(Number(v.toPrecision(6)));
  if (Array.isArray(v)) return `[${v.map(fmtEvidence).join(", ")}]`;
  if (v && typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${k}: ${fmtEvidence(x)}`).join(", ")}}`;
  return String(v);
}

export function fmtSigned(v) {
  if (!isNum(v)) return "—";
  const t = fmt(v);
  return v > 0 ? `+${t}` : t;
}

export function last(arr) {
  if (!Array.isArray(arr)) return null;
  for (let i = arr.length - 1; i >= 0; i--) if (isNum(arr[i])) return arr[i];
  return null;
}

export const SEVERITY_ORDER = { error: 0, warning: 1, info: 2 };

export function severityRank(sev) {
  return SEVERITY_ORDER[sev] ?? 3;
}
