"""The live dashboard's page (``--web``): one HTML document with its CSS and JavaScript inline.

It polls ``data.json`` once a second and draws its charts as SVG itself: no CDN, no
external asset, so it works offline. Every shown number also sits in a ``data-value``
attribute, so tests (and scrapers) read it without parsing formatted text.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>procly loadtest (live)</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.2em 0 .4em}
#desc{color:#555;font-size:.9em}
.badge{display:inline-block;padding:1px 8px;border-radius:8px;background:#ddd;font-size:.85em}
.badge.running{background:#cde7ff}.badge.finished{background:#d8f0d8}.badge.lost{background:#ffd9d9}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:.8em 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:96px}
.card b{display:block;font-size:1.35em}.card small{color:#666}
.charts{display:flex;flex-wrap:wrap;gap:10px}.charts svg{background:#fff;border:1px solid #ddd;border-radius:6px}
table{border-collapse:collapse;background:#fff}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}
td:first-child,th:first-child{text-align:left}.pass{color:#1b7f3b;font-weight:bold}.fail{color:#b00020;font-weight:bold}
</style></head><body>
<h1>procly loadtest <span id="state" class="badge" data-value="waiting">waiting</span></h1>
<div id="desc"></div>
<div class="cards">
<div class="card"><small>elapsed s</small><b id="elapsed" data-value="0">0</b></div>
<div class="card"><small>requests</small><b id="requests" data-value="0">0</b></div>
<div class="card"><small>requests/s (last s)</small><b id="rps" data-value="0">0</b></div>
<div class="card"><small>errors</small><b id="errors" data-value="0">0</b></div>
<div class="card"><small>errors/s (last s)</small><b id="eps" data-value="0">0</b></div>
<div class="card"><small>active users</small><b id="users" data-value="0">0</b></div>
<div class="card"><small>p50 ms</small><b id="p50" data-value="0">0</b></div>
<div class="card"><small>p95 ms</small><b id="p95" data-value="0">0</b></div>
<div class="card"><small>p99 ms</small><b id="p99" data-value="0">0</b></div>
</div>
<div class="charts">
<svg id="chart-throughput" width="460" height="220"></svg>
<svg id="chart-latency" width="460" height="220"></svg>
<svg id="chart-users" width="460" height="220"></svg>
</div>
<h2>Requests by name</h2>
<table id="names"><thead><tr><th>name</th><th>requests</th><th>requests/s</th><th>errors</th><th>p50 ms</th>
<th>p95 ms</th><th>p99 ms</th></tr></thead><tbody></tbody></table>
<h2>Checks</h2>
<table id="checks"><thead><tr><th>check</th><th>passed</th><th>failed</th><th>passed %</th></tr></thead>
<tbody></tbody></table>
<h2>Thresholds <span id="verdict" data-value=""></span></h2>
<table id="thresholds"><thead><tr><th>condition</th><th>measured</th><th>verdict</th></tr></thead><tbody>
<tr><td colspan="3">shown when the run ends</td></tr></tbody></table>
<h2>Updates</h2>
<ol id="updates"></ol>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const COLORS = {requests_per_s:"#1f77b4", errors_per_s:"#d62728", latency_p50_ms:"#2ca02c",
                latency_p95_ms:"#ff7f0e", latency_p99_ms:"#d62728", users:"#9467bd"};
function fmt(v, digits){ return (typeof v === "number") ? v.toLocaleString("en-US",
  {maximumFractionDigits: digits, minimumFractionDigits: 0}) : String(v); }
function setValue(id, v, digits){ const el = document.getElementById(id); el.dataset.value = String(v);
  el.textContent = fmt(v, digits); }
function svg(tag, attrs, text){ const el = document.createElementNS(NS, tag);
  for (const k in attrs) el.setAttribute(k, attrs[k]); if (text !== undefined) el.textContent = text; return el; }
function chart(id, title, unit, series, keys){
  const root = document.getElementById(id); while (root.firstChild) root.removeChild(root.firstChild);
  const W = +root.getAttribute("width"), H = +root.getAttribute("height"), L = 62, R = 10, T = 26, B = 28;
  root.appendChild(svg("text", {x: W / 2, y: 16, "text-anchor": "middle", "font-weight": "bold",
                                "font-size": 13}, title));
  let ymax = 0; for (const p of series) for (const k of keys) ymax = Math.max(ymax, p[k] || 0);
  if (ymax <= 0) ymax = 1; ymax *= 1.1;
  const n = Math.max(series.length, 2), x = i => L + (W - L - R) * i / (n - 1), y = v => H - B - (H - T - B) * v / ymax;
  for (let g = 0; g <= 4; g++) { const v = ymax * g / 4;
    root.appendChild(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee"}));
    root.appendChild(svg("text", {x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 10}, fmt(v, 3))); }
  root.appendChild(svg("text", {x: 10, y: H / 2, transform: `rotate(-90 10 ${H / 2})`, "text-anchor": "middle",
                                "font-size": 10}, unit));
  root.appendChild(svg("text", {x: (W + L) / 2, y: H - 6, "text-anchor": "middle", "font-size": 10},
                       "second of the run"));
  keys.forEach((k, j) => {
    const pts = series.map((p, i) => `${x(i).toFixed(1)},${y(p[k] || 0).toFixed(1)}`).join(" ");
    root.appendChild(svg("polyline", {points: pts, fill: "none", stroke: COLORS[k], "stroke-width": 2}));
    root.appendChild(svg("text", {x: L + 8 + j * 92, y: T + 10, "font-size": 10, fill: COLORS[k]},
                         k.replace("latency_", "").replace("_ms", "").replace("_per_s", "/s")));
  });
}
function rows(id, list, cells){
  const body = document.querySelector(`#${id} tbody`); while (body.firstChild) body.removeChild(body.firstChild);
  for (const item of list) { const tr = document.createElement("tr");
    for (const [text, cls] of cells(item)) { const td = document.createElement("td"); td.textContent = text;
      if (cls) td.className = cls; tr.appendChild(td); }
    body.appendChild(tr); }
}
let done = false;
function render(d){
  const state = !d.started ? "waiting" : (d.running ? "running" : "finished");
  const badge = document.getElementById("state"); badge.textContent = state; badge.dataset.value = state;
  badge.className = "badge " + state;
  document.getElementById("desc").textContent = d.description || "";
  const last = d.series.length ? d.series[d.series.length - 1] : {requests_per_s: 0, errors_per_s: 0};
  setValue("elapsed", d.elapsed_s, 1); setValue("requests", d.requests, 0); setValue("errors", d.errors, 0);
  setValue("rps", last.requests_per_s, 0); setValue("eps", last.errors_per_s, 0); setValue("users", d.users, 0);
  setValue("p50", d.latency_p50_ms || 0, 3); setValue("p95", d.latency_p95_ms || 0, 3);
  setValue("p99", d.latency_p99_ms || 0, 3);
  chart("chart-throughput", "Throughput", "per second", d.series, ["requests_per_s", "errors_per_s"]);
  chart("chart-latency", "Latency", "ms", d.series, ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"]);
  chart("chart-users", "Active users", "users", d.series, ["users"]);
  rows("names", d.by_name, s => [[s.name], [fmt(s.requests, 0)], [fmt(s.requests_per_s, 1)], [fmt(s.errors, 0)],
       [fmt(s.latency_p50_ms, 3)], [fmt(s.latency_p95_ms, 3)], [fmt(s.latency_p99_ms, 3)]]);
  rows("checks", d.checks, c => [[c.name], [fmt(c.passed, 0)], [fmt(c.failed, 0)],
       [fmt(c.passed + c.failed ? 100 * c.passed / (c.passed + c.failed) : 100, 2)]]);
  if (d.started && !d.running) {
    rows("thresholds", d.thresholds, t => [[t.condition], [t.measured], [t.passed ? "pass" : "FAIL",
         t.passed ? "pass" : "fail"]]);
    if (!d.thresholds.length) rows("thresholds", [1], () => [["no --fail-if condition was given"], [""], [""]]);
    const v = document.getElementById("verdict"); v.dataset.value = d.verdict || "none";
    v.textContent = d.verdict === "fail" ? "(a threshold broke)" : (d.verdict === "pass" ? "(all passed)" : "");
    v.className = d.verdict === "fail" ? "fail" : "pass";
    done = true;
  }
  const li = document.createElement("li"); li.dataset.requests = String(d.requests);
  li.dataset.state = state; li.textContent = `${new Date().toISOString()} ${state} ${d.requests} requests`;
  const list = document.getElementById("updates"); list.appendChild(li);
  while (list.children.length > 30) list.removeChild(list.firstChild);
}
async function tick(){
  if (done) return;
  try { const r = await fetch("data.json", {cache: "no-store"}); render(await r.json()); }
  catch (e) { const b = document.getElementById("state"); if (b.dataset.value !== "finished") {
    b.textContent = "disconnected"; b.dataset.value = "disconnected"; b.className = "badge lost"; } }
}
tick(); setInterval(tick, 1000);
</script>
</body></html>
"""
