// orchard-grader live line board. Reads /v1/line/stream (server-sent events) with the key from
// this tab's sessionStorage (sent as a header, never in a URL), and redraws on every snapshot.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("grader.key"), thumbs: new Map(), abort: null };

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("board").hidden = !signedIn;
  $("signout").hidden = !signedIn;
}

function signOut(message) {
  sessionStorage.removeItem("grader.key");
  state.key = null;
  if (state.abort) state.abort.abort();
  show(false);
  $("live").hidden = true;
  $("signin-error").textContent = message || "";
}

async function signIn(ev) {
  ev.preventDefault();
  const key = $("key").value.trim();
  const r = await fetch("/v1/line/stats", { headers: { "X-API-Key": key }, cache: "no-store" });
  if (!r.ok) {
    $("signin-error").textContent = r.status === 403 ? "This key may not watch the line (use an inspector or trainer key)." : "Key not accepted.";
    return;
  }
  state.key = key;
  sessionStorage.setItem("grader.key", key);
  $("key").value = "";
  start(await r.json());
}

function start(first) {
  show(true);
  if (first) render(first);
  listen();
}

// server-sent events over fetch, so the key travels in a header
async function listen() {
  while (state.key) {
    state.abort = new AbortController();
    try {
      const r = await fetch("/v1/line/stream", { headers: { "X-API-Key": state.key }, signal: state.abort.signal, cache: "no-store" });
      if (r.status === 401 || r.status === 403) { signOut("Your key was not accepted; sign in again."); return; }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      $("live").hidden = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) render(JSON.parse(data));
        }
      }
    } catch (e) {
      if (!state.key) return;
    }
    $("live").hidden = true;
    await new Promise((res) => setTimeout(res, 2000)); // reconnect
  }
}

function bars(el, rows) {
  const top = Math.max(1, ...rows.map((r) => r.value));
  el.replaceChildren(...rows.map((r) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.name = r.name;
    const name = Object.assign(document.createElement("span"), { textContent: r.name });
    const track = Object.assign(document.createElement("span"), { className: "track" });
    const fill = Object.assign(document.createElement("span"), { className: "fill" });
    fill.style.display = "block";
    fill.style.width = `${(100 * r.value) / top}%`;
    track.append(fill);
    row.append(name, track, Object.assign(document.createElement("span"), { className: "val", textContent: r.label }));
    return row;
  }));
  if (!rows.length) el.textContent = "no fruit yet";
}

const pct = (v) => (v == null ? "–" : `${(v * 100).toFixed(0)} %`);

function render(s) {
  $("updated").textContent = `updated ${new Date(s.at).toLocaleTimeString()}`;
  $("recent-min").textContent = String(s.recent_min);
  $("window-min").textContent = String(s.window_min);
  $("tp-all").textContent = s.throughput_per_min.all.toFixed(1);
  $("n-window").textContent = String(s.fruit.window);
  $("flag-now").textContent = pct(s.flag_rate.recent);
  $("flag-before").textContent = s.flag_rate.before == null ? "" : `normal: ${pct(s.flag_rate.before)}`;
  renderSorter(s.sorter);
  bars($("lanes"), s.throughput_per_min.lanes.map((l) => ({ name: `lane ${l.lane}`, value: l.fruit_per_min, label: l.fruit_per_min.toFixed(1) })));
  bars($("grades"), s.grade_mix.map((g) => ({ name: g.grade, value: g.count, label: String(g.count) })));
  const alerts = s.alerts.length ? s.alerts : [{ severity: "ok", message: "all rates within their normal bands" }];
  $("alerts").replaceChildren(...alerts.map((a) => Object.assign(document.createElement("li"), { className: a.severity, textContent: a.message })));
  const head = document.createElement("tr");
  head.append(...["camera", "last result", "quiet"].map((t) => Object.assign(document.createElement("th"), { textContent: t })));
  $("cameras").replaceChildren(head, ...s.cameras.map((c) => {
    const tr = document.createElement("tr");
    if (c.silent) tr.className = "silent";
    tr.append(...[c.camera_id || "(none)", new Date(c.last_result_at).toLocaleTimeString(), `${Math.round(c.quiet_s)} s`]
      .map((t) => Object.assign(document.createElement("td"), { textContent: t })));
    return tr;
  }));
  renderThumbs(s.last_flagged);
}

// the MQTT link to the sorter, when the service has one (GRADER_MQTT_URL)
function renderSorter(m) {
  $("sorter-tile").hidden = !m;
  if (!m) return;
  $("sorter-backlog").textContent = String(m.backlog);
  const link = m.connected ? "broker connected" : "broker NOT connected";
  const oldest = m.backlog ? `, oldest ${Math.round(m.backlog_oldest_s)} s` : "";
  $("sorter-detail").textContent = `${link}${oldest}; last ${s_recent()} min: ${m.published_recent} sent, ${m.ejected_recent} ejected, ` +
    `${m.mis_ejected_recent} mis-ejected`;
  $("sorter-tile").classList.toggle("warn", m.degraded);
}

const s_recent = () => $("recent-min").textContent;

async function thumb(url) {
  if (!state.thumbs.has(url)) {
    const p = fetch(url, { headers: { "X-API-Key": state.key } }).then((r) => (r.ok ? r.blob() : Promise.reject(r.status)))
      .then((b) => URL.createObjectURL(b));
    state.thumbs.set(url, p);
    p.catch(() => state.thumbs.delete(url));
  }
  return state.thumbs.get(url);
}

function renderThumbs(items) {
  const box = $("flagged");
  if (!items.length) { box.textContent = "none in this window"; return; }
  box.replaceChildren(...items.map((f) => {
    const fig = document.createElement("figure");
    fig.dataset.fruit = String(f.fruit);
    const img = document.createElement("img");
    img.alt = `flagged fruit ${f.fruit_id || f.fruit}`;
    thumb(f.thumbnail_url).then((src) => { img.src = src; }).catch(() => {});
    const cap = document.createElement("figcaption");
    cap.textContent = `${f.grade || "no grade"} · lane ${f.lane || "–"} · ${new Date(f.at).toLocaleTimeString()}`;
    fig.append(img, cap);
    return fig;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut(""));
  if (state.key) start(null); else show(false);
});
