// tanuki dashboard: plain script, no build step. Talks to the JSON API and follows a job's
// Server-Sent Events. The job view exposes its state in data-* attributes (used by tests).
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const fmt = (x, digits = 4) => (x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toPrecision(digits));
const pct = (x) => (x === null || x === undefined ? "—" : (100 * x).toFixed(1) + "%");
const count = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en"));
const bytes = (n) => (n > 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : (n / 1024).toFixed(1) + " KiB");
const duration = (s) => {
  if (s === null || !Number.isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return "~" + (h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`);
};
const FINAL = ["succeeded", "failed", "canceled"];
const COLORS = ["#2f6fde", "#e0772f", "#1f8a4c", "#a23bc4", "#c62f2f", "#127c8a"];

// ---- API access (optional bearer token) ----------------------------------------------------
let token = sessionStorage.getItem("tanuki-token") || "";
function authHeaders(extra = {}) {
  return token ? { ...extra, Authorization: "Bearer " + token } : extra;
}
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (response.status === 401) showTokenPanel(true);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw Object.assign(new Error(body.detail || response.statusText), { status: response.status, problem: body });
  return body;
}
function showTokenPanel(show) { $("#token-panel").hidden = !show; }
$("#token-button").onclick = () => showTokenPanel($("#token-panel").hidden);
$("#token-form").onsubmit = (e) => {
  e.preventDefault();
  token = $("#token-input").value.trim();
  sessionStorage.setItem("tanuki-token", token);
  showTokenPanel(false);
  refreshLists();
  if (view) openJob(view.id);
};
$("#token-clear").onclick = () => { token = ""; sessionStorage.removeItem("tanuki-token"); $("#token-input").value = ""; };

// ---- Job list and datasets ---------------------------------------------------------------
function progressOf(job) {
  if (FINAL.includes(job.state)) return job.state === "succeeded" ? 1 : null;
  const phases = job.spec.phases || [];
  const total = phases.reduce((n, p) => n + p.epochs, 0);
  if (!job.phase || !total) return 0;
  const before = phases.slice(0, job.phase.index).reduce((n, p) => n + p.epochs, 0);
  return Math.min(1, (before + job.phase.epoch) / total);
}
async function refreshLists() {
  try {
    const { jobs } = await api("/v1/jobs?limit=50");
    const body = $("#jobs tbody");
    body.replaceChildren(...jobs.map((job) => {
      const p = progressOf(job);
      const bar = p === null ? el("span", { class: "muted" }, "—") : el("progress", { max: "1", value: String(p) });
      const tick = el("input", { type: "checkbox", class: "compare", title: "Compare", onclick: (e) => { e.stopPropagation(); toggleCompare(job.id, e.target.checked); } });
      tick.checked = compared.has(job.id);
      const row = el("tr", { "data-job-id": job.id, onclick: () => openJob(job.id) },
        el("td", {}, tick), el("td", {}, job.name || job.id.slice(0, 8)), el("td", {}, el("span", { class: "state " + job.state }, job.state)), el("td", {}, bar));
      if (view && view.id === job.id) row.classList.add("sel");
      return row;
    }));
    $("#jobs-empty").hidden = jobs.length > 0;
    if (compared.size >= 2) renderCompare();
    const { datasets } = await api("/v1/datasets");
    const select = $("#job-form select[name=dataset_id]");
    const current = select.value;
    select.replaceChildren(...datasets.map((d) => el("option", { value: d.id }, `${d.name} (${d.image_count} images, ${d.classes.length} classes)`)));
    if (current) select.value = current;
  } catch (error) {
    if (error.status !== 401) console.warn("refresh failed", error);
  }
}

// ---- Upload (XHR for progress) -----------------------------------------------------------
function upload(file) {
  const status = $("#upload-status"), bar = $("#upload-progress");
  const name = encodeURIComponent($("#dataset-name").value.trim() || file.name.replace(/\.(zip|tar|tar\.gz|tgz)$/i, ""));
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/datasets?name=" + name);
  if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  bar.hidden = false; bar.value = 0;
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) { bar.value = e.loaded / e.total; status.textContent = `Uploading ${bytes(e.loaded)} of ${bytes(e.total)}`; }
  };
  xhr.upload.onload = () => { status.textContent = "Unpacking and checking images…"; };
  xhr.onload = () => {
    bar.hidden = true;
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 201) {
      status.textContent = `Stored ${body.name}: ${body.image_count} images in ${body.classes.length} classes` + (body.skipped ? `, ${body.skipped} skipped` : "");
      refreshLists().then(() => { $("#job-form select[name=dataset_id]").value = body.id; });
    } else {
      status.textContent = `Upload failed (${xhr.status}): ${body.detail || xhr.statusText}`;
      if (xhr.status === 401) showTokenPanel(true);
    }
  };
  xhr.onerror = () => { bar.hidden = true; status.textContent = "Upload failed: the connection broke."; };
  xhr.send(file);
}
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
$("#file").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });

// ---- Submit (form or JSON), errors beside the field ---------------------------------------
function specFromForm() {
  const f = new FormData($("#job-form"));
  const number = (name) => { const v = String(f.get(name)).trim(); return v !== "" && !Number.isNaN(Number(v)) ? Number(v) : v; };
  const phases = [{ name: "head", trainable: ["head"], optimizer: { type: "adam", learning_rate: number("p0_lr") }, epochs: number("p0_epochs") }];
  if (number("p1_epochs") !== 0) phases.push({ name: "fine_tune", trainable: ["all"], optimizer: { type: "adam", learning_rate: number("p1_lr") }, epochs: number("p1_epochs") });
  return {
    name: f.get("name") || null,
    dataset_id: f.get("dataset_id") || "",
    split: { validation: 0.2, test: 0.1, seed: 1337 },
    input: { height: number("size"), width: number("size"), scale: 1 / 127.5, offset: -1.0 },
    augmentation: { horizontal_flip: true, rotation: 0.1 },
    model: { backbone: { architecture: "small_cnn", weights: null, widths: [16, 32] }, head: { pooling: "avg", dropout: 0.2, units: 1 } },
    batch_size: number("batch_size"),
    log_every_steps: 1,
    phases,
  };
}
function clearFieldErrors() {
  document.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  document.querySelectorAll(".field-error").forEach((n) => n.remove());
}
function showProblem(problem, jsonMode) {
  const field = problem.field || "";
  let target = jsonMode ? null : document.querySelector(`#job-form [data-field="${CSS.escape(field)}"]`);
  if (!target) target = jsonMode ? $("#spec-json") : $("#job-form button[type=submit]");
  target.classList.add("invalid");
  target.insertAdjacentElement("afterend", el("p", { class: "field-error", "data-error-field": field }, (field ? field + ": " : "") + problem.detail));
}
async function submitSpec(body, jsonMode) {
  clearFieldErrors();
  $("#submit-status").textContent = "";
  try {
    const job = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    $("#submit-status").textContent = "Queued " + job.id;
    await refreshLists();
    openJob(job.id);
  } catch (error) {
    if (error.problem && error.problem.detail) showProblem(error.problem, jsonMode); else $("#submit-status").textContent = error.message;
  }
}
$("#job-form").onsubmit = (e) => { e.preventDefault(); submitSpec(JSON.stringify(specFromForm()), false); };
$("#json-form").onsubmit = (e) => { e.preventDefault(); submitSpec($("#spec-json").value, true); };
$("#to-json").onclick = () => { $("#spec-json").value = JSON.stringify(specFromForm(), null, 2); $("#json-form").classList.add("on"); };

// ---- Charts (uPlot) -----------------------------------------------------------------------
// One chart per metric; one line per phase (validation dashed); a dashed vertical rule where a
// phase begins.
function makeChart(container, xLabel, yLabel) {
  return { container, xLabel, yLabel, plot: null, key: "" };
}
function drawChart(chart, xs, series, boundaries) {
  const key = series.map((s) => s.label).join("|");
  const data = [xs, ...series.map((s) => s.values)];
  if (chart.plot && chart.key === key) { chart.boundaries = boundaries; chart.plot.setData(data); return; }
  if (chart.plot) chart.plot.destroy();
  chart.key = key;
  chart.boundaries = boundaries;
  const width = Math.max(280, chart.container.clientWidth || 400);
  chart.plot = new uPlot({
    width, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: chart.xLabel, size: 40 }, { label: chart.yLabel, size: 55 }],
    series: [{ label: chart.xLabel }, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, dash: s.dash, spanGaps: false, points: { show: xs.length < 60 } }))],
    hooks: { draw: [(u) => {
      const ctx = u.ctx;
      ctx.save(); ctx.strokeStyle = "#8a93a3"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
      for (const b of chart.boundaries || []) {
        const x = u.valToPos(b, "x", true);
        if (x >= u.bbox.left && x <= u.bbox.left + u.bbox.width) { ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke(); }
      }
      ctx.restore();
    }] },
  }, data, chart.container);
}

