// triserve web demo: plain ES module, no framework, talks only to the gateway that served it.
import { DIGIT_STROKES, drawStrokes } from "./samples.js";

const $ = (sel) => document.querySelector(sel);
const api = (path) => new URL(`../${path}`, document.baseURI).href; // the page lives at /demo/
const enc = encodeURIComponent;
const BRUSH = 22; // px on the 280 px pad: about 1/13 of its width, like MNIST's strokes

const state = {
  model: null, version: null, labels: [], backends: [], modelBackends: [], explainers: [], topk: 5, catalog: [],
  blob: null, source: "", seq: 0,
};

// ------------------------------------------------------------------ gateway calls

/** The gateway's own error message of a failed response (its body is {"error": "..."}). */
async function errorOf(resp) {
  const text = await resp.text();
  let message = text.trim();
  try {
    const body = JSON.parse(text);
    message = body.error ?? body.message ?? body.detail ?? text;
    if (typeof message !== "string") message = JSON.stringify(message);
  } catch { /* not JSON: the text itself */ }
  return `${resp.status}: ${message || resp.statusText}`;
}

async function getJSON(path) {
  const resp = await fetch(api(path));
  if (!resp.ok) throw new Error(await errorOf(resp));
  return resp.json();
}

/** {name: ms} from a Server-Timing header ("preprocess;dur=0.1, backend;dur=1.2, total;dur=1.5"). */
function serverTiming(header) {
  const out = {};
  for (const part of (header || "").split(",")) {
    const m = part.trim().match(/^([\w-]+);dur=([\d.]+)/);
    if (m) out[m[1]] = parseFloat(m[2]);
  }
  return out;
}

const ms = (v) => (v === undefined ? "?" : `${v < 10 ? v.toFixed(2) : v.toFixed(1)} ms`);
const pct = (p) => (p < 1e-4 ? "<0.01%" : `${(100 * p).toFixed(p < 0.1 ? 2 : 1)}%`);

function showError(message) {
  const el = $("#error");
  el.textContent = message || "";
  el.hidden = !message;
}

// ------------------------------------------------------------------ model and version

async function loadModels() {
  const { models } = await getJSON("demo/models");
  state.catalog = models;
  const select = $("#model");
  select.replaceChildren(...models.map((m) => new Option(m.modelName, m.modelName)));
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && models.some((m) => m.modelName === wanted)) select.value = wanted;
  select.disabled = models.length === 0;
  if (models.length) await selectModel(select.value);
}

async function selectModel(name) {
  const desc = state.catalog.find((m) => m.modelName === name);
  state.model = name;
  state.modelBackends = desc.backends.map((b) => ({ name: b.name, protocol: b.protocol, health: b.health }));
  const select = $("#version");
  select.replaceChildren(...desc.versions.map((v) => new Option(v, v)));
  select.value = desc.modelVersion;
  select.disabled = desc.versions.length < 2;
  $("#model-info").textContent = `${desc.ready ? "ready" : "NOT ready"} · strategy ${desc.strategy} · backends: ` +
    state.modelBackends.map((b) => `${b.name} (${b.health})`).join(", ");
  await selectVersion(desc.modelVersion);
}

async function selectVersion(version) {
  const meta = await getJSON(`v2/models/${enc(state.model)}/versions/${enc(version)}`);
  state.version = version;
  // only the backends that serve this version get a column (e.g. an INT8 version has no Paddle route)
  const serving = meta.parameters?.backends;
  state.backends = serving ? state.modelBackends.filter((b) => serving.includes(b.name)) : state.modelBackends;
  state.explainers = state.backends.filter((b) => b.protocol === "torchserve").map((b) => b.name);
  buildColumns();
  state.labels = meta.parameters?.labels ?? [];
  const classes = state.labels.length || meta.outputs[0].shape.at(-1);
  state.topk = Math.min(5, classes);
  $("#results-h").textContent = `Top-${state.topk} per backend`;
  const digits = state.labels.length === 10 && state.labels.every((l, i) => l === String(i));
  $("#samples").hidden = !digits;
  $("#explain").disabled = state.explainers.length === 0 || !state.blob;
  if (state.blob) await classify(state.blob);
}

