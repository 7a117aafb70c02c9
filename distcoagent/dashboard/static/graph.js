// The network as an SVG graph: obs on the left, coagents in columns by same-tick depth, the
// environment on the right. Edges: same-tick inputs solid, prev: inputs orange, driven execution
// dashed. Built once per network; update() only rewrites each node's rate label and bar.
import { fmtNum, fmtSI } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 150, IO_W = 100, NODE_H = 44, COL_GAP = 52, ROW_GAP = 24, PAD = 26, MAX_PER_COLUMN = 10;

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

/** Columns of node names: depth 0 is obs, a coagent sits one right of its deepest same-tick input. */
function columnsOf(network) {
  const byName = new Map(network.coagents.map((c) => [c.name, c]));
  const depth = new Map();
  const depthOf = (name, visiting = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (!byName.has(name) || visiting.has(name)) return 0;
    visiting.add(name);
    const c = byName.get(name);
    const deps = (c.inputs || []).filter((i) => i !== "obs" && !String(i).startsWith("prev:"));
    if (c.execution && c.execution.kind === "driven" && c.execution.coagent) deps.push(c.execution.coagent);
    const d = 1 + Math.max(0, ...deps.map((dep) => depthOf(dep, visiting)));
    depth.set(name, d);
    return d;
  };
  const layers = [];
  for (const c of network.coagents) (layers[depthOf(c.name) - 1] ||= []).push(c.name);
  const columns = [["obs"]];
  for (const layer of layers.filter(Boolean)) {
    for (let i = 0; i < layer.length; i += MAX_PER_COLUMN) columns.push(layer.slice(i, i + MAX_PER_COLUMN));
  }
  columns.push(["env"]);
  return columns;
}

function edgePath(a, b, port = 0.5) {
  const x1 = a.x + a.w, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H * port;
  if (a === b) {  // prev:SELF: an ear on the node's top edge
    const right = a.x + a.w - 10, left = right - 34;
    return `M ${right} ${a.y} C ${right + 2} ${a.y - 21}, ${left - 2} ${a.y - 21}, ${left} ${a.y}`;
  }
  if (x2 > x1) {
    const bend = Math.max(24, (x2 - x1) / 2);
    return `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
  }
  // backwards (or within a column): out of the source's bottom, under both, up into the target's bottom
  const sx = a.x + a.w - 16, tx = b.x + 16, low = Math.max(a.y, b.y) + NODE_H + 26 + Math.abs(y2 - y1) * 0.1;
  return `M ${sx} ${a.y + NODE_H} C ${sx} ${low}, ${tx} ${low}, ${tx} ${b.y + NODE_H}`;
}

function markers(svg) {
  const defs = el("defs", {}, svg);
  for (const [id, colour] of [["now", "#5c6673"], ["obs", "#8d96a1"], ["prev", "#d1780f"],
                              ["driven", "#7b4fb3"], ["env", "#1d2430"]]) {
    const m = el("marker", { id: `arrow-${id}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
                             markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: colour }, m);
  }
}

/** Forward edges into one node enter its left side at spread ports, ordered by their sources' height. */
function drawEdges(group, wanted, pos) {
  const forward = (e) => pos.get(e.from).x + pos.get(e.from).w < pos.get(e.to).x;
  const byTarget = new Map();
  for (const e of wanted.filter(forward)) (byTarget.get(e.to) || byTarget.set(e.to, []).get(e.to)).push(e);
  const port = new Map();
  for (const incoming of byTarget.values()) {
    incoming.sort((p, q) => pos.get(p.from).y - pos.get(q.from).y);
    const spread = Math.min(0.7, 0.25 * (incoming.length - 1));
    const step = incoming.length > 1 ? spread / (incoming.length - 1) : 0;
    incoming.forEach((e, k) => port.set(e, 0.5 - spread / 2 + step * k));
  }
  for (const e of wanted) {
    const path = el("path", { class: `edge ${e.kind}`, d: edgePath(pos.get(e.from), pos.get(e.to), port.get(e)),
                              "marker-end": `url(#arrow-${e.kind})` }, group);
    el("title", {}, path).textContent = e.title;
  }
}

