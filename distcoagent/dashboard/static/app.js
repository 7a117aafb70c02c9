// The dashboard page: polls /api/state?since=<seq>&epoch=<epoch> about once a second, merges the
// parts that changed into `view`, and redraws only those panels. Machine-readable values go into
// data-* attributes (status banner, table rows, raster canvas) so tests can read what is shown.
import { buildGraph } from "./graph.js";
import { curveChart, rateChart } from "./charts.js";
import { drawRaster } from "./raster.js";
import { colourOf, fmtDuration, fmtInt, fmtNum, fmtSI, isBad } from "./format.js";

const POLL_MS = 1000, IDLE_WARNING_S = 60;
const $ = (id) => document.getElementById(id);
const view = { epoch: "", seq: 0, run: null, metrics: null, history: null, curve: null, raster: null,
               networkKey: "", colours: new Map(), names: [] };
const drawCurve = curveChart($("curve"));
const drawRates = rateChart($("rates"));
let updateGraph = () => {};

function emptyHistory() { return { seq: [], elapsed: [], ticks_per_second: [], rate: {}, per_second: {} }; }

function mergeHistory(add, keep) {
  const h = view.history || (view.history = emptyHistory());
  const names = Object.keys(add.rate);
  const before = h.seq.length;
  for (const key of ["seq", "elapsed", "ticks_per_second"]) h[key].push(...add[key]);
  for (const part of ["rate", "per_second"]) {
    for (const name of names) {  // a coagent new to the history is padded with nulls before its first value
      const series = h[part][name] || (h[part][name] = new Array(before).fill(null));
      series.push(...add[part][name]);
    }
    for (const name of Object.keys(h[part])) {
      if (!(name in add[part])) h[part][name].push(...new Array(add.seq.length).fill(null));
    }
  }
  const drop = h.seq.length - keep;
  if (drop > 0) {
    for (const key of ["seq", "elapsed", "ticks_per_second"]) h[key].splice(0, drop);
    for (const part of ["rate", "per_second"]) for (const name in h[part]) h[part][name].splice(0, drop);
  }
}

function networkOf() {
  const run = view.run || {};
  return (run.start && run.start.network) || (run.config && run.config.network) || null;
}

function renderRun() {
  const run = view.run || {}, start = run.start || {}, config = run.config || {};
  const network = networkOf();
  const env = config.env && config.env.id;
  const parts = [];
  if (start.run) parts.push(`run <b>${escape(start.run)}</b>`);
  if (env) parts.push(`env <b>${escape(env)}</b>`);
  if (start.engine) parts.push(`engine <b>${escape(start.engine)}</b>`);
  if (start.trials) parts.push(`<b>${escape(start.trials)}</b> trial(s) × <b>${escape(start.envs_per_trial || 1)}</b> env(s)`);
  if (network) parts.push(`<b>${escape((network.coagents || []).length)}</b> coagent(s), γ ${escape(network.gamma)}, ` +
                          `${escape(network.ticks_per_step)} tick(s)/step`);
  $("run-meta").innerHTML = parts.join(" · ") || "—";
  if (!network) return;
  const key = JSON.stringify(network);
  if (key === view.networkKey) return;
  view.networkKey = key;
  view.names = network.coagents.map((c) => c.name);
  view.colours = new Map(view.names.map((n, i) => [n, colourOf(i)]));
  updateGraph = buildGraph($("graph-svg"), network, view.colours, $("graph").clientWidth);
  buildTable();
  renderMetrics();
}

