// The Corral dashboard: plain JavaScript over the REST API (same origin, the session cookie;
// changes send X-Corral-UI: 1), live through the server-sent event stream.
"use strict";

const state = { me: null, events: null, refresh: null, term: null, socket: null };
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function api(method, path, body) {
  const opts = { method, headers: { "X-Corral-UI": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401) { signedOut(); throw new Error("signed out"); }
  const type = resp.headers.get("content-type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new Error(data.error ? data.error.message : String(data));
  return data;
}

function signedOut() {
  state.me = null;
  $("#nav").hidden = true; $("#logout").hidden = true; $("#login").hidden = false;
  $("#view").innerHTML = ""; $("#who").textContent = "";
  if (state.events) { state.events.close(); state.events = null; }
}

async function start() {
  const resp = await fetch("/ui/me", { credentials: "same-origin" });
  if (resp.status !== 200) return signedOut();
  state.me = await resp.json();
  $("#login").hidden = true; $("#nav").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = `${state.me.account}${state.me.admin ? " (admin)" : ""}`;
  document.querySelectorAll("nav .admin").forEach((a) => { a.hidden = !state.me.admin; });
  follow();
  route();
}

function follow() {
  if (state.events) return;
  state.events = new EventSource("/v1/events");
  const changed = () => { clearTimeout(state.refresh); state.refresh = setTimeout(redraw, 300); };
  for (const kind of ["instance", "operation", "node", "volume"]) {
    state.events.addEventListener(kind, changed);
  }
}

$("#login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const resp = await fetch("/ui/login", {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ access_key_id: form.get("access_key_id"),
                           secret_access_key: form.get("secret_access_key") }),
  });
  ev.target.reset();
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    $("#login-error").textContent = body.error ? body.error.message : "sign-in failed";
    return;
  }
  $("#login-error").textContent = "";
  if (!location.hash) location.hash = "#map";
  start();
});

$("#logout").addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin" });
  signedOut();
});

window.addEventListener("hashchange", route);

function route() {
  if (!state.me) return;
  closeConsole();
  const [name] = location.hash.slice(1).split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.hash === `#${name}`));
  redraw();
}

async function redraw() {
  if (!state.me) return;
  const [name, arg] = location.hash.slice(1).split("/");
  const view = VIEWS[name] || VIEWS.map;
  try { await view(arg); } catch (err) { if (err.message !== "signed out") show(`<p class="error">${esc(err.message)}</p>`); }
}

function show(html) { $("#view").innerHTML = html; }