// ---- The job view -------------------------------------------------------------------------
let view = null;
const charts = {
  stepLoss: makeChart($("#c-step-loss"), "step", "loss"),
  stepAcc: makeChart($("#c-step-acc"), "step", "accuracy"),
  epochLoss: makeChart($("#c-epoch-loss"), "epoch", "loss"),
  epochAcc: makeChart($("#c-epoch-acc"), "epoch", "accuracy"),
};

function newView(job) {
  return {
    id: job.id, job, lastId: 0, seen: 0, source: null, closed: false, retry: null,
    steps: new Map(),   // global_step -> step data
    epochs: new Map(),  // "phase:epoch" -> epoch data
    phases: [],         // phase index -> started data
    stepStart: new Map(), // phase index -> first global step
    lastStep: null, state: job.state, end: null, drawQueued: false,
  };
}

async function openJob(id) {
  if (view && view.source) view.source.close();
  if (view && view.retry) clearTimeout(view.retry);
  let job;
  try { job = await api("/v1/jobs/" + encodeURIComponent(id)); } catch (error) { $("#submit-status").textContent = "Cannot open job: " + error.message; return; }
  view = newView(job);
  history.replaceState(null, "", "?job=" + encodeURIComponent(id));
  document.querySelectorAll("#jobs tbody tr").forEach((r) => r.classList.toggle("sel", r.dataset.jobId === id));
  for (const chart of Object.values(charts)) { if (chart.plot) chart.plot.destroy(); chart.plot = null; chart.key = ""; }
  $("#job").hidden = false;
  $("#job-title").textContent = job.name || job.id;
  $("#job-title").title = job.id;
  renderAll();
  loadModel(view);
  loadCheckpoints(view);
  connect(view);
}

