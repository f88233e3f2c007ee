// orchard-grader review page. Talks to the service's /v1 API with the inspector's key, which lives
// in this tab's sessionStorage only (never in a URL). Everything is built with textContent: data
// from the line is never parsed as HTML.
"use strict";

const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem("grader.key"),
  name: sessionStorage.getItem("grader.name") || "",
  items: [],          // the queue as last fetched (filtered)
  current: null,      // the fruit on screen
  skipped: new Set(), // fruit skipped this session: shown after the rest
  lastVerdict: null,  // {id, fruit} of this inspector's latest verdict, for undo
  pictures: new Map(),// picture URL -> object URL (prefetched)
  lotReports: new Map(),
  view: "queue",
  busy: false,
};

// ---------------------------------------------------------------- API
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, opts = {}) {
  const headers = { "X-API-Key": state.key, ...(opts.body ? { "Content-Type": "application/json" } : {}) };
  const res = await fetch(path, { ...opts, headers, cache: "no-store" });
  if (res.status === 401) { signOut("Your key was not accepted; sign in again."); throw new ApiError(401); }
  if (!res.ok) {
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, body);
  }
  return res;
}
const getJSON = async (path) => (await api(path)).json();
const postJSON = async (path, body) => (await api(path, { method: "POST", body: JSON.stringify(body || {}) })).json();
const withName = (path) => state.name ? `${path}${path.includes("?") ? "&" : "?"}inspector=${encodeURIComponent(state.name)}` : path;

// ---------------------------------------------------------------- sign-in
function signOut(message) {
  sessionStorage.removeItem("grader.key");
  state.key = null;
  state.current = null;
  for (const url of state.pictures.values()) URL.revokeObjectURL(url);
  state.pictures.clear();
  show("signin");
  $("signin-error").textContent = message || "";
}

async function signIn(ev) {
  ev.preventDefault();
  state.key = $("key").value.trim();
  state.name = $("name").value.trim();
  try {
    await getJSON("/v1/review/queue?limit=1");
  } catch (e) {
    state.key = null;
    $("signin-error").textContent = e.status === 403 ? "This key is not an inspector's key." : `Sign-in failed: ${e.message}`;
    return;
  }
  sessionStorage.setItem("grader.key", state.key);
  sessionStorage.setItem("grader.name", state.name);
  $("key").value = "";
  if (document.activeElement instanceof HTMLElement) document.activeElement.blur(); // the keys now drive the queue
  start();
}

function show(which) {
  const signedIn = which !== "signin";
  $("signin").hidden = signedIn;
  $("tabs").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("keys").hidden = which !== "queue";
  $("work").hidden = which !== "queue";
  $("history").hidden = which !== "history";
  $("who").textContent = signedIn ? (state.name || "inspector") : "";
  for (const [id, v] of [["tab-queue", "queue"], ["tab-history", "history"]]) {
    $(id).classList.toggle("active", which === v);
    $(id).setAttribute("aria-pressed", String(which === v));
  }
  state.view = which;
}

let pollTimer = null;
async function start() {
  show("queue");
  await loadLots();
  await refreshQueue();
  if (pollTimer === null) pollTimer = setInterval(() => { if (state.key && !document.hidden) refreshQueue().catch(() => {}); }, POLL_MS);
}

// ---------------------------------------------------------------- the queue
function filters() {
  const p = new URLSearchParams({ limit: "200" });
  for (const [name, id] of [["lot_id", "f-lot"], ["flag", "f-flag"], ["camera_id", "f-camera"]]) {
    if ($(id).value) p.set(name, $(id).value);
  }
  return p.toString();
}

async function loadLots() {
  try {
    const lots = await getJSON("/v1/lots?limit=200");
    setOptions($("f-lot"), (lots.items || lots.lots || []).map((l) => [l.id, `${l.id}${l.status === "closed" ? " (closed)" : ""}`]), "all lots");
  } catch (_) { /* the filter stays "all lots" */ }
}