// ------------------------------------------------------------------ result columns

function buildColumns() {
  const cols = [...state.backends.map((b) => b.name), "auto"].map((name) => {
    const col = document.createElement("article");
    col.className = name === "auto" ? "col auto" : "col";
    col.dataset.backend = name;
    col.setAttribute("aria-label", name === "auto" ? "automatic routing" : `backend ${name}`);
    col.innerHTML = `<h3><span class="name"></span><span class="badge"></span></h3>
      <p class="lat"></p><ol></ol><p class="err" hidden></p>`;
    col.querySelector(".name").textContent = name === "auto" ? "auto (routing)" : name;
    return col;
  });
  $("#columns").replaceChildren(...cols);
}

function renderColumn(col, result) {
  const ol = col.querySelector("ol");
  const err = col.querySelector(".err");
  col.dataset.state = result.error ? "error" : "ok";
  col.dataset.top1 = result.error ? "" : result.ranked[0][0];
  col.dataset.servedBy = result.servedBy ?? "";
  err.hidden = !result.error;
  err.textContent = result.error ?? "";
  ol.replaceChildren(...(result.ranked ?? []).map(([label, p]) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="label"></span><span class="bar" aria-hidden="true"><span></span></span><span class="p"></span>`;
    li.querySelector(".label").textContent = label;
    li.querySelector(".bar span").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".p").textContent = pct(p);
    return li;
  }));
  const t = result.timing ?? {};
  const via = col.dataset.backend === "auto" && result.servedBy ? `routed to ${result.servedBy} · ` : "";
  col.querySelector(".lat").textContent = result.error ? "" :
    `${via}gateway ${ms(t.total)} (backend ${ms(t.backend)}) · round trip ${ms(result.roundTrip)}`;
}

async function predict(blob, backend) {
  const headers = { "Content-Type": blob.type || "application/octet-stream" };
  if (backend) headers["X-Backend"] = backend;
  const path = `predictions/${enc(state.model)}/${enc(state.version)}?topk=${state.topk}`;
  const t0 = performance.now();
  try {
    const resp = await fetch(api(path), { method: "PUT", body: blob, headers });
    const roundTrip = performance.now() - t0;
    if (!resp.ok) return { error: await errorOf(resp) };
    const ranked = Object.entries(await resp.json()).sort((a, b) => b[1] - a[1]);
    return { ranked, roundTrip, servedBy: resp.headers.get("X-Backend"), timing: serverTiming(resp.headers.get("Server-Timing")) };
  } catch (e) {
    return { error: `request failed: ${e.message}` };
  }
}

function showAgreement() {
  const cols = [...document.querySelectorAll(".col:not(.auto)")];
  const tops = cols.map((c) => c.dataset.top1).filter(Boolean);
  const counts = {};
  for (const t of tops) counts[t] = (counts[t] ?? 0) + 1;
  const majority = Object.entries(counts).sort((a, b) => b[1] - a[1])[0]?.[0];
  for (const c of document.querySelectorAll(".col")) {
    const agrees = c.dataset.top1 && c.dataset.top1 === majority;
    c.dataset.agrees = c.dataset.top1 ? (agrees ? "yes" : "no") : "";
    c.querySelector(".badge").textContent = c.dataset.top1 ? (agrees ? "✓ agrees" : "✗ differs") : "";
  }
  const el = $("#agreement");
  if (!tops.length) el.textContent = "No backend answered.";
  else if (tops.length === cols.length && Object.keys(counts).length === 1)
    el.textContent = `All ${cols.length} backends agree: ${majority}.`;
  else el.textContent = `Backends answer: ${cols.map((c) => `${c.dataset.backend} → ${c.dataset.top1 || "error"}`).join(", ")}.`;
  el.dataset.agree = tops.length === cols.length && Object.keys(counts).length === 1 ? "yes" : "no";
}

// ------------------------------------------------------------------ the model's input and its explanation

async function showInput(blob) {
  const resp = await fetch(api(`demo/input/${enc(state.model)}/${enc(state.version)}`), {
    method: "PUT", body: blob, headers: { "Content-Type": blob.type || "application/octet-stream" },
  });
  if (!resp.ok) throw new Error(await errorOf(resp));
  const bitmap = await createImageBitmap(await resp.blob());
  const canvas = $("#input28");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  canvas.setAttribute("aria-label", `The preprocessed input, ${bitmap.width}x${bitmap.height} pixels`);
  canvas.dataset.drawn = "true";
  $("#input-info").textContent = `${state.source}: ${resp.headers.get("X-Input-Shape")} tensor, shown as pixels`;
}

function clearInput() {
  const canvas = $("#input28");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "";
  canvas.setAttribute("aria-label", "The preprocessed input: none");
  $("#input-info").textContent = "";
}

function clearHeat() {
  const heat = $("#heat");
  heat.getContext("2d").clearRect(0, 0, heat.width, heat.height);
  heat.dataset.drawn = "";
}

function drawHeat(explanation) {
  const [channels, h, w] = explanation.shape;
  const a = explanation.attributions;
  const sum = new Float32Array(h * w);
  for (let c = 0; c < channels; c++)
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) sum[y * w + x] += a[c][y][x];
  const max = sum.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
  const heat = $("#heat");
  heat.width = w;
  heat.height = h;
  const ctx = heat.getContext("2d");
  const img = ctx.createImageData(w, h);
  sum.forEach((v, i) => {
    const strength = Math.min(1, Math.abs(v) / max);
    const [r, g, b] = v >= 0 ? [255, 48, 0] : [0, 140, 255];
    img.data.set([r, g, b, Math.round(255 * Math.sqrt(strength) * 0.8)], i * 4);
  });
  ctx.putImageData(img, 0, 0);
  heat.dataset.drawn = "true";
}

async function explain() {
  if (!state.blob) return;
  const button = $("#explain");
  const info = $("#explain-info");
  button.disabled = true;
  info.textContent = "Explaining…";
  const path = `explanations/${enc(state.model)}/${enc(state.version)}?steps=${$("#steps").value}`;
  const t0 = performance.now();
  try {
    const resp = await fetch(api(path), {
      method: "POST", body: state.blob, headers: { "Content-Type": state.blob.type || "application/octet-stream" },
    });
    if (!resp.ok) throw new Error(await errorOf(resp));
    const body = await resp.json();
    const e = body.explanations[0];
    drawHeat(e);
    const t = serverTiming(resp.headers.get("Server-Timing"));
    info.textContent = `Integrated Gradients, ${body.steps} steps, class ${e.label} (p ${pct(e.probability)}) ` +
      `on ${body.backend}: gateway ${ms(t.total)}, round trip ${ms(performance.now() - t0)}. ` +
      "Red pushes towards the class, blue away from it.";
  } catch (err) {
    clearHeat();
    info.textContent = "";
    showError(`Explanation failed: ${err.message}`);
  } finally {
    button.disabled = state.explainers.length === 0 || !state.blob;
  }
}

// ------------------------------------------------------------------ classify

async function classify(blob, source) {
  const seq = ++state.seq;
  state.blob = blob;
  if (source) state.source = source;
  showError("");
  clearHeat();
  $("#explain-info").textContent = "";
  $("#results").setAttribute("aria-busy", "true");
  const names = [...state.backends.map((b) => b.name), null];
  const input = showInput(blob).then(() => true, (e) => { clearInput(); showError(e.message); return false; });
  const results = await Promise.all(names.map((n) => predict(blob, n)));
  const inputOk = await input;
  if (seq !== state.seq) return; // a newer image replaced this one meanwhile
  results.forEach((r, i) => renderColumn(document.querySelector(`.col[data-backend="${names[i] ?? "auto"}"]`), r));
  showAgreement();
  $("#explain").disabled = state.explainers.length === 0 || !inputOk;
  $("#results").setAttribute("aria-busy", "false");
  document.body.dataset.classified = String(seq);
}

// ------------------------------------------------------------------ drawing pad

const pad = $("#pad");
const ink = pad.getContext("2d");
const pen = { x: 140, y: 140, down: false, dirty: false, timer: 0 };

function clearPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = "#fff";
  ink.lineWidth = BRUSH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  pen.dirty = false;
}

function classifyPad(source = "drawing") {
  clearTimeout(pen.timer);
  pad.toBlob((blob) => blob && classify(blob, source), "image/png");
}

const scheduleClassify = () => { clearTimeout(pen.timer); pen.timer = setTimeout(classifyPad, 250); };

function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [((ev.clientX - r.left) * pad.width) / r.width, ((ev.clientY - r.top) * pad.height) / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  pad.setPointerCapture(ev.pointerId);
  clearTimeout(pen.timer);
  const [x, y] = padPoint(ev);
  ink.beginPath();
  ink.moveTo(x, y);
  ink.lineTo(x, y);
  ink.stroke();
  pen.drawing = true;
  pen.dirty = true;
});
pad.addEventListener("pointermove", (ev) => {
  if (!pen.drawing) return;
  const [x, y] = padPoint(ev);
  ink.lineTo(x, y);
  ink.stroke();
});
const endStroke = () => { if (pen.drawing) { pen.drawing = false; scheduleClassify(); } };
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

// Keyboard drawing: arrows move the pen (Shift: faster), Space lifts/lowers it, Enter classifies.
const penMark = $("#pen");
function showPen() {
  penMark.hidden = false;
  penMark.classList.toggle("down", pen.down);
  penMark.style.left = `${(100 * pen.x) / pad.width}%`;
  penMark.style.top = `${(100 * pen.y) / pad.height}%`;
}
pad.addEventListener("focus", showPen);
pad.addEventListener("blur", () => { penMark.hidden = true; });
pad.addEventListener("keydown", (ev) => {
  const step = ev.shiftKey ? 42 : 14;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (moves[ev.key]) {
    const [dx, dy] = moves[ev.key];
    const [x0, y0] = [pen.x, pen.y];
    pen.x = Math.min(pad.width, Math.max(0, pen.x + dx));
    pen.y = Math.min(pad.height, Math.max(0, pen.y + dy));
    if (pen.down) {
      ink.beginPath(); ink.moveTo(x0, y0); ink.lineTo(pen.x, pen.y); ink.stroke();
      pen.dirty = true;
    }
  } else if (ev.key === " ") {
    pen.down = !pen.down;
    if (pen.down) { ink.beginPath(); ink.moveTo(pen.x, pen.y); ink.lineTo(pen.x, pen.y); ink.stroke(); pen.dirty = true; }
  } else if (ev.key === "Enter") classifyPad();
  else if (ev.key === "Delete" || ev.key === "Backspace") clearPad();
  else return;
  ev.preventDefault();
  showPen();
});

// ------------------------------------------------------------------ upload, drop, samples

/** Shows an uploaded image on the pad (fitted, on black), so drawing can go on over it. */
async function previewOnPad(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const [w, h] = [bitmap.width * scale, bitmap.height * scale];
    clearPad();
    ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch { /* not an image the browser decodes: the gateway's answer says why */ }
}

function useFile(file) {
  if (!file) return;
  previewOnPad(file);
  classify(file, `upload ${file.name}`);
}
$("#file").addEventListener("change", (ev) => useFile(ev.target.files[0]));
for (const zone of [$("#drop"), $("#drop-pad")]) {
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    useFile(ev.dataTransfer.files[0]);
  });
}

$("#sample-buttons").replaceChildren(...Object.keys(DIGIT_STROKES).map((d) => {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = d;
  b.dataset.sample = d;
  b.setAttribute("aria-label", `Sample digit ${d}`);
  b.addEventListener("click", () => {
    clearPad();
    drawStrokes(ink, DIGIT_STROKES[d], pad.width);
    classifyPad(`sample ${d}`);
  });
  return b;
}));

$("#classify").addEventListener("click", () => classifyPad());
$("#clear").addEventListener("click", clearPad);
$("#explain").addEventListener("click", explain);
$("#show-heat").addEventListener("change", (ev) => $("#heat").classList.toggle("hidden", !ev.target.checked));
$("#model").addEventListener("change", (ev) => selectModel(ev.target.value).catch((e) => showError(e.message)));
$("#version").addEventListener("change", (ev) => selectVersion(ev.target.value).catch((e) => showError(e.message)));

clearPad();
loadModels()
  .then(() => { document.body.dataset.ready = "true"; })
  .catch((e) => showError(`Cannot load the model list: ${e.message}`));