async function connect(v) {
  if (v !== view || v.closed) return;
  let url = `/v1/jobs/${encodeURIComponent(v.id)}/events?last_event_id=${v.lastId}`;
  if (token) {
    try {
      const t = await api("/v1/stream-tokens", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ job_id: v.id }) });
      url += "&access_token=" + encodeURIComponent(t.token);
    } catch (error) { setConn("down", "no stream token"); v.retry = setTimeout(() => connect(v), 3000); return; }
  }
  if (v !== view || v.closed) return;
  const source = new EventSource(url);
  v.source = source;
  source.onopen = () => setConn("live", "live");
  for (const kind of ["state", "phase", "step", "epoch", "checkpoint", "end"]) {
    source.addEventListener(kind, (e) => onEvent(v, kind, e));
  }
  // The server ended the stream on purpose: reconnect after the events we have.
  source.addEventListener("dropped", () => { source.close(); setConn("down", "dropped; reconnecting"); v.retry = setTimeout(() => connect(v), 1000); });
  source.addEventListener("shutdown", () => setConn("down", "server restarting"));
  source.onerror = () => {
    if (v.closed) return;
    if (source.readyState === EventSource.CLOSED) {
      // Not retried by the browser (e.g. a 401 after the stream token expired): do it ourselves.
      setConn("down", "reconnecting");
      v.retry = setTimeout(() => connect(v), 2000);
    } else {
      setConn("down", "reconnecting");
    }
  };
}

