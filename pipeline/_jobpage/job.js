// The job page: polls api/job once a second and draws it. No framework, no build:
// fetch, the DOM and an inline SVG. Text from the job (reject messages, ids) is only
// ever set as textContent.
"use strict";

// once a second; "?every=SECONDS" asks for another pace (0.2 at the fastest)
const every = Number(new URLSearchParams(location.search).get("every")) || 1;
const POLL_MS = Math.max(200, 1000 * every);
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
const n = (x) => (x === null || x === undefined ? "–" : fmt.format(x));

function usd(x) {
  if (!x) return "$0.00";
  if (Math.abs(x) < 0.0001) return "<$0.0001";
  if (Math.abs(x) < 1) return "$" + x.toFixed(4);
  return "$" + x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) tr.appendChild(el("td", text, cls));
  return tr;
}

function setText(id, text) {
  const e = $(id);
  if (e.textContent !== String(text)) e.textContent = String(text);
}

function state(job) {
  const s = job.statistics;
  if (s.finished) return ["finished", "finished"];
  if (s.stopped_reason) return ["stopped: " + s.stopped_reason, "stopped"];
  if (job.source === "state file") return [job.ready ? "not running (state file)" : "unreadable", "bad"];
  return [job.ready ? "running" : "not ready", job.ready ? "running" : "bad"];
}

function outcomes(s) {
  const main = { succeeded: 0, errored: 0, canceled: 0, expired: 0 };
  const errors = {};
  for (const [key, count] of Object.entries(s.outcomes)) {
    if (key === "errored" || key.startsWith("errored:")) {
      main.errored += count;
      const t = key.slice(8) || "unknown";
      errors[t] = (errors[t] || 0) + count;
    } else main[key] = (main[key] || 0) + count;
  }
  return [main, errors];
}

function drawOutcomes(s) {
  const body = $("outcomes").tBodies[0];
  const [main, errors] = outcomes(s);
  const rows = [];
  for (const [key, count] of Object.entries(main)) {
    const tr = row([[key, "outcome-" + key], [n(count), "num"]]);
    tr.id = "outcome-" + key;
    rows.push(tr);
    if (key === "errored") {
      for (const [t, c] of Object.entries(errors).sort((a, b) => b[1] - a[1])) {
        rows.push(row([[t, "sub"], [n(c), "num"]]));
      }
    }
  }
  const earlier = s.written - Object.values(s.outcomes).reduce((a, b) => a + b, 0);
  if (earlier > 0) rows.push(row([["written by earlier runs", "muted"], [n(earlier), "num"]]));
  rows.push(row([["rejected", "muted"], [n(s.rejected), "num"]]));
  body.replaceChildren(...rows);
}

function drawTokens(s) {
  const body = $("tokens").tBodies[0];
  const models = Object.keys(s.usage).sort();
  if (!models.length) {
    body.replaceChildren(row([["no succeeded results yet", "empty"]]));
    return;
  }
  body.replaceChildren(...models.map((m) => {
    const u = s.usage[m];
    return row([[m, "model"], [n(u.input_tokens), "num"], [n(u.output_tokens), "num"],
      [n(u.cache_read_input_tokens), "num"], [n(u.cache_creation_input_tokens), "num"],
      [usd(u.cost_usd), "num"]]);
  }));
}

function drawBatches(job) {
  const body = $("batches").tBodies[0];
  const b = job.batches;
  setText("oldest", b.length ? "(" + b.length + "; oldest " + duration(b[0].age_seconds) + ")" : "");
  if (!b.length) {
    body.replaceChildren(row([["none", "empty"]]));
    return;
  }
  body.replaceChildren(...b.map((x) => {
    const c = x.counts || {};
    const k = (name) => (name in c ? n(c[name]) : "–");
    return row([[x.batch_id || "(not created yet)"], [x.status], [duration(x.age_seconds), "num"],
      [n(x.request_count), "num"], [k("processing"), "num"], [k("succeeded"), "num"],
      [k("errored"), "num"], [k("canceled"), "num"], [k("expired"), "num"]]);
  }));
}

