// The execution raster on a canvas: one row per (sampled environment, coagent), one column per
// tick of the recent window, a cell in the coagent's colour where it executed. Cells are set in
// an offscreen image one pixel each and scaled up, so 800 rows x 2000 ticks stay cheap.
import { rgbOf } from "./format.js";

const MAX_HEIGHT = 400, TOP = 18, BOTTOM = 20, ENV_GAP = 5;

export function drawRaster(canvas, raster, colours) {
  canvas.dataset.raster = JSON.stringify(raster);
  const { envs, coagents, segments } = raster;
  const cssWidth = Math.max(300, canvas.parentElement.clientWidth - 4);
  const ctx = canvas.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  const rows = envs.length * coagents.length;
  const totalTicks = segments.reduce((sum, s) => sum + s.ticks, 0);
  const rowH = rows ? Math.max(1, Math.min(14, Math.floor((MAX_HEIGHT - (envs.length - 1) * ENV_GAP) / rows))) : 0;
  const cssHeight = rows && totalTicks ? TOP + rows * rowH + (envs.length - 1) * ENV_GAP + BOTTOM : 60;
  canvas.width = Math.round(cssWidth * dpr);
  canvas.height = Math.round(cssHeight * dpr);
  canvas.style.width = cssWidth + "px";
  canvas.style.height = cssHeight + "px";
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
  ctx.textBaseline = "middle";
  if (!rows || !totalTicks) {
    ctx.fillStyle = "#6b7480";
    ctx.fillText("no raster records yet", 8, 30);
    return;
  }
  const labelled = rowH >= 9;
  const longest = labelled ? Math.max(...coagents.map((n) => ctx.measureText(n).width)) : 0;
  const gutter = Math.min(190, Math.ceil(64 + longest));
  const plotW = cssWidth - gutter - 6;
  const image = cellImage(segments, envs, coagents, colours, totalTicks);
  const x0 = gutter, groupH = coagents.length * rowH;
  ctx.imageSmoothingEnabled = false;
  envs.forEach((env, e) => {
    const y = TOP + e * (groupH + ENV_GAP);
    ctx.fillStyle = "#f1f3f6";
    ctx.fillRect(x0, y, plotW, groupH);
    ctx.drawImage(image, 0, e * coagents.length, totalTicks, coagents.length, x0, y, plotW, groupH);
    ctx.fillStyle = "#1d2430";
    ctx.textAlign = "left";
    ctx.font = "600 11px system-ui, 'DejaVu Sans', sans-serif";
    ctx.fillText(`env ${env}`, 4, labelled ? y + rowH / 2 : y + groupH / 2);
    if (labelled) {
      ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
      ctx.textAlign = "right";
      coagents.forEach((name, c) => {
        ctx.fillStyle = colours.get(name) || "#333";
        ctx.fillText(name, x0 - 6, y + c * rowH + rowH / 2);
      });
    }
  });
  axis(ctx, segments, totalTicks, x0, plotW, cssHeight);
}

function cellImage(segments, envs, coagents, colours, totalTicks) {
  const image = new ImageData(totalTicks, envs.length * coagents.length);
  const rgb = coagents.map((n) => rgbOf(colours.get(n) || "#333"));
  let column = 0;
  for (const segment of segments) {
    coagents.forEach((name, c) => {
      const [r, g, b] = rgb[c];
      (segment.executed[name] || []).forEach((bits, e) => {
        const rowStart = (e * coagents.length + c) * totalTicks + column;
        for (let t = 0; t < segment.ticks; t++) {
          if (bits.charCodeAt(t) !== 49) continue;
          const p = (rowStart + t) * 4;
          image.data[p] = r; image.data[p + 1] = g; image.data[p + 2] = b; image.data[p + 3] = 255;
        }
      });
    });
    column += segment.ticks;
  }
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

function axis(ctx, segments, totalTicks, x0, plotW, height) {
  const xOf = (column) => x0 + (column / totalTicks) * plotW;
  ctx.fillStyle = "#6b7480";
  ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
  const first = segments[0], last = segments[segments.length - 1];
  ctx.textAlign = "left";
  ctx.fillText(`tick ${first.tick_start}`, x0, height - BOTTOM / 2);
  ctx.textAlign = "right";
  ctx.fillText(`tick ${last.tick_start + last.ticks - 1}`, x0 + plotW, height - BOTTOM / 2);
  ctx.textAlign = "center";
  ctx.fillText(`${totalTicks} ticks`, x0 + plotW / 2, TOP / 2);
  let column = 0;
  segments.forEach((segment, i) => {  // a gap between two segments' ticks is marked with a red rule
    const previous = segments[i - 1];
    if (previous && previous.tick_start + previous.ticks !== segment.tick_start) {
      ctx.fillStyle = "#b3261e";
      ctx.fillRect(Math.round(xOf(column)) - 1, TOP - 3, 2, height - TOP - BOTTOM + 6);
    }
    column += segment.ticks;
  });
}