function setOptions(select, pairs, allLabel) {
  const keep = select.value;
  select.replaceChildren(new Option(allLabel, ""), ...pairs.map(([v, t]) => new Option(t, v)));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

async function refreshQueue() {
  const q = await getJSON(`/v1/review/queue?${filters()}`);
  state.items = q.items;
  $("count-total").textContent = String(q.total);
  const counts = $("flag-counts");
  counts.replaceChildren(...Object.entries(q.by_flag).sort((a, b) => b[1] - a[1]).map(([code, n]) => {
    const li = document.createElement("li");
    li.textContent = `${code.replaceAll("_", " ")} ${n}`;
    return li;
  }));
  const flagSel = $("f-flag");
  const known = new Set([...flagSel.options].map((o) => o.value));
  if (Object.keys(q.by_flag).some((c) => !known.has(c)) || flagSel.options.length === 1) {
    setOptions(flagSel, Object.keys(q.by_flag).sort().map((c) => [c, c.replaceAll("_", " ")]), "all flags");
  }
  const cams = [...new Set(q.items.map((i) => i.camera_id).filter(Boolean))].sort();
  const camSel = $("f-camera");
  if (cams.some((c) => ![...camSel.options].some((o) => o.value === c))) setOptions(camSel, cams.map((c) => [c, c]), "all cameras");
  renderQueue();
  if (!state.current || !state.items.some((i) => i.fruit === state.current.fruit)) {
    if (!state.busy) await showNext();
  } else {
    prefetch(nextAfter(state.current));
  }
}

function ordered() {
  const free = state.items.filter((i) => !i.claimed_by || (state.name && i.claimed_by === state.name) || (state.current && i.fruit === state.current.fruit));
  return [...free.filter((i) => !state.skipped.has(i.fruit)), ...free.filter((i) => state.skipped.has(i.fruit))];
}

function nextAfter(item) {
  const list = ordered().filter((i) => !item || i.fruit !== item.fruit);
  return list[0] || null;
}

function renderQueue() {
  const list = $("queue-list");
  list.replaceChildren(...state.items.map((i) => {
    const li = document.createElement("li");
    li.dataset.fruit = String(i.fruit);
    li.classList.toggle("current", !!state.current && state.current.fruit === i.fruit);
    li.classList.toggle("taken", !!i.claimed_by && !(state.current && state.current.fruit === i.fruit));
    const g = document.createElement("div");
    g.className = "q-grade";
    g.textContent = `${i.grade || "no grade"} · ${i.diameter_mm == null ? "size ?" : i.diameter_mm.toFixed(1) + " mm"}`;
    const f = document.createElement("div");
    f.textContent = i.flags.map((x) => x.code.replaceAll("_", " ")).join(", ");
    const m = document.createElement("div");
    m.className = "q-meta";
    m.textContent = [i.lot_id && `lot ${i.lot_id}`, i.camera_id && `cam ${i.camera_id}`, i.claimed_by && `with ${i.claimed_by}`].filter(Boolean).join(" · ");
    li.append(g, f, m);
    li.addEventListener("click", () => open(i));
    return li;
  }));
  $("queue-empty").hidden = state.items.length > 0;
  $("fruit").hidden = !state.current;
}

async function showNext() {
  const next = nextAfter(null);
  if (!next) { state.current = null; renderQueue(); return; }
  await open(next);
}

// ---------------------------------------------------------------- one fruit
async function open(item) {
  state.busy = true;
  try {
    try {
      await postJSON(withName(`/v1/review/fruits/${item.fruit}/claim`));
    } catch (e) {
      // another inspector holds it: quietly take the next free fruit (the list shows who has it)
      if (e.status === 409) { item.claimed_by = e.message.split(" by ").pop(); renderQueue(); state.busy = false; return showNext(); }
      if (e.status === 404) { await refreshQueue(); return; }
      throw e;
    }
    state.current = item;
    renderFruit(item);
    renderQueue();
    await showPicture();
    prefetch(nextAfter(item));
  } finally {
    state.busy = false;
  }
}

function layers() {
  return [...document.querySelectorAll("#layers input[data-layer]")].filter((c) => c.checked).map((c) => c.dataset.layer).join(",");
}
const pictureUrl = (item, lay) => `${item.overlay_url}${item.overlay_url.includes("?") ? "&" : "?"}layers=${encodeURIComponent(lay)}`;

async function picture(item, lay) {
  const url = pictureUrl(item, lay);
  if (!state.pictures.has(url)) {
    const p = api(url).then((r) => r.blob()).then((b) => URL.createObjectURL(b));
    state.pictures.set(url, p);
    p.catch(() => state.pictures.delete(url));
  }
  return state.pictures.get(url);
}

async function showPicture() {
  const item = state.current;
  if (!item) return;
  const img = $("picture");
  try {
    const src = await picture(item, layers());
    if (state.current !== item) return;
    const lay = layers();
    img.src = src;
    await img.decode().catch(() => {});
    if (state.current === item) { img.dataset.fruit = String(item.fruit); img.dataset.layers = lay; }
  } catch (e) {
    setStatus(`picture unavailable: ${e.message}`, true);
  }
}

function prefetch(item) {
  if (item) picture(item, layers()).catch(() => {});
}

const fmt = (v, nd, unit) => v == null ? "–" : `${Number(v).toFixed(nd)}${unit ? " " + unit : ""}`;

function renderFruit(item) {
  const m = item.measurement || {};
  $("model-grade").textContent = item.grade || "no grade";
  $("provisional").hidden = !m.provisional;
  $("fruit-where").textContent = [`fruit ${item.fruit_index + 1} of result ${item.result_id}`, item.lot_id && `lot ${item.lot_id}`,
    item.camera_id && `camera ${item.camera_id}`, new Date(item.created_at).toLocaleString()].filter(Boolean).join(" · ");
  $("flags").replaceChildren(...item.flags.map((f) => {
    const li = document.createElement("li");
    const c = document.createElement("span");
    c.className = "code";
    c.textContent = f.code.replaceAll("_", " ");
    li.append(c, document.createTextNode(`: ${f.reason}`));
    return li;
  }));
  const reasons = item.reasons.length ? item.reasons : ["meets every rule of its grade"];
  $("reasons").replaceChildren(...reasons.map((r) => Object.assign(document.createElement("li"), { textContent: r })));
  const d = item.defect;
  // a model that tells defect types apart: its most probable types, P(type | defective)
  const typeText = (ev) => ev && ev.type_probabilities
    ? `; type ${Object.entries(ev.type_probabilities).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([t, p]) => `${t} ${Number(p).toFixed(2)}`).join(", ")}`
    : "";
  const brixSrc = m.brix_source ? `${m.brix_source}${m.brix_n ? `, n=${m.brix_n}` : ""}${m.brix_spread != null ? `, sd ${m.brix_spread}` : ""}` : "";
  const rows = [
    ["Diameter (caliper)", fmt(m.diameter_mm, 1, "mm")],
    ["Minor diameter", fmt(m.minor_diameter_mm, 1, "mm")],
    ["Projected area", m.area_mm2 == null ? "–" : fmt(m.area_mm2 / 100, 1, "cm²")],
    ["Roundness", fmt(m.roundness, 2)],
    ["Colour coverage", m.colour_coverage == null ? "–" : `${(m.colour_coverage * 100).toFixed(0)} %`],
    ["Blemish area", fmt(m.blemish_area_cm2, 2, "cm²")],
    ["Largest blemish", fmt(m.largest_blemish_cm2, 2, "cm²")],
    ["Defect (model)", d ? `${d.label}, p(defective) ${Number(d.score).toFixed(2)}${typeText(d)}` : "–"],
    ["Brix", m.brix == null ? "–" : `${Number(m.brix).toFixed(1)} °Brix (${brixSrc})`],
    ["Scale", m.mm_per_px == null ? "uncalibrated" : fmt(m.mm_per_px, 4, "mm/px")],
    ["Outlet", m.outlet || "–"],
  ];
  const half = Math.ceil(rows.length / 2); // two columns of name/value pairs: everything visible at 1366×768
  $("measurements").replaceChildren(...rows.slice(0, half).map((left, k) => {
    const tr = document.createElement("tr");
    for (const pair of [left, rows[half + k]]) {
      if (!pair) continue;
      tr.append(Object.assign(document.createElement("th"), { textContent: pair[0] }), Object.assign(document.createElement("td"), { textContent: pair[1] }));
    }
    return tr;
  }));
  // the verdict controls for this fruit's standard and commodity
  $("grade-buttons").replaceChildren(...item.grades.map((g, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.grade = g;
    b.append(document.createTextNode(g + " "), Object.assign(document.createElement("kbd"), { textContent: String(k + 1) }));
    b.addEventListener("click", () => submit("correct", g));
    return b;
  }));
  const labelSel = $("defect-label");
  labelSel.replaceChildren(new Option("(none)", ""), ...item.defect_labels.map((l) => new Option(l, l)));
  $("note").value = "";
  renderLotContext(item);
}

// ---------------------------------------------------------------- lot context
async function renderLotContext(item) {
  const box = $("lot-context");
  if (!item.lot_id) { box.textContent = "not part of a lot"; return; }
  let rep = state.lotReports.get(item.lot_id);
  if (!rep || Date.now() - rep.at > 15000) {
    try {
      rep = { at: Date.now(), data: await getJSON(`/v1/lots/${encodeURIComponent(item.lot_id)}/report`) };
      state.lotReports.set(item.lot_id, rep);
    } catch (e) { box.textContent = `lot report unavailable: ${e.message}`; return; }
  }
  if (state.current !== item) return;
  const r = rep.data;
  box.replaceChildren(
    histogram(`Lot size (mm), n=${r.size_mm.n}`, r.size_mm.histogram, item.measurement.diameter_mm),
    histogram(`Lot Brix (°Brix), n=${r.brix.fruit_readings.n + r.brix.lot_samples.n}`, r.brix.histogram, item.measurement.brix),
  );
}

function histogram(title, bins, mark) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 250, H = 90, pad = 16;
  const fig = document.createElement("figure");
  fig.append(Object.assign(document.createElement("figcaption"), { textContent: title }));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H + pad);
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", title);
  const el = (name, attrs, text) => { const e = document.createElementNS(NS, name); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text != null) e.textContent = text; svg.append(e); return e; };
  if (!bins.length) { el("text", { x: 4, y: 20 }, "no data yet"); fig.append(svg); return fig; }
  const lo = bins[0].from, hi = bins[bins.length - 1].to, top = Math.max(...bins.map((b) => b.count), 1);
  const x = (v) => ((v - lo) / (hi - lo || 1)) * (W - 2) + 1;
  for (const b of bins) {
    const h = (b.count / top) * (H - 14);
    el("rect", { x: x(b.from) + 0.5, y: H - h, width: Math.max(1, x(b.to) - x(b.from) - 1), height: h, fill: "#7fa891" });
  }
  el("text", { x: 1, y: H + 12 }, String(lo));
  el("text", { x: W - 1, y: H + 12, "text-anchor": "end" }, String(hi));
  if (mark != null) {
    const mx = Math.min(W - 1, Math.max(1, x(mark)));
    el("line", { x1: mx, x2: mx, y1: 10, y2: H, stroke: "#c0392b", "stroke-width": 2.5 });
    el("text", { x: Math.min(W - 40, mx + 3), y: 10, fill: "#c0392b" }, `this ${Number(mark).toFixed(1)}`);
  }
  fig.append(svg);
  return fig;
}