/** Draw `network` into `svg`; returns update(coagentMetrics) for the live labels. */
export function buildGraph(svg, network, colours, availableWidth) {
  svg.replaceChildren();
  markers(svg);
  const columns = columnsOf(network);
  const tallest = Math.max(...columns.map((c) => c.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP + 50;
  const columnWidth = (i) => (i === 0 || i === columns.length - 1 ? IO_W : NODE_W);
  const pos = new Map();
  let x = PAD;
  columns.forEach((column, i) => {
    const top = PAD + 10 + ((tallest - column.length) * (NODE_H + ROW_GAP)) / 2;
    column.forEach((name, j) => pos.set(name, { x, y: top + j * (NODE_H + ROW_GAP), w: columnWidth(i) }));
    x += columnWidth(i) + COL_GAP;
  });
  const width = x - COL_GAP + PAD;
  const actions = new Set([].concat(network.action));
  const wanted = [];
  const edge = (from, to, kind, title) => pos.has(from) && pos.has(to) && wanted.push({ from, to, kind, title });
  for (const c of network.coagents) {
    for (const input of c.inputs || []) {
      if (input === "obs") edge("obs", c.name, "obs", `observation → ${c.name}`);
      else if (String(input).startsWith("prev:")) edge(input.slice(5), c.name, "prev", `${input} → ${c.name}`);
      else edge(input, c.name, "now", `${input} → ${c.name}`);
    }
    if (c.execution && c.execution.kind === "driven") {
      edge(c.execution.coagent, c.name, "driven", `${c.name} executes when ${c.execution.coagent} fires`);
    }
    if (actions.has(c.name)) edge(c.name, "env", "env", `${c.name}'s output is the action`);
  }
  drawEdges(el("g", { class: "edges" }, svg), wanted, pos);
  const nodes = el("g", { class: "nodes" }, svg);
  for (const [name, label] of [["obs", "observation"], ["env", "environment"]]) {
    const { x, y } = pos.get(name);
    const g = el("g", { class: "io", transform: `translate(${x},${y})` }, nodes);
    el("rect", { class: "box", width: IO_W, height: NODE_H, rx: NODE_H / 2 }, g);
    el("text", { x: IO_W / 2, y: NODE_H / 2 + 4, "text-anchor": "middle" }, g).textContent = label;
  }
  const labels = new Map();
  network.coagents.forEach((c, i) => {
    const { x, y } = pos.get(c.name);
    const g = el("g", { class: `node${actions.has(c.name) ? " action" : ""}`, transform: `translate(${x},${y})`,
                        "data-coagent": c.name }, nodes);
    el("title", {}, g).textContent = `${c.name}\ninputs: ${(c.inputs || []).join(", ")}\n` +
      `policy: ${JSON.stringify(c.policy)}\nexecution: ${JSON.stringify(c.execution)}`;
    el("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 5 }, g);
    el("rect", { width: 5, height: NODE_H, rx: 2, fill: colours.get(c.name) }, g);
    const name = el("text", { class: "name", x: 12, y: 17 }, g);
    name.textContent = c.name.length > 19 ? c.name.slice(0, 18) + "…" : c.name;
    const rates = el("text", { class: "rates", x: 12, y: 32 }, g);
    rates.textContent = "—";
    el("rect", { class: "rate-track", x: 12, y: NODE_H - 7, width: NODE_W - 22, height: 3 }, g);
    const bar = el("rect", { x: 12, y: NODE_H - 7, width: 0, height: 3, fill: colours.get(c.name) }, g);
    labels.set(c.name, { g, rates, bar });
  });
  const scale = Math.max(0.7, Math.min(1, availableWidth / width));  // below 0.7 it scrolls instead
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", Math.round(width * scale));
  svg.setAttribute("height", Math.round(height * scale));

  return function update(coagents) {
    for (const [name, { g, rates, bar }] of labels) {
      const m = coagents && coagents[name];
      if (!m) continue;
      const perTick = typeof m.recent_execution_rate === "number" ? m.recent_execution_rate : m.execution_rate;
      rates.textContent = `${fmtNum(perTick)}/tick · ${fmtSI(m.executions_per_second)}/s`;
      const fraction = typeof perTick === "number" ? Math.max(0, Math.min(1, perTick)) : 0;
      bar.setAttribute("width", (NODE_W - 22) * fraction);
      g.dataset.rate = perTick;
      g.dataset.perSecond = m.executions_per_second;
    }
  };
}
