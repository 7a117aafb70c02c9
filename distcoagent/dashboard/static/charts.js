// The two time series, drawn with the vendored uPlot: the learning curve with its band, and
// every coagent's execution rate over time. Both are rebuilt only when their series change;
// new data goes through setData, and a ResizeObserver keeps them as wide as their panel.
import { fmtNum, fmtSI } from "./format.js";

const FONT = "11px system-ui, 'DejaVu Sans', sans-serif";
const AXIS = { stroke: "#5b6470", grid: { stroke: "#eceff2", width: 1 }, ticks: { stroke: "#d5dae0", width: 1 },
               font: FONT, labelFont: FONT };
const HEIGHT = 250;

function widthOf(el) {
  return Math.max(260, el.clientWidth || el.parentElement.clientWidth - 24);
}

function keepWide(el, getPlot) {
  new ResizeObserver(() => {
    const plot = getPlot();
    if (plot) plot.setSize({ width: widthOf(el), height: HEIGHT });
  }).observe(el);
}

/** The learning curve: mean, and a band from mean - stderr to mean + stderr. */
export function curveChart(el) {
  let plot = null;
  keepWide(el, () => plot);
  const options = () => ({
    width: widthOf(el), height: HEIGHT, legend: { show: true, live: true },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: false } },
    axes: [{ ...AXIS, label: "episode", labelSize: 22 }, { ...AXIS, label: "return", labelSize: 22, size: 54 }],
    series: [
      { label: "episode", value: (u, v) => (v == null ? "—" : fmtNum(v, 5)) },
      { label: "mean return", stroke: "#2f6fb0", width: 1.8, points: { show: false }, value: (u, v) => fmtNum(v) },
      { label: "+ stderr", stroke: "rgba(47,111,176,0.25)", width: 0.5, points: { show: false },
        value: (u, v) => fmtNum(v) },
      { label: "− stderr", stroke: "rgba(47,111,176,0.25)", width: 0.5, points: { show: false },
        value: (u, v) => fmtNum(v) },
    ],
    bands: [{ series: [2, 3], fill: "rgba(47,111,176,0.16)" }],
  });
  return function update(curve) {
    const upper = curve.mean.map((m, i) => (m == null || curve.stderr[i] == null ? null : m + curve.stderr[i]));
    const lower = curve.mean.map((m, i) => (m == null || curve.stderr[i] == null ? null : m - curve.stderr[i]));
    const data = [curve.episodes, curve.mean, upper, lower];
    if (!plot) { el.replaceChildren(); plot = new uPlot(options(), data, el); } else plot.setData(data);
    el.dataset.points = curve.episodes.length;
    el.dataset.lastEpisode = curve.last_episode;
  };
}

/** One line per coagent: its execution rate (per tick, or executions per second) against elapsed time. */
export function rateChart(el) {
  let plot = null, key = "";
  keepWide(el, () => plot);
  return function update(history, names, colours, metric) {
    const newKey = metric + "|" + names.join("\u0000");
    const data = [history.elapsed, ...names.map((n) => (history[metric][n] || []))];
    if (!plot || key !== newKey) {
      if (plot) plot.destroy();
      el.replaceChildren();
      key = newKey;
      const perSecond = metric === "per_second";
      plot = new uPlot({
        width: widthOf(el), height: HEIGHT,
        legend: { show: names.length <= 12, live: true },
        cursor: { drag: { x: true, y: false }, focus: { prox: 16 } },
        focus: { alpha: 0.25 },
        scales: { x: { time: false }, y: perSecond ? {} : { range: (u, lo, hi) => [0, Math.max(1e-9, hi * 1.08)] } },
        axes: [{ ...AXIS, label: "elapsed (s)", labelSize: 22 },
               { ...AXIS, label: perSecond ? "executions / s" : "executions / tick", labelSize: 22, size: 58,
                 values: (u, splits) => splits.map((v) => (perSecond ? fmtSI(v) : fmtNum(v))) }],
        series: [{ label: "elapsed", value: (u, v) => (v == null ? "—" : v.toFixed(1) + " s") },
                 ...names.map((n) => ({ label: n, stroke: colours.get(n), width: 1.4, points: { show: false },
                                         value: (u, v) => (perSecond ? fmtSI(v) : fmtNum(v)) }))],
      }, data, el);
    } else plot.setData(data);
  };
}