function setConn(cls, text) { const c = $("#conn"); c.className = "conn " + cls; c.textContent = text; }

function onEvent(v, kind, e) {
  if (v !== view) return;
  const id = Number(e.lastEventId);
  if (!(id > v.lastId)) return; // already have it (a replay after a reconnect)
  v.lastId = id;
  v.seen += 1;
  const data = JSON.parse(e.data);
  data._at = Date.now();
  switch (kind) {
    case "state": v.state = data.state; if (data.classes) v.classes = data.classes; break;
    case "phase":
      if (data.status === "started") v.phases[data.phase_index] = data;
      break;
    case "step":
      v.steps.set(data.global_step, data);
      if (!v.stepStart.has(data.phase_index) || v.stepStart.get(data.phase_index) > data.global_step) v.stepStart.set(data.phase_index, data.global_step);
      v.lastStep = data;
      break;
    case "epoch": v.epochs.set(`${data.phase_index}:${data.epoch}`, data); break;
    case "checkpoint": loadCheckpoints(v); break;
    case "end":
      v.end = data; v.state = data.state; v.closed = true;
      if (v.source) v.source.close();
      setConn("", "ended");
      loadCheckpoints(v);
      refreshLists();
      break;
  }
  scheduleRender();
}

function scheduleRender() {
  if (!view || view.drawQueued) return;
  view.drawQueued = true;
  requestAnimationFrame(() => { if (view) { view.drawQueued = false; renderAll(); } });
}

function phaseOffsets(job) {
  const offsets = [];
  let n = 0;
  for (const p of job.spec.phases) { offsets.push(n); n += p.epochs; }
  return offsets;
}

function renderAll() {
  const v = view;
  const job = v.job, phases = job.spec.phases;
  const root = $("#job");
  root.dataset.jobId = v.id;
  root.dataset.jobState = v.state;
  root.dataset.epochPoints = String(v.epochs.size);
  root.dataset.stepPoints = String(v.steps.size);
  root.dataset.lastEventId = String(v.lastId);
  root.dataset.events = String(v.seen);
  const state = $("#job-state");
  state.textContent = v.state; state.className = "state " + v.state;
  $("#cancel").hidden = FINAL.includes(v.state);
  const error = (v.end && v.end.error) || job.error;
  $("#job-error").hidden = !error; $("#job-error").textContent = error || "";

  // Facts: the current phase, its parameters and learning rate, ETAs.
  const current = v.lastStep ? v.lastStep.phase_index : v.phases.length - 1;
  const started = v.phases[current];
  const spec = phases[current];
  $("#f-phase").textContent = spec ? `${spec.name} (${current + 1}/${phases.length})` : "—";
  $("#f-epoch").textContent = v.lastStep && spec ? `${v.lastStep.epoch}/${spec.epochs} · batch ${v.lastStep.batch}/${v.lastStep.batches}` : "—";
  $("#f-trainable").textContent = started ? count(started.trainable_params) : "—";
  $("#f-frozen").textContent = started ? count(started.non_trainable_params) : "—";
  $("#f-lr").textContent = v.lastStep ? fmt(v.lastStep.learning_rate, 3) : started ? fmt(started.learning_rate, 3) : "—";
  const eta = estimate(v);
  $("#f-eta-phase").textContent = FINAL.includes(v.state) ? "—" : duration(eta.phase);
  $("#f-eta-job").textContent = FINAL.includes(v.state) ? "—" : duration(eta.job);

  const test = (v.end && v.end.test) || job.test_metrics;
  const tm = $("#test-metrics");
  tm.hidden = !test;
  if (test) tm.textContent = `Test set: loss ${fmt(test.loss)}, accuracy ${pct(test.accuracy)}`;

  // Per-step charts: x = global step, one line per phase.
  const stepXs = [...v.steps.keys()].sort((a, b) => a - b);
  const phaseIdx = [...new Set([...v.steps.values()].map((s) => s.phase_index))].sort();
  const stepSeries = (metric) => phaseIdx.map((p) => ({
    label: `${phases[p] ? phases[p].name : p} train`, color: COLORS[p % COLORS.length],
    values: stepXs.map((x) => { const s = v.steps.get(x); return s.phase_index === p ? s[metric] : null; }),
  }));
  const stepBounds = [...v.stepStart.entries()].filter(([p]) => p > 0).map(([, s]) => s - 0.5);
  drawChart(charts.stepLoss, stepXs, stepSeries("loss"), stepBounds);
  drawChart(charts.stepAcc, stepXs, stepSeries("accuracy"), stepBounds);

  // Per-epoch charts: x = epoch counted over the whole job; train solid, validation dashed.
  const offsets = phaseOffsets(job);
  const epochs = [...v.epochs.values()].map((e) => ({ x: offsets[e.phase_index] + e.epoch, e })).sort((a, b) => a.x - b.x);
  const epochXs = epochs.map((p) => p.x);
  const epochPhases = [...new Set(epochs.map((p) => p.e.phase_index))].sort();
  const epochSeries = (metric) => epochPhases.flatMap((p) => [
    { label: `${phases[p].name} train`, color: COLORS[p % COLORS.length], values: epochs.map(({ e }) => (e.phase_index === p ? e.train[metric] : null)) },
    { label: `${phases[p].name} validation`, color: COLORS[p % COLORS.length], dash: [6, 4], values: epochs.map(({ e }) => (e.phase_index === p && e.validation ? e.validation[metric] : null)) },
  ]);
  const epochBounds = offsets.slice(1).filter((o, i) => epochPhases.includes(i + 1)).map((o) => o + 0.5);
  drawChart(charts.epochLoss, epochXs, epochSeries("loss"), epochBounds);
  drawChart(charts.epochAcc, epochXs, epochSeries("accuracy"), epochBounds);

  // Evaluation: the final weights' on the test set (else validation) once the job has ended,
  // the latest epoch's on validation while it runs.
  const final = v.end && v.end.evaluation;
  const latest = epochs.filter(({ e }) => e.evaluation).pop();
  let shown = null;
  if (final && final.test) shown = { title: "Test set, final weights", e: final.test, set: "test" };
  else if (final && final.validation) shown = { title: "Validation set, final weights", e: final.validation, set: "validation" };
  else if (latest) shown = { title: `Validation set after ${phases[latest.e.phase_index].name} epoch ${latest.e.epoch}`, e: latest.e.evaluation };
  renderEvaluation(shown, v.classes || []);
}