function escape(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

const COLUMNS = [["executions", fmtInt], ["ticks", fmtInt], ["updates", fmtInt], ["execution_rate", fmtNum],
                 ["recent_execution_rate", fmtNum], ["executions_per_second", fmtSI],
                 ["mean_ticks_between_executions", fmtNum], ["last_update", fmtNum], ["param_norm", fmtNum]];

function buildTable(names = view.names) {
  const body = document.querySelector("#coagent-table tbody");
  body.replaceChildren(...names.map((name) => {
    const tr = document.createElement("tr");
    tr.dataset.coagent = name;
    const td = document.createElement("td");
    td.className = "name";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = view.colours.get(name) || "#999";
    td.append(swatch, name);
    tr.append(td, ...COLUMNS.map(() => document.createElement("td")));
    return tr;
  }));
}

function renderClock(clock) {
  const panel = $("clock-panel");
  panel.hidden = !clock || clock.clock !== "free";
  if (panel.hidden) return;
  $("clock-steps").textContent = fmtInt(clock.env_steps);
  const loops = new Map();
  for (const c of clock.loops || []) for (const name of c.names) loops.set(name, c.loops_per_second);
  const rows = Object.entries(clock.coagents || {}).map(([name, c]) => {
    const tr = document.createElement("tr");
    tr.dataset.coagent = name;
    const cells = [loops.get(name), c.opportunities, c.published, c.retried, c.late, c.revoked];
    const td = document.createElement("td");
    td.className = "name";
    td.textContent = name;
    tr.append(td, ...cells.map((v, i) => {
      const cell = document.createElement("td");
      cell.textContent = i === 0 ? fmtNum(v) : fmtInt(v);
      return cell;
    }));
    return tr;
  });
  document.querySelector("#clock-table tbody").replaceChildren(...rows);
}

function renderMetrics() {
  const m = view.metrics;
  if (!m) return;
  renderClock(m.clock);
  const coagents = m.coagents || {};
  const body = document.querySelector("#coagent-table tbody");
  const shown = [...body.rows].map((r) => r.dataset.coagent);
  const extra = Object.keys(coagents).filter((n) => !shown.includes(n));
  if (extra.length) buildTable([...shown, ...extra]);
  for (const tr of body.rows) {
    const values = coagents[tr.dataset.coagent];
    if (!values) continue;
    tr.dataset.tick = m.tick;
    tr.dataset.executions = values.executions;
    tr.dataset.ticks = values.ticks;
    tr.dataset.updates = values.updates;
    COLUMNS.forEach(([key, fmt], i) => {
      const cell = tr.cells[i + 1];
      cell.textContent = fmt(values[key]);
      cell.classList.toggle("bad", isBad(values[key]));
    });
  }
  updateGraph(coagents);
  const stats = $("stats");
  stats.dataset.tick = m.tick;
  stats.dataset.episodesDone = m.episodes_done;
  $("stat-tick").textContent = fmtInt(m.tick);
  $("stat-tps").textContent = fmtSI(m.ticks_per_second);
  $("stat-etps").textContent = fmtSI(m.env_ticks_per_second);
  $("stat-episodes").textContent = `${fmtInt(m.episodes_done)} / ${fmtInt(m.episodes_total)}`;
  const fraction = m.episodes_total ? Math.min(1, m.episodes_done / m.episodes_total) : 0;
  $("stat-progress").style.width = `${(100 * fraction).toFixed(1)}%`;
  $("stat-elapsed").textContent = fmtDuration(m.elapsed);
  $("stat-eta").textContent = view.status === "running" ? fmtDuration(m.eta_seconds) : "—";
}

function renderHistory() {
  if (!view.history || !view.history.seq.length) return;
  const names = view.names.length ? view.names : Object.keys(view.history.rate);
  drawRates(view.history, names, view.colours, $("rate-metric").value);
  $("rates-note").textContent = `last ${view.history.seq.length} metrics record(s)`;
}

function renderStatus(state, reachable = true) {
  const banner = $("status");
  const status = reachable ? state.status : "disconnected";
  const titles = { waiting: "Waiting for data", running: "Running", finished: "Finished", failed: "Failed",
                   interrupted: "Interrupted", disconnected: "Dashboard server not reachable" };
  banner.dataset.status = status;
  $("status-text").textContent = titles[status] || status;
  let detail = "";
  if (!reachable) detail = "retrying; the data shown is the last received";
  else if (status === "waiting") detail = "metrics.jsonl does not exist yet (or has no start record)";
  else if (status === "failed") detail = state.error || (view.end && view.end.error) || "no error text recorded";
  else if (status === "running" && state.idle_seconds > IDLE_WARNING_S) {
    detail = `no new data for ${fmtDuration(state.idle_seconds)}; the run may have stopped without an end record`;
  } else if (status === "interrupted" && view.end && view.end.error) detail = view.end.error;
  $("status-detail").textContent = detail;
  document.title = `${titles[status] || status} · distcoagent dashboard`;
}

function renderSummary() {
  const summary = view.end && view.end.summary;
  const box = $("summary");
  const entries = summary ? Object.entries(summary).filter(([, v]) => v === null || typeof v !== "object") : [];
  box.hidden = !entries.length;
  box.innerHTML = entries.slice(0, 16).map(([k, v]) =>
    `<div><span>${escape(k)}</span> <b>${escape(typeof v === "number" ? fmtNum(v, 4) : v)}</b></div>`).join("");
}

function apply(state) {
  if (state.full || state.epoch !== view.epoch) {
    Object.assign(view, { epoch: state.epoch, metrics: null, history: null, curve: null, raster: null, end: null });
  }
  view.seq = state.seq;
  const statusChanged = view.status !== state.status;
  view.status = state.status;
  if ("run" in state) { view.run = state.run; renderRun(); }
  if ("end" in state) { view.end = state.end; renderSummary(); }
  renderStatus(state);
  if ("metrics" in state) view.metrics = state.metrics;
  if ("metrics" in state || statusChanged) renderMetrics();
  if (state.history) { mergeHistory(state.history, state.history_length); renderHistory(); }
  if (state.curve) {
    view.curve = state.curve;
    if (state.curve.episodes.length) drawCurve(state.curve);
    $("curve-note").textContent = !state.curve.last_episode ? "" : state.curve.block_width > 1
      ? `${fmtInt(state.curve.last_episode)} episodes, averaged in blocks of ${state.curve.block_width}`
      : `${fmtInt(state.curve.last_episode)} episodes`;
  }
  if (state.raster) { view.raster = state.raster; drawRaster($("raster"), state.raster, view.colours); }
  document.body.dataset.seq = state.seq;
  const skipped = state.bad_lines ? ` · ${state.bad_lines} unreadable line(s) skipped` : "";
  $("footer").textContent = `change ${state.seq}${skipped} · updated ${new Date().toLocaleTimeString()}`;
}

async function poll() {
  let delay = POLL_MS;
  try {
    const response = await fetch(`/api/state?since=${view.seq}&epoch=${view.epoch}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const state = await response.json();
    apply(state);
    if (!state.caught_up) delay = 50;  // a long file is being read in chunks: ask again at once
  } catch (error) {
    renderStatus({}, false);
    delay = 3000;
  }
  setTimeout(poll, delay);
}

$("rate-metric").addEventListener("change", renderHistory);
window.addEventListener("resize", () => { if (view.raster) drawRaster($("raster"), view.raster, view.colours); });
poll();
