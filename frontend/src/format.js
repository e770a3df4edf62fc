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

const SI = [
  [1e12, "T"],
  [1e9, "G"],
  [1e6, "M"],
  [1e3, "k"],
];

function compact(v, digits) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 1e-3) return Number(v.toPrecision(digits)).toExponential().replace("e-", "e\u2212");
  for (const [scale, suffix] of SI) if (a >= scale) return `${Number((v / scale).toPrecision(digits))}${suffix}`;
  return String(Number(v.toPrecision(digits)));
}

/**
 * Axis tick labels, short enough for a narrow axis: SI suffixes from 1000
 * ("1.5M"), an exponent below 1e-3, and as few significant digits as keep
 * neighbouring ticks apart (1.0001M next to 1.0002M).
 */
export function tickLabels(vals) {
  const nums = vals.filter(isNum);
  let digits = 3;
  const distinct = () => new Set(nums.map((v) => compact(v, digits))).size === new Set(nums).size;
  while (digits < 10 && !distinct()) digits++;
  return vals.map((v) => (isNum(v) ? compact(v, digits) : ""));
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