// The confusion matrix as a heat map (each cell shaded by its share of its true class's row)
// and the per-class table.
function renderEvaluation(shown, classes) {
  const root = $("#evaluation");
  root.hidden = !shown;
  if (!shown) return;
  const e = shown.e;
  const name = (i) => classes[i] || String(i);
  root.dataset.images = String(e.images);
  $("#eval-title").textContent = `${shown.title}: accuracy ${pct(e.accuracy)} of ${count(e.images)} images`;
  const head = el("tr", {}, el("th", { class: "true" }, "true ↓ predicted →"), ...e.confusion_matrix.map((_, j) => el("th", {}, name(j))));
  const rows = e.confusion_matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    return el("tr", {}, el("th", { class: "true" }, name(i)), ...row.map((n, j) => {
      const share = total ? n / total : 0;
      const color = i === j ? "31,138,76" : "198,47,47";
      return el("td", { style: `background: rgba(${color},${(0.08 + 0.8 * share).toFixed(3)})`, title: `${name(i)} predicted as ${name(j)}: ${n} (${pct(share)})` }, String(n));
    }));
  });
  $("#confusion").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  $("#per-class tbody").replaceChildren(...e.per_class.map((c) => el("tr", {},
    el("td", {}, c.class), el("td", { class: "num" }, pct(c.precision)), el("td", { class: "num" }, pct(c.recall)),
    el("td", { class: "num" }, fmt(c.f1, 3)), el("td", { class: "num" }, count(c.support)))));
  const extra = [];
  if (e.roc_auc != null) extra.push(`ROC-AUC ${fmt(e.roc_auc, 3)}`);
  if (e.pr_auc != null) extra.push(`PR-AUC ${fmt(e.pr_auc, 3)}`);
  if (e.top5_accuracy != null) extra.push(`top-5 accuracy ${pct(e.top5_accuracy)}`);
  $("#eval-extra").textContent = extra.join(" · ");
  renderWorst(shown);
}