// ---------------------------------------------------------------- verdicts
function setStatus(text, bad) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("bad", !!bad);
}

async function submit(decision, grade) {
  const item = state.current;
  if (!item || state.busy) return;
  state.busy = true;
  const body = { decision, inspector: state.name || null, defect_label: $("defect-label").value || null, note: $("note").value.trim() || null };
  if (decision === "correct") body.grade = grade;
  try {
    const v = await postJSON(`/v1/review/fruits/${item.fruit}/verdict`, body);
    state.lastVerdict = { id: v.id, fruit: item.fruit };
    $("undo").disabled = false;
    setStatus(decision === "confirm" ? `Confirmed ${v.grade} for fruit ${item.fruit}.` : `Corrected fruit ${item.fruit}: ${v.model_grade} → ${v.grade}.`);
    state.items = state.items.filter((i) => i.fruit !== item.fruit);
    $("count-total").textContent = String(Math.max(0, Number($("count-total").textContent) - 1)); // the list and its count move together
    state.current = null;
    state.busy = false;
    await showNext();              // the prefetched picture shows at once
    refreshQueue().catch(() => {}); // then the counts catch up
  } catch (e) {
    setStatus(`Verdict not saved: ${e.message}`, true);
    if (e.status === 409) refreshQueue().catch(() => {});
  } finally {
    state.busy = false;
  }
}