function drawRejects(job) {
  const box = $("rejects");
  if (!job.rejects.length) {
    box.replaceChildren(el("div", job.statistics.rejected ? n(job.statistics.rejected) +
      " (types not known)" : "none", "empty"));
    return;
  }
  box.replaceChildren(...job.rejects.map((kind) => {
    const div = el("div", null, "reject-type");
    const h = el("h3", kind.type + " ");
    h.appendChild(el("span", "× " + n(kind.count), "muted"));
    div.appendChild(h);
    const table = el("table");
    const tbody = el("tbody");
    for (const r of kind.first) {
      tbody.appendChild(row([["line " + n(r.line)], [r.custom_id || "(no custom_id)"],
        [r.message, "msg"]]));
    }
    if (kind.count > kind.first.length) {
      tbody.appendChild(row([["… " + n(kind.count - kind.first.length) + " more", "muted"]]));
    }
    table.appendChild(tbody);
    div.appendChild(table);
    return div;
  }));
}

function drawChart(job) {
  const svg = $("chart");
  const h = job.history;
  const points = [];
  for (let i = 1; i < h.length; i++) {
    const dt = h[i][0] - h[i - 1][0];
    if (dt > 0) points.push([h[i][0], Math.max(0, (h[i][1] - h[i - 1][1]) / dt)]);
  }
  const W = 800, H = 160;
  const end = job.time, start = end - 3600;
  const from = points.length ? Math.max(start, h[0][0]) : start;
  const span = Math.max(1, end - from);
  const max = Math.max(1, ...points.map((p) => p[1]));
  const x = (t) => ((t - from) / span) * W;
  const y = (v) => H - 4 - (v / max) * (H - 12);
  const ns = "http://www.w3.org/2000/svg";
  const children = [];
  if (points.length) {
    let d = "M" + x(points[0][0]).toFixed(1) + "," + y(points[0][1]).toFixed(1);
    for (const p of points.slice(1)) d += " L" + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
    const area = document.createElementNS(ns, "path");
    area.setAttribute("class", "area");
    area.setAttribute("d", d + " L" + x(points[points.length - 1][0]).toFixed(1) + "," + H +
      " L" + x(points[0][0]).toFixed(1) + "," + H + " Z");
    const line = document.createElementNS(ns, "path");
    line.setAttribute("class", "line");
    line.setAttribute("d", d);
    children.push(area, line);
  }
  svg.replaceChildren(...children);
  setText("chart-from", duration(end - from) + " ago");
  setText("chart-max", "peak " + n(Math.round(max)) + " /s");
}

function draw(job) {
  const s = job.statistics;
  setText("name", job.name);
  const [label, cls] = state(job);
  const pill = $("state");
  pill.textContent = label;
  pill.className = "pill " + cls;
  const ready = $("ready");
  ready.textContent = job.ready ? "ready" : "not ready";
  ready.className = "pill " + (job.ready ? "ok" : "bad");
  ready.title = job.ready_reason;
  setText("updated", "updated " + new Date(job.time * 1000).toLocaleTimeString());
  for (const key of ["read", "submitted", "written", "in_flight", "retrying", "rejected",
    "batches_submitted", "batches_in_flight", "retried"]) setText(key, n(s[key]));
  setText("total", s.total === null ? "?" : n(s.total));
  const pct = s.total ? Math.min(100, (100 * s.written) / s.total) : (s.finished ? 100 : 0);
  $("bar-done").style.width = pct.toFixed(1) + "%";
  setText("percent", s.total === null && !s.finished ? n(s.written) : pct.toFixed(1) + "%");
  setText("eta", s.finished ? "done" : duration(job.eta_seconds));
  setText("rate", job.rate_per_second.toFixed(1) + " /s");
  setText("elapsed", duration(s.elapsed_seconds));
  setText("cost-estimated", usd(s.estimated_cost_usd));
  setText("cost-actual", usd(s.actual_cost_usd));
  drawOutcomes(s);
  drawTokens(s);
  drawBatches(job);
  drawRejects(job);
  drawChart(job);
  document.body.dataset.finished = String(s.finished);
}

async function poll() {
  try {
    const response = await fetch("api/job", { cache: "no-store" });
    if (response.ok) draw(await response.json());
    else setText("updated", "server answered " + response.status);
  } catch (err) {
    setText("updated", "no answer from the server (" + err + ")");
  }
  setTimeout(poll, POLL_MS);
}

poll();