// The final weights' worst-classified images (their thumbnails exist for those only).
function renderWorst(shown) {
  const block = $("#worst-block");
  const key = shown.set ? `${view.id}:${shown.set}` : "";
  block.hidden = !shown.set || !(shown.e.worst || []).length;
  if (block.hidden || block.dataset.key === key) return;
  block.dataset.key = key;
  $("#worst").replaceChildren(...shown.e.worst.map((w, rank) => {
    const url = `/v1/jobs/${encodeURIComponent(view.id)}/evaluation/examples/${shown.set}/${rank}/image`;
    const img = el("img", { alt: w.file, title: w.file });
    if (token) fetch(url, { headers: authHeaders() }).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); });
    else img.src = url;
    return el("figure", {}, img, el("figcaption", {}, `${w.true_class} → ${w.predicted_class} (${pct(w.probability)}) · ${w.file}`));
  }));
}

// Seconds left in the phase and the job, from the pace of this phase (epoch durations, else the
// steps so far). Later phases are assumed to run at the same pace per batch; early stopping
// can only make it shorter.
function estimate(v) {
  const s = v.lastStep;
  if (!s) return { phase: null, job: null };
  const phases = v.job.spec.phases;
  const done = [...v.epochs.values()].filter((e) => e.phase_index === s.phase_index);
  let perBatch = null;
  if (done.length) perBatch = done.reduce((t, e) => t + e.seconds, 0) / done.length / s.batches;
  else {
    const first = v.steps.get(v.stepStart.get(s.phase_index));
    const n = s.global_step - first.global_step;
    if (n > 0) perBatch = (s._at - first._at) / 1000 / n;
  }
  if (perBatch === null) return { phase: null, job: null };
  const phaseLeft = ((phases[s.phase_index].epochs - s.epoch) * s.batches + (s.batches - s.batch)) * perBatch;
  const laterBatches = phases.slice(s.phase_index + 1).reduce((n, p) => n + p.epochs * s.batches, 0);
  return { phase: phaseLeft, job: phaseLeft + laterBatches * perBatch };
}

async function loadCheckpoints(v) {
  let list;
  try { list = await api(`/v1/jobs/${encodeURIComponent(v.id)}/checkpoints`); } catch (_) { return; }
  if (v !== view) return;
  const names = v.job.spec.phases.map((p) => p.name);
  $("#checkpoints tbody").replaceChildren(...list.checkpoints.map((c) => el("tr", {},
    el("td", {}, names[c.phase_index] || c.phase), el("td", {}, c.epoch),
    el("td", {}, c.validation ? fmt(c.validation.loss) : "—"), el("td", {}, c.validation ? pct(c.validation.accuracy) : "—"),
    el("td", {}, [c.best ? "best" : "", c.last ? "last" : ""].filter(Boolean).join(", ")),
    el("td", {}, bytes(c.size)),
    el("td", {}, ...checkpointLinks(c)))));
}

// The weights (safetensors) and the ONNX export of one checkpoint.
function checkpointLinks(c) {
  const stem = `${c.job_id}-phase${c.phase_index}-epoch${c.epoch}`;
  const onnx = `/v1/jobs/${encodeURIComponent(c.job_id)}/export?format=onnx&checkpoint=${encodeURIComponent(c.id)}`;
  return [
    el("a", { href: c.download, class: "download", onclick: (e) => download(e, c.download, `${stem}.safetensors`) }, "safetensors"),
    " · ",
    el("a", { href: onnx, class: "download onnx", onclick: (e) => download(e, onnx, `${stem}.onnx`) }, "ONNX"),
  ];
}