async function undo() {
  const last = state.lastVerdict;
  if (!last || state.busy) return;
  try {
    await postJSON(`/v1/review/verdicts/${last.id}/undo`);
  } catch (e) { setStatus(`Undo failed: ${e.message}`, true); return; }
  state.lastVerdict = null;
  $("undo").disabled = true;
  setStatus(`Verdict on fruit ${last.fruit} undone; it is back in the queue.`);
  const q = await getJSON(`/v1/review/queue?${filters()}`);
  state.items = q.items;
  const again = q.items.find((i) => i.fruit === last.fruit);
  if (again) await open(again);
  await refreshQueue();
}

function skip() {
  if (!state.current) return;
  state.skipped.add(state.current.fruit);
  const next = nextAfter(state.current);
  if (next) open(next);
}

// ---------------------------------------------------------------- history
async function loadHistory() {
  const s = await getJSON("/v1/review/summary");
  $("agreement").textContent = s.verdicts ? `${s.verdicts} standing verdicts; the inspectors kept the model's grade in ${(s.agreement * 100).toFixed(0)} %.` : "No verdicts yet.";
  table($("by-inspector"), ["Inspector", "Verdicts", "Confirmed", "Corrected"], s.by_inspector.map((r) => [r.inspector, r.verdicts, r.confirmed, r.corrected]));
  table($("by-flag"), ["Flag", "Verdicts", "Agreement"], s.by_flag.map((r) => [r.flag.replaceAll("_", " "), r.verdicts, `${(r.agreement * 100).toFixed(0)} %`]));
  table($("corrections"), ["When", "Inspector", "Fruit", "Model said", "Inspector said", "Defect", "Note"],
    s.corrections.map((v) => [new Date(v.created_at).toLocaleString(), v.inspector, `${v.result_id} #${v.fruit}`, v.model_grade, v.grade, v.defect_label || "", v.note || ""]));
}

