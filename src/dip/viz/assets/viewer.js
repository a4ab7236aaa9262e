/* dip viz: per-rank compute lanes and memory tracks of a dip trace, drawn on a canvas.
   Data (embedded JSON): lanes of columns s (start s), d (duration s), m (module), o (op), c (chunk),
   u (unit), b (micro-batch), n (name), a (activation GiB); mem.t / mem.v (time s, GiB). */
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("dip-data").textContent);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const OP_SHADE = { F: 0.55, B: 0, I: 0, W: -0.35 };  // lighten (+) / darken (-), as in the PNG chart
  const OP_NAMES = { F: "forward", B: "backward", I: "backward (input)", W: "backward (weight)" };
  const MEM_LINE = ["#34495e", "#c0392b", "#16a085", "#8e44ad"];
  const SERIES_TINT = ["#f4f6f8", "#fdf1de", "#e6f4ee", "#f1e9f8"];  // lane background per series
  const GUTTER = 160, AXIS_H = 28, LANE_H = 20, MEM_H = 46, ROW_GAP = 2, RANK_GAP = 8, PAD_R = 14;

  const plot = document.getElementById("plot");
  const canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
  const axis = document.getElementById("axis"), actx = axis.getContext("2d");
  const tip = document.getElementById("tip");

  // ---- data ------------------------------------------------------------------------------------
  const EMPTY = { bars: { s: [], d: [], m: [], o: [], c: [], u: [], b: [], n: [], a: [] }, mem: { t: [], v: [] }, maxDur: 0 };
  const laneBy = new Map(D.lanes.map(l => [l.rank + "/" + l.series, l]));
  const laneOf = (rank, series) => laneBy.get(rank + "/" + series) || Object.assign({ rank, series }, EMPTY);
  let totalBars = 0, memPoints = 0, tEnd = 0, memMax = 0;
  for (const lane of D.lanes) {
    const b = lane.bars, mem = lane.mem;
    let maxDur = 0;
    for (let i = 0; i < b.s.length; i++) {
      maxDur = Math.max(maxDur, b.d[i]);
      tEnd = Math.max(tEnd, b.s[i] + b.d[i]);
    }
    for (let i = 0; i < mem.t.length; i++) {
      tEnd = Math.max(tEnd, mem.t[i]);
      memMax = Math.max(memMax, mem.v[i]);
    }
    lane.maxDur = maxDur;
    totalBars += b.s.length;
    memPoints += mem.t.length;
  }
  const limit = D.memLimitGiB;
  const showLimit = limit != null && memMax > 0 && limit <= 2 * memMax;
  const memTop = Math.max(memMax, showLimit ? limit : 0) * 1.08 || 1;
  const FULL = [0, (tEnd || 1) * 1.01];
  const view = { t0: FULL[0], t1: FULL[1] };
  const colour = D.modules.map((_, m) => D.ops.map(op => shade(PALETTE[m % PALETTE.length], OP_SHADE[op] ?? 0)));

  // ---- layout: per rank one lane per series, then a memory track per series that has counters ----
  const memSeries = D.series.map((_, si) => si).filter(si => D.lanes.some(l => l.series === si && l.mem.t.length));
  const rows = [];
  let height = 4;
  for (let r = 0; r < D.ranks; r++) {
    D.series.forEach((s, si) => {
      const label = "rank " + r + (D.series.length > 1 ? " · " + s.name : "");
      rows.push({ kind: "bars", lane: laneOf(r, si), rank: r, series: si, y: height, h: LANE_H, label });
      height += LANE_H + ROW_GAP;
    });
    for (const si of memSeries) {
      const label = "memory" + (memSeries.length > 1 ? " · " + D.series[si].name : "");
      rows.push({ kind: "mem", lane: laneOf(r, si), rank: r, series: si, y: height, h: MEM_H, label });
      height += MEM_H + ROW_GAP;
    }
    height += RANK_GAP;
  }
  let cssW = 800, plotW = 600;

  // ---- helpers ---------------------------------------------------------------------------------
  function shade(hex, amount) {
    const n = parseInt(hex.slice(1), 16);
    const rgb = [n >> 16 & 255, n >> 8 & 255, n & 255]
      .map(c => Math.round(amount >= 0 ? c + (255 - c) * amount : c * (1 + amount)));
    return "rgb(" + rgb.join(",") + ")";
  }
  function upperBound(arr, x) {  // first index with arr[i] > x
    let lo = 0, hi = arr.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] <= x) lo = mid + 1; else hi = mid; }
    return lo;
  }
  const num = (x, p = 4) => String(Number(x.toPrecision(p)));
  function fmtTime(s) {
    const a = Math.abs(s);
    if (a >= 1 || a === 0) return num(s, 5) + " s";
    if (a >= 1e-3) return num(s * 1e3, 5) + " ms";
    return num(s * 1e6, 5) + " µs";
  }
  const esc = s => String(s).replace(/[&<>"]/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const xOf = t => GUTTER + (t - view.t0) / (view.t1 - view.t0) * plotW;
  const tOf = px => view.t0 + (px - GUTTER) / plotW * (view.t1 - view.t0);
  function lowerBound(arr, x) {  // first index with arr[i] >= x
    let lo = 0, hi = arr.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] < x) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function memAt(lane, t, before = false) {  // counter at t (after its updates at t, or just before them)
    const i = (before ? lowerBound(lane.mem.t, t) : upperBound(lane.mem.t, t)) - 1;
    return i < 0 ? null : lane.mem.v[i];
  }

  // ---- drawing ---------------------------------------------------------------------------------
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    cssW = Math.max(plot.clientWidth, GUTTER + 200);
    plotW = cssW - GUTTER - PAD_R;
    for (const [c, h] of [[canvas, height], [axis, AXIS_H]]) {
      c.width = Math.round(cssW * dpr); c.height = Math.round(h * dpr);
      c.style.width = cssW + "px"; c.style.height = h + "px";
      c.getContext("2d").setTransform(dpr, 0, 0, dpr, 0, 0);
    }
    draw();
  }

  function ticks() {
    const span = view.t1 - view.t0;
    const raw = span / Math.max(plotW / 90, 1), pow = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(k => k * pow).find(s => s >= raw);
    const [unit, scale] = span >= 2 ? ["s", 1] : span >= 2e-3 ? ["ms", 1e3] : ["µs", 1e6];
    const digits = Math.max(0, -Math.floor(Math.log10(step * scale) + 1e-9));
    const out = [];
    for (let k = Math.ceil(view.t0 / step); k * step <= view.t1; k++) {
      out.push({ t: k * step, label: (k * step * scale).toFixed(digits) });
    }
    return { unit, out };
  }

  function drawAxis(tk) {
    actx.clearRect(0, 0, cssW, AXIS_H);
    actx.fillStyle = "#1d2127"; actx.font = "11px sans-serif"; actx.textBaseline = "middle";
    actx.fillText("time (" + tk.unit + ")", 8, AXIS_H / 2);
    actx.strokeStyle = "#5f6b7a"; actx.textAlign = "center";
    for (const { t, label } of tk.out) {
      const x = xOf(t);
      actx.beginPath(); actx.moveTo(x, AXIS_H - 7); actx.lineTo(x, AXIS_H); actx.stroke();
      actx.fillText(label, x, AXIS_H / 2 - 2);
    }
    actx.textAlign = "start";
  }

  function drawBars(row) {
    const b = row.lane.bars, n = b.s.length, scale = plotW / (view.t1 - view.t0);
    ctx.fillStyle = SERIES_TINT[row.series % SERIES_TINT.length];
    ctx.fillRect(GUTTER, row.y, plotW, row.h);
    let count = 0, lastPx = -Infinity;
    ctx.font = "10px sans-serif"; ctx.textBaseline = "middle"; ctx.lineWidth = 0.5;
    ctx.strokeStyle = "rgba(0,0,0,0.45)";
    for (let i = upperBound(b.s, view.t0 - row.lane.maxDur - 1e-12); i < n && b.s[i] <= view.t1; i++) {
      const end = b.s[i] + b.d[i];
      if (end < view.t0) continue;
      count++;
      const x0 = GUTTER + (b.s[i] - view.t0) * scale;
      let w = b.d[i] * scale;
      if (w < 1) {  // sub-pixel bars: at most one per pixel column
        if (Math.floor(x0) === lastPx) continue;
        lastPx = Math.floor(x0); w = 1;
      }
      ctx.fillStyle = colour[b.m[i]][b.o[i]];
      ctx.fillRect(x0, row.y + 1, w, row.h - 2);
      if (w > 4) ctx.strokeRect(x0, row.y + 1, w, row.h - 2);
      const text = String(b.b[i]);
      if (w > text.length * 6 + 4) {
        ctx.fillStyle = D.ops[b.o[i]] === "W" ? "#fff" : "#111";
        ctx.fillText(text, x0 + 2, row.y + row.h / 2);
      }
    }
    return count;
  }

  function drawMemory(row) {
    const { t, v } = row.lane.mem, n = t.length;
    ctx.fillStyle = "#fafbfc"; ctx.fillRect(GUTTER, row.y, plotW, row.h);
    const base = row.y + row.h - 1, yOf = g => base - g / memTop * (row.h - 4);
    if (showLimit) {
      ctx.strokeStyle = "#d62728"; ctx.setLineDash([4, 3]); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(GUTTER, yOf(limit)); ctx.lineTo(GUTTER + plotW, yOf(limit)); ctx.stroke();
      ctx.setLineDash([]);
    }
    if (!n) return;
    const first = Math.max(0, upperBound(t, view.t0) - 1);
    ctx.beginPath(); ctx.moveTo(xOf(t[first]), base); ctx.lineTo(xOf(t[first]), yOf(v[first]));
    let j = first + 1;
    for (; j < n && t[j - 1] <= view.t1; j++) { ctx.lineTo(xOf(t[j]), yOf(v[j - 1])); ctx.lineTo(xOf(t[j]), yOf(v[j])); }
    const stop = Math.max(D.series[row.series].makespan_s, t[n - 1]);  // hold the last value to the series' end
    const xEnd = xOf(Math.max(Math.min(stop, view.t1), t[j - 1]));
    ctx.lineTo(xEnd, yOf(v[j - 1])); ctx.lineTo(xEnd, base); ctx.closePath();
    const line = MEM_LINE[row.series % MEM_LINE.length];
    ctx.globalAlpha = 0.18; ctx.fillStyle = line; ctx.fill(); ctx.globalAlpha = 1;
    ctx.strokeStyle = line; ctx.lineWidth = 1.2; ctx.stroke();
  }

  function drawLabels() {
    ctx.clearRect(0, 0, GUTTER, height);
    ctx.textBaseline = "middle";
    for (const row of rows) {
      ctx.fillStyle = row.kind === "bars" ? "#1d2127" : "#5f6b7a";
      ctx.font = row.kind === "bars" ? "12px sans-serif" : "11px sans-serif";
      const x = row.kind === "bars" ? 8 : 18;
      ctx.fillText(row.label, x, row.y + (row.kind === "bars" ? row.h / 2 : 10), GUTTER - x - 6);
      if (row.kind === "mem") {
        let peak = 0;
        for (const g of row.lane.mem.v) peak = Math.max(peak, g);
        ctx.fillText("peak " + num(peak, 3) + " GiB", x, row.y + 24, GUTTER - x - 6);
        ctx.fillText("scale 0–" + num(memTop, 3) + " GiB", x, row.y + 37, GUTTER - x - 6);
      }
    }
  }

  function draw() {
    const tk = ticks();
    ctx.clearRect(0, 0, cssW, height);
    let visible = 0;
    ctx.save();
    ctx.beginPath(); ctx.rect(GUTTER, 0, plotW, height); ctx.clip();
    for (const row of rows) {
      if (row.kind === "bars") visible += drawBars(row); else drawMemory(row);
    }
    ctx.strokeStyle = "rgba(0,0,0,0.08)"; ctx.lineWidth = 1;
    for (const { t } of tk.out) { ctx.beginPath(); ctx.moveTo(xOf(t), 0); ctx.lineTo(xOf(t), height); ctx.stroke(); }
    ctx.restore();
    drawLabels();
    drawAxis(tk);
    document.getElementById("range").textContent = fmtTime(view.t0) + " – " + fmtTime(view.t1);
    document.body.dataset.visible = String(visible);
  }
  let pending = false;
  function requestDraw() {
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); }
  }

  // ---- zoom and pan ----------------------------------------------------------------------------
  function setView(t0, span) {
    const full = FULL[1] - FULL[0];
    span = Math.min(Math.max(span, full * 1e-7, 1e-9), full);
    t0 = Math.min(Math.max(t0, FULL[0]), FULL[1] - span);
    view.t0 = t0; view.t1 = t0 + span;
  }
  function zoomAt(t, factor) {
    const span = view.t1 - view.t0, frac = (t - view.t0) / span;
    const next = span * factor;
    setView(t - frac * next, next);
  }
  function panBy(px) { setView(view.t0 + px / plotW * (view.t1 - view.t0), view.t1 - view.t0); }
  const mid = () => (view.t0 + view.t1) / 2;
  document.getElementById("zoom-in").addEventListener("click", () => { zoomAt(mid(), 1 / 1.6); draw(); });
  document.getElementById("zoom-out").addEventListener("click", () => { zoomAt(mid(), 1.6); draw(); });
  document.getElementById("zoom-fit").addEventListener("click", () => { setView(FULL[0], FULL[1] - FULL[0]); draw(); });
  window.addEventListener("keydown", e => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const act = { "+": () => zoomAt(mid(), 1 / 1.6), "=": () => zoomAt(mid(), 1 / 1.6), "-": () => zoomAt(mid(), 1.6),
                  "0": () => setView(FULL[0], FULL[1] - FULL[0]), ArrowLeft: () => panBy(-plotW / 10),
                  ArrowRight: () => panBy(plotW / 10) }[e.key];
    if (act) { act(); draw(); e.preventDefault(); }
  });

  let drag = null;
  function onWheel(e) {
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? plotW : 1;
    const px = e.clientX - canvas.getBoundingClientRect().left;
    if (px < GUTTER) return;  // the label column scrolls the page
    e.preventDefault();
    if (e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY)) panBy((e.deltaX || e.deltaY) * unit);
    else zoomAt(tOf(px), Math.exp(e.deltaY * unit * 0.002));
    requestDraw();
  }
  function onDown(e) {
    if (e.button !== 0) return;
    drag = { x: e.clientX, t0: view.t0 };
    e.target.setPointerCapture(e.pointerId);
    e.target.classList.add("dragging");
    hideTip();
  }
  function onUp(e) { drag = null; e.target.classList.remove("dragging"); }
  for (const c of [canvas, axis]) {
    c.addEventListener("wheel", onWheel, { passive: false });
    c.addEventListener("pointerdown", onDown);
    c.addEventListener("pointerup", onUp);
    c.addEventListener("pointercancel", onUp);
  }
  axis.addEventListener("pointermove", e => {
    if (drag) { setView(drag.t0 - (e.clientX - drag.x) / plotW * (view.t1 - view.t0), view.t1 - view.t0); requestDraw(); }
  });

  // ---- hover -----------------------------------------------------------------------------------
  function barAt(lane, t, tol) {  // index of the bar under time t (within tol), or -1
    const b = lane.bars;
    let best = -1, bestDist = Infinity;
    for (let i = upperBound(b.s, t + tol) - 1, k = 0; i >= 0 && k < 512; i--, k++) {
      if (b.s[i] + lane.maxDur < t - tol) break;
      const end = b.s[i] + b.d[i], dist = t < b.s[i] ? b.s[i] - t : t > end ? t - end : 0;
      if (dist <= tol && dist < bestDist) { best = i; bestDist = dist; if (dist === 0) break; }
    }
    return best;
  }
  const tr = (k, v) => "<tr><td>" + esc(k) + "</td><td>" + esc(v) + "</td></tr>";
  function barTip(row, i) {
    const b = row.lane.bars, op = D.ops[b.o[i]], layers = D.layers[String(b.c[i])];
    const rows_ = [tr("module", D.modules[b.m[i]]), tr("chunk", b.c[i] + (layers ? " (" + layers + ")" : "")),
      tr("micro-batch", b.b[i]), tr("unit", b.u[i]), tr("op", op + (OP_NAMES[op] ? " (" + OP_NAMES[op] + ")" : "")),
      tr("action", b.c[i] + op + b.u[i]), tr("rank", row.rank + " (" + D.series[row.series].name + ")"),
      tr("start", fmtTime(b.s[i])), tr("duration", fmtTime(b.d[i])), tr("end", fmtTime(b.s[i] + b.d[i]))];
    if (b.a[i] != null) rows_.push(tr("activations", num(b.a[i], 4) + " GiB"));
    if (row.lane.mem.t.length) {
      const m0 = memAt(row.lane, b.s[i], true), m1 = memAt(row.lane, b.s[i] + b.d[i]);
      if (m1 != null) rows_.push(tr("memory", (m0 == null ? "–" : num(m0, 4)) + " → " + num(m1, 4) + " GiB (before → after)"));
    }
    return "<b>" + esc(b.n[i]) + "</b><table>" + rows_.join("") + "</table>";
  }
  function memTip(row, t) {
    const g = memAt(row.lane, t);
    return "<b>rank " + row.rank + " memory (" + esc(D.series[row.series].name) + ")</b><table>" +
      tr("time", fmtTime(t)) + tr("memory", g == null ? "–" : num(g, 4) + " GiB") +
      (showLimit ? tr("limit", num(limit, 4) + " GiB") : "") + "</table>";
  }
  function showTip(html, e) {
    tip.innerHTML = html; tip.style.display = "block";
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = (e.clientX + 14 + w > window.innerWidth ? e.clientX - w - 14 : e.clientX + 14) + "px";
    tip.style.top = (e.clientY + 14 + h > window.innerHeight ? Math.max(0, e.clientY - h - 14) : e.clientY + 14) + "px";
  }
  function hideTip() { tip.style.display = "none"; }
  canvas.addEventListener("pointermove", e => {
    if (drag) { setView(drag.t0 - (e.clientX - drag.x) / plotW * (view.t1 - view.t0), view.t1 - view.t0); requestDraw(); return; }
    const rect = canvas.getBoundingClientRect(), px = e.clientX - rect.left, py = e.clientY - rect.top;
    const row = rows.find(r => py >= r.y && py < r.y + r.h);
    if (!row || px < GUTTER || px > GUTTER + plotW) { hideTip(); return; }
    const t = tOf(px);
    if (row.kind === "mem") { showTip(memTip(row, t), e); return; }
    const i = barAt(row.lane, t, 3 * (view.t1 - view.t0) / plotW);
    if (i < 0) hideTip(); else showTip(barTip(row, i), e);
  });
  canvas.addEventListener("pointerleave", hideTip);

  // ---- header: summary and legend --------------------------------------------------------------
  function header() {
    const parts = [D.ranks + " ranks"];
    for (const s of D.series) {
      let text = s.name + ": " + s.bars + " bars, span " + fmtTime(s.makespan_s);
      if (s.iteration_s != null) text += ", iteration " + fmtTime(s.iteration_s);
      if (s.bubble != null) text += ", bubble " + (100 * s.bubble).toFixed(1) + "%";
      if (s.status && s.status !== "ok") text += " (" + s.status + ")";
      parts.push(text);
    }
    if (D.series.length === 2 && D.series[0].makespan_s > 0) {
      parts.push(D.series[1].name + " / " + D.series[0].name + " span " + (D.series[1].makespan_s / D.series[0].makespan_s).toFixed(3) + "×");
    }
    document.getElementById("summary").innerHTML = parts.map(p => "<span>" + esc(p) + "</span>").join("");
    const keys = D.modules.map((m, k) => [PALETTE[k % PALETTE.length], m, "swatch"]);
    for (const op of D.ops) keys.push([shade("#8c8c8c", OP_SHADE[op] ?? 0), op + " " + (OP_NAMES[op] || op), "swatch"]);
    if (D.series.length > 1) D.series.forEach((s, si) => keys.push([SERIES_TINT[si % SERIES_TINT.length], "lane: " + s.name, "swatch"]));
    for (const si of memSeries) keys.push([MEM_LINE[si % MEM_LINE.length], "memory (" + D.series[si].name + ")", "swatch line"]);
    if (showLimit) keys.push(["", "memory limit " + num(limit, 4) + " GiB", "swatch dash"]);
    document.getElementById("legend").innerHTML = keys.map(([c, label, cls]) =>
      '<span class="key"><span class="' + cls + '" style="' + (cls === "swatch line" ? "border-color" : cls === "swatch" ? "background" : "") +
      (c ? ":" + c : "") + '"></span>' + esc(label) + "</span>").join("");
  }

  // A small scripting handle (automation, tests): show a time range, find a bar on the canvas.
  window.dipViewer = {
    setView(t0, t1) { setView(t0, t1 - t0); draw(); return [view.t0, view.t1]; },
    barPosition(rank, series, i) {  // canvas CSS pixel of bar i's middle, or null
      const row = rows.find(r => r.kind === "bars" && r.rank === rank && r.series === series);
      if (!row || i >= row.lane.bars.s.length) return null;
      return [xOf(row.lane.bars.s[i] + row.lane.bars.d[i] / 2), row.y + row.h / 2];
    },
  };

  header();
  Object.assign(document.body.dataset, { bars: String(totalBars), ranks: String(D.ranks),
                                         lanes: String(rows.filter(r => r.kind === "bars").length),
                                         memoryPoints: String(memPoints) });
  window.addEventListener("resize", resize);
  resize();
  document.body.dataset.ready = "1";
})();