function table(cols, rows) {
  const head = cols.map(([title]) => `<th>${esc(title)}</th>`).join("");
  const body = rows.map((r) => `<tr>${cols.map(([, f]) => `<td>${f(r)}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

const size = (b) => (b == null ? "-" : b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(1)}G` : `${Math.round(b / (1 << 20))}M`);
const pill = (i) => `<span class="inst state-${esc(i.state)}" data-id="${esc(i.id)}" title="${esc(i.state)}" onclick="location.hash='#instance/${esc(i.id)}'">${esc(i.name)}</span>`;

// -- the cluster map ---------------------------------------------------------------------
async function mapView() {
  const groupBy = localStorage.getItem("corral.groupBy") || "corral:appliance";
  const stats = await api("GET", "/v1/stats");
  const tags = await api("GET", "/v1/tags");
  const tagOf = {};
  for (const t of tags) if (t.key === groupBy) tagOf[t.resource_id] = t.value;
  let nodes = stats.nodes.map((n) => ({ id: n.id, name: n.name, state: n.state }));
  let capacity = {};
  if (state.me.admin) {
    const cap = await api("GET", "/v1/capacity");
    for (const n of cap.nodes) capacity[n.name] = n;
  }
  if (!nodes.length) {
    const names = [...new Set(stats.instances.map((i) => i.node || "(unplaced)"))];
    nodes = names.map((name) => ({ id: name, name, state: "" }));
  }
  const boxes = nodes.map((n) => {
    const here = stats.instances.filter((i) => (i.node || "(unplaced)") === n.name);
    const groups = {};
    for (const i of here) (groups[tagOf[i.id] || "(no service)"] ||= []).push(i);
    const c = capacity[n.name];
    const bar = (label, used, total, fmt) => {
      const pct = total ? Math.min(100, (100 * used) / total) : 0;
      return `<div class="label">${label} ${fmt(used)} / ${fmt(total)}</div>
        <div class="bar${pct > 90 ? " full" : ""}"><div style="width:${pct}%"></div></div>`;
    };
    const bars = c ? bar("memory", c.memory_claimed, c.memory_total, size) +
      bar("cores", c.cores_claimed, c.cores_total, (x) => x.toFixed(1)) : "";
    const services = Object.entries(groups).sort().map(([svc, list]) =>
      `<div class="service"><div class="label">${esc(svc)}</div>${list.map(pill).join("")}</div>`).join("");
    return `<div class="node" data-node="${esc(n.name)}"><h3>${esc(n.name)} <small>${esc(n.state)}</small></h3>${bars}${services}</div>`;
  }).join("");
  show(`<div class="toolbar"><label>Group by tag <input id="group-by" value="${esc(groupBy)}"></label></div>
    <div class="map">${boxes}</div>`);
  $("#group-by").addEventListener("change", (ev) => { localStorage.setItem("corral.groupBy", ev.target.value); redraw(); });
}

// -- instances -------------------------------------------------------------------------------
async function instancesView() {
  const filter = sessionStorage.getItem("corral.filter") || "";
  const rows = (await api("GET", "/v1/instances?all=false")).filter(
    (i) => !filter || [i.name, i.state, i.node, i.private_ip].join(" ").includes(filter));
  show(`<div class="toolbar">
      <label>Filter <input id="filter" value="${esc(filter)}"></label>
      <form id="run" class="toolbar"><input name="image" placeholder="image (tiny)" required>
        <input name="name" placeholder="name"><input name="instance_type" placeholder="type (cr1.micro)">
        <button>Run</button></form><span id="run-error" class="error"></span></div>` +
    table([
      ["Name", (i) => `<a href="#instance/${esc(i.id)}">${esc(i.name)}</a>`],
      ["State", (i) => `<span class="inst state-${esc(i.state)}">${esc(i.state)}</span>`],
      ["Node", (i) => esc(i.node)], ["Address", (i) => esc(i.private_ip)],
      ["CPUs", (i) => esc(i.cpus)], ["Memory", (i) => size(i.memory)],
      ["", (i) => actions(i)],
    ], rows));
  $("#filter").addEventListener("change", (ev) => { sessionStorage.setItem("corral.filter", ev.target.value); redraw(); });
  $("#run").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const body = { image: f.get("image") };
    if (f.get("name")) body.name = f.get("name");
    if (f.get("instance_type")) body.instance_type = f.get("instance_type");
    try { await api("POST", "/v1/instances", body); redraw(); } catch (err) { $("#run-error").textContent = err.message; }
  });
  wireActions();
}

function actions(i) {
  const b = (verb, label) => `<button data-act="${verb}" data-id="${esc(i.id)}">${label}</button>`;
  return `<span class="actions">${i.state === "running" ? b("stop", "Stop") + b("reboot", "Reboot") : ""}${i.state === "stopped" ? b("start", "Start") : ""}${b("terminate", "Terminate")}</span>`;
}

function wireActions() {
  document.querySelectorAll("button[data-act]").forEach((btn) => btn.addEventListener("click", async () => {
    const { act, id } = btn.dataset;
    if (act === "terminate" && !confirm(`Terminate ${id}?`)) return;
    btn.disabled = true;
    try {
      if (act === "terminate") await api("DELETE", `/v1/instances/${id}`);
      else await api("POST", `/v1/instances/${id}/${act}`, {});
    } catch (err) { alert(err.message); }
    redraw();
  }));
}

async function instanceView(id) {
  const i = await api("GET", `/v1/instances/${id}`);
  const log = await api("GET", `/v1/instances/${id}/console-output?tail=20000`).catch(() => "");
  const keep = state.term && state.termFor === id;
  const stateBox = `<p>State: <span id="inst-state" class="inst state-${esc(i.state)}">${esc(i.state)}</span>
    on ${esc(i.node)} · ${esc(i.private_ip)} · ${esc(i.cpus)} vCPU · ${size(i.memory)} ${actions(i)}</p>`;
  if (keep) {  // a redraw must not cut the console
    $("#inst-head").innerHTML = stateBox;
    $("#log").textContent = log;
    wireActions();
    return;
  }
  show(`<h2>${esc(i.name)} <small>${esc(i.id)}</small></h2><div id="inst-head">${stateBox}</div>
    <h3>Console</h3><div id="terminal"></div><h3>Log</h3><pre class="log" id="log"></pre>`);
  $("#log").textContent = log;
  wireActions();
  if (i.state === "running") openConsole(id);
}

function openConsole(id) {
  closeConsole();
  const term = new Terminal({ convertEol: false, cursorBlink: true, rows: 20 });
  term.open($("#terminal"));
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${proto}://${location.host}/v1/instances/${id}/console`);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (ev) => term.write(new Uint8Array(ev.data));
  socket.onclose = () => term.write("\r\n[console closed]\r\n");
  const enc = new TextEncoder();
  term.onData((d) => { if (socket.readyState === 1) socket.send(enc.encode(d)); });
  socket.onopen = () => socket.send(enc.encode("\r"));
  Object.assign(state, { term, socket, termFor: id });
  window.corralTerm = term;  // for tests: the buffer's text
}