// With a token, a plain link cannot send it: fetch with the header and save the blob.
async function download(event, href, filename) {
  if (!token) return;
  event.preventDefault();
  const response = await fetch(href, { headers: authHeaders() });
  const blob = await response.blob();
  const a = el("a", { href: URL.createObjectURL(blob), download: filename });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function loadModel(v) {
  let summary;
  try { summary = await api(`/v1/jobs/${encodeURIComponent(v.id)}/model`); } catch (_) { return; }
  if (v !== view) return;
  const phases = summary.phases.map((p) => p.name);
  $("#model thead").replaceChildren(el("tr", {}, el("th", {}, "Layer"), el("th", {}, "Type"), el("th", {}, "Output shape"), el("th", { class: "num" }, "Params"),
    ...phases.map((p) => el("th", {}, "Trainable in " + p))));
  $("#model tbody").replaceChildren(...summary.layers.map((l) => el("tr", {},
    el("td", {}, l.name), el("td", {}, l.type), el("td", {}, "(" + l.output_shape.join(", ") + ")"), el("td", { class: "num" }, count(l.params)),
    ...l.trainable.map((t) => el("td", { class: l.params ? (t ? "y" : "n") : "n" }, l.params ? (t ? "yes" : "no") : "")))));
  $("#model tfoot").replaceChildren(el("tr", {}, el("td", { colspan: String(4 + phases.length) },
    `Total params: ${count(summary.total_params)} · ` + summary.phases.map((p) => `${p.name}: ${count(p.trainable_params)} trainable, ${count(p.non_trainable_params)} non-trainable`).join(" · "))));
}

$("#cancel").onclick = async () => {
  if (!view) return;
  try { await api(`/v1/jobs/${encodeURIComponent(view.id)}/cancel`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }); }
  catch (error) { $("#job-error").hidden = false; $("#job-error").textContent = error.message; }
  refreshLists();
};

window.addEventListener("resize", () => {
  for (const chart of [...Object.values(charts), ...Object.values(compareCharts)]) if (chart.plot) chart.plot.setSize({ width: Math.max(280, chart.container.clientWidth), height: 220 });
});

// ---- Comparison of jobs -------------------------------------------------------------------
// The validation curves of the ticked jobs, from their stored events (refetched as the list
// refreshes, so running jobs extend).
const compared = new Set();
const compareCharts = { loss: makeChart($("#c-compare-loss"), "epoch", "loss"), acc: makeChart($("#c-compare-acc"), "epoch", "accuracy") };

function toggleCompare(id, on) {
  if (on) compared.add(id); else compared.delete(id);
  renderCompare();
}

async function renderCompare() {
  const root = $("#compare");
  const ids = [...compared];
  root.hidden = ids.length < 2;
  if (root.hidden) return;
  const runs = [];
  for (const id of ids) {
    try {
      const [job, history] = await Promise.all([api("/v1/jobs/" + encodeURIComponent(id)), api(`/v1/jobs/${encodeURIComponent(id)}/metrics`)]);
      const offsets = phaseOffsets(job);
      const points = history.events.filter((e) => e.event === "epoch" && e.data.validation)
        .map((e) => ({ x: offsets[e.data.phase_index] + e.data.epoch, v: e.data.validation }));
      runs.push({ name: job.name || id.slice(0, 8), points });
    } catch (_) { /* deleted meanwhile: left out */ }
  }
  if ([...compared].join() !== ids.join()) return; // changed while fetching: a newer call draws
  const xs = [...new Set(runs.flatMap((r) => r.points.map((p) => p.x)))].sort((a, b) => a - b);
  const series = (metric) => runs.map((r, i) => ({
    label: r.name, color: COLORS[i % COLORS.length],
    values: xs.map((x) => { const p = r.points.find((q) => q.x === x); return p ? p.v[metric] : null; }),
  }));
  drawChart(compareCharts.loss, xs, series("loss"), []);
  drawChart(compareCharts.acc, xs, series("accuracy"), []);
  root.dataset.jobs = String(runs.length);
  root.dataset.points = String(runs.reduce((n, r) => n + r.points.length, 0));
}

// ---- Start ---------------------------------------------------------------------------------
refreshLists();
setInterval(refreshLists, 5000);
const initial = new URLSearchParams(location.search).get("job");
if (initial) openJob(initial);
