// Number formatting and the coagent colour palette, shared by every panel.

const TABLEAU = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#8c8c8c"];

/** The colour of the i-th coagent: Tableau 10, then golden-angle hues for large networks. */
export function colourOf(index) {
  if (index < TABLEAU.length) return TABLEAU[index];
  return `hsl(${Math.round((index * 137.508) % 360)}, 55%, 46%)`;
}

/** [r, g, b] of a CSS colour, through a 1x1 canvas (so hsl() works too). */
export function rgbOf(colour) {
  rgbOf.ctx ||= document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  const ctx = rgbOf.ctx;
  ctx.clearRect(0, 0, 1, 1);
  ctx.fillStyle = colour;
  ctx.fillRect(0, 0, 1, 1);
  return Array.from(ctx.getImageData(0, 0, 1, 1).data.slice(0, 3));
}

const isNumber = (x) => typeof x === "number" && Number.isFinite(x);

/** Non-finite values arrive as the strings "NaN" / "Infinity": show them as they are. */
export function fmtInt(x) {
  if (!isNumber(x)) return x == null ? "—" : String(x);
  return Math.round(x).toLocaleString("en-US");
}

export function fmtNum(x, digits = 3) {
  if (!isNumber(x)) return x == null ? "—" : String(x);
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

/** 1234567 -> "1.23M": for rates per second. */
export function fmtSI(x) {
  if (!isNumber(x)) return x == null ? "—" : String(x);
  const a = Math.abs(x);
  for (const [limit, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (a >= limit) return (x / limit).toPrecision(3) + suffix;
  }
  return a >= 10 ? x.toFixed(0) : x.toPrecision(2);
}

export function fmtDuration(seconds) {
  if (!isNumber(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

export function isBad(x) {
  return typeof x === "string" && /nan|inf/i.test(x);
}