function closeConsole() {
  if (state.socket) state.socket.close();
  if (state.term) state.term.dispose();
  Object.assign(state, { term: null, socket: null, termFor: null });
}

// -- the other resources -----------------------------------------------------------------
const list = (path, cols) => async () => show(table(cols, await api("GET", path)));
const tagsCol = ["Tags", (r) => esc(Object.entries(r.tags || {}).map(([k, v]) => `${k}=${v}`).join(", "))];
const VIEWS = {
  map: mapView,
  instances: instancesView,
  instance: instanceView,
  images: list("/v1/images", [["Name", (r) => esc(r.name)], ["Version", (r) => esc(r.version)], ["ID", (r) => esc(r.id)], ["Size", (r) => size(r.size)]]),
  volumes: list("/v1/volumes", [["Name", (r) => esc(r.name || r.id)], ["Size", (r) => esc(r.size) + "G"], ["State", (r) => esc(r.state)], ["Instance", (r) => esc(r.attachment ? r.attachment.instance_name || r.attachment.instance_id : "-")]]),
  snapshots: list("/v1/snapshots", [["ID", (r) => esc(r.id)], ["Volume", (r) => esc(r.volume_id)], ["State", (r) => esc(r.state)], ["Description", (r) => esc(r.description)]]),
  "security-groups": list("/v1/security-groups", [["Name", (r) => esc(r.name)], ["ID", (r) => esc(r.id)], ["Rules", (r) => r.rules.map((x) => esc(`${x.direction} ${x.protocol === "-1" ? "all" : x.protocol} ${x.from_port ?? ""}${x.to_port !== x.from_port && x.to_port != null ? "-" + x.to_port : ""} ${x.cidr || x.source_group}`)).join("<br>")], tagsCol]),
  addresses: list("/v1/addresses", [["Address", (r) => esc(r.public_ip)], ["ID", (r) => esc(r.id)], ["Instance", (r) => esc(r.instance_name || r.instance_id || "-")], tagsCol]),
  keys: list("/v1/keys", [["Name", (r) => esc(r.name)], ["Type", (r) => esc(r.key_type)], ["Fingerprint", (r) => esc(r.fingerprint)]]),
  accounts: list("/v1/accounts", [["Name", (r) => esc(r.name)], ["ID", (r) => esc(r.id)], ["Admin", (r) => (r.admin ? "yes" : "")]]),
  nodes: list("/v1/nodes", [["Name", (r) => esc(r.name)], ["State", (r) => esc(r.state)], ["CPUs", (r) => esc(r.cpus)], ["Memory", (r) => size(r.memory)], ["Instances", (r) => esc(r.instances)], ["Zone", (r) => esc(r.zone)], ["Accel", (r) => esc(r.accel)]]),
};

start();