function table(el, head, rows) {
  const tr = (cells, tag) => { const r = document.createElement("tr"); r.append(...cells.map((c) => Object.assign(document.createElement(tag), { textContent: String(c) }))); return r; };
  el.replaceChildren(tr(head, "th"), ...rows.map((r) => tr(r, "td")));
}

async function toggleView() {
  if (state.view === "queue") { show("history"); await loadHistory(); } else { show("queue"); }
}

// ---------------------------------------------------------------- keyboard and wiring
const LAYER_KEYS = { c: "contour", d: "diameter", b: "blemish", h: "heatmap", m: "cnn", t: "labels" };

function onKey(ev) {
  if (!state.key || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  const typing = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
  if (typing) {
    if (ev.key === "Escape") t.blur();
    if (ev.key === "Enter" && t.id === "note") { ev.preventDefault(); t.blur(); submit("confirm"); }
    return;
  }
  if (ev.key.toLowerCase() === "g") { ev.preventDefault(); toggleView(); return; }
  if (state.view !== "queue") return;
  const k = ev.key.toLowerCase();
  if (t instanceof HTMLButtonElement && (k === "enter" || k === " ")) return; // a focused button's own click
  if (k === "enter" || k === "y") { ev.preventDefault(); submit("confirm"); }
  else if (/^[1-9]$/.test(k)) {
    const g = state.current && state.current.grades[Number(k) - 1];
    if (g) { ev.preventDefault(); submit("correct", g); }
  } else if (k === "u") { ev.preventDefault(); undo(); }
  else if (k === "s") { ev.preventDefault(); skip(); }
  else if (k === "l") { ev.preventDefault(); $("defect-label").focus(); }
  else if (k === "n") { ev.preventDefault(); $("note").focus(); }
  else if (LAYER_KEYS[k]) {
    ev.preventDefault();
    const box = document.querySelector(`#layers input[data-layer="${LAYER_KEYS[k]}"]`);
    box.checked = !box.checked;
    showPicture();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut(""));
  $("confirm").addEventListener("click", () => submit("confirm"));
  $("undo").addEventListener("click", undo);
  $("skip").addEventListener("click", skip);
  $("tab-queue").addEventListener("click", () => show("queue"));
  $("tab-history").addEventListener("click", () => { show("history"); loadHistory(); });
  for (const id of ["f-lot", "f-flag", "f-camera"]) $(id).addEventListener("change", () => { state.current = null; refreshQueue(); });
  for (const box of document.querySelectorAll("#layers input")) box.addEventListener("change", showPicture);
  document.addEventListener("keydown", onKey);
  $("name").value = state.name;
  if (state.key) start().catch(() => signOut("Sign in again.")); else show("signin");
});
