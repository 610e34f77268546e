// Faultline live dashboard. One Socket.IO connection (websocket only: the nodes behind nginx share no
// sessions), a snapshot on every (re)connect, then the coalesced feed (core/feed.py):
//   error:new   {room, t, groups: [{fingerprint, project_id, service, level, message, first_seen, count}]}
//   error:count {room, t, counts: [{fingerprint, total, delta}]}     (absolute totals: max() merges)
//   error:spike {room, t, spikes: [{fingerprint, total, rate, baseline}]}
//   error:state {room, t, groups: [{fingerprint, state, regressed}]}  (core/triage.py: resolve, reopen)
// Filters (state, level, service, text) apply to the rows at once and to the GET /errors reload.
// Rows are created once per group and their cells updated in place (no innerHTML re-render: no flicker).
"use strict";
(function () {
  const WINDOW_S = 300;      // chart: the last 5 minutes, one bar per second
  const RATE_WINDOW_S = 10;  // a group's rate: its events over the last 10 s
  const MAX_ROWS = 200;      // a wall screen shows ~30; more only costs DOM
  const FRESH_MS = 15000, SPIKE_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const groups = new Map();  // fingerprint -> group state (+ its <tr>)
  const perSecond = new Map(); // server second -> events in it
  let clockOffset = 0;  // server time - local time (s), so "12 s ago" is right on a skewed wall PC
  let socket = null;
  const state = { connected: false, node: null, rooms: [], projects: [], snapshots: 0, messages: 0 };
  window.faultline = { groups, state };  // read by the end-to-end test and handy in the console

  // ---- token: realtime/static/token.js (sessionStorage, this tab only)
  const { forget: forgetToken, take: takeToken } = window.faultlineToken;
  const askToken = (message) => window.faultlineToken.ask(message, () => { if (socket) socket.close(); connect(); });

  // ---- state updates
  const now = () => Date.now() / 1000 + clockOffset;

  function upsert(g) {
    let s = groups.get(g.fingerprint);
    if (!s) {
      s = { fp: g.fingerprint, count: 0, first: null, last: null, history: [], freshUntil: 0, spikeUntil: 0,
            message: "", service: "", level: "error", state: "unresolved", regressed: false, row: null,
            dirty: true };
      groups.set(g.fingerprint, s);
    }
    if (g.message) s.message = g.message;
    if (g.service) s.service = g.service;
    if (g.level) s.level = g.level;
    if (g.state) { s.state = g.state; s.regressed = !!g.regressed; }
    const first = toSeconds(g.first_seen), last = toSeconds(g.last_seen);
    if (first && (!s.first || first < s.first)) s.first = first;
    if (last && (!s.last || last > s.last)) s.last = last;
    if (typeof g.count === "number" && g.count > s.count) s.count = g.count;
    s.dirty = true;
    return s;
  }

  function toSeconds(v) {
    if (v == null) return null;
    if (typeof v === "number") return v;
    const ms = Date.parse(v);
    return Number.isNaN(ms) ? null : ms / 1000;
  }

  function seen(t) {
    if (typeof t === "number") clockOffset = t - Date.now() / 1000;
    state.messages += 1;
  }

  function onNew(msg) {
    if (!msg || !Array.isArray(msg.groups)) return;
    seen(msg.t);
    for (const g of msg.groups) {
      const isNew = !groups.has(g.fingerprint);
      const s = upsert(g);
      if (isNew) s.freshUntil = Date.now() + FRESH_MS;
    }
    schedule();
  }

  function onCount(msg) {
    if (!msg || !Array.isArray(msg.counts)) return;
    seen(msg.t);
    const second = Math.floor(msg.t);
    for (const c of msg.counts) {
      const s = upsert({ fingerprint: c.fingerprint, count: c.total, last_seen: msg.t });
      // The chart and rates use the tick's delta (what happened in it); counts use absolute totals.
      s.history.push([msg.t, c.delta]);
      perSecond.set(second, (perSecond.get(second) || 0) + c.delta);
      s.bump = true;
    }
    schedule();
  }

  function onSpike(msg) {
    if (!msg || !Array.isArray(msg.spikes)) return;
    for (const sp of msg.spikes) {
      const s = groups.get(sp.fingerprint);
      if (s) { s.spikeUntil = Date.now() + SPIKE_MS; s.dirty = true; }
    }
    schedule();
  }

  function onState(msg) {
    if (!msg || !Array.isArray(msg.groups)) return;
    seen(msg.t);
    for (const g of msg.groups) {
      const s = groups.get(g.fingerprint);
      if (s) { s.state = g.state; s.regressed = !!g.regressed; s.dirty = true; }
    }
    schedule();
  }

  // ---- filters: what the table shows (client side, at once) and what GET /errors is asked for
  const filters = { state: "", level: "", service: "", q: "" };
  function matches(s) {
    if (filters.state === "regressed" ? !(s.state === "unresolved" && s.regressed)
        : filters.state && s.state !== filters.state) return false;
    if (filters.level && s.level !== filters.level) return false;
    if (filters.service && s.service !== filters.service) return false;
    return !filters.q || (s.message || "").toLowerCase().includes(filters.q.toLowerCase());
  }
  let reloadTimer = null;
  $("filters").addEventListener("input", () => {
    filters.state = $("f-state").value; filters.level = $("f-level").value;
    filters.service = $("f-service").value.trim(); filters.q = $("f-q").value.trim();
    schedule();
    clearTimeout(reloadTimer);  // typing: one reload once the user pauses, not one per key
    reloadTimer = setTimeout(() => { const t = takeToken(); if (t) state.projects.forEach((p) => loadRest(p, t)); }, 300);
  });
  $("filters").addEventListener("submit", (e) => e.preventDefault());

  // ---- connection: subscribe, then snapshot (live Redis view in the ack + the REST read API)
  function connect() {
    const token = takeToken();
    if (!token) { askToken(); setConn("off", "no token"); return; }
    socket = io({ transports: ["websocket"], auth: { token }, reconnectionDelay: 300, reconnectionDelayMax: 3000 });
    socket.on("connect", () => {
      setConn("off", "syncing…");
      socket.emit("subscribe", { rooms: ["project:*"] }, (ack) => onSubscribed(ack, token));
    });
    socket.on("connect_error", (err) => {
      if (/token/.test(err.message)) {
        socket.close(); forgetToken(); askToken(plainRefusal(err)); setConn("bad", "refused");
      }
      else setConn("off", "reconnecting…");
    });
    let told = false;  // the node said it is draining: come back through the load balancer
    socket.on("disconnect", (reason) => {
      state.connected = false;
      setConn("off", told ? "node draining, moving…" : "reconnecting…");
      // a server-side close is not retried by socket.io-client; a drain is exactly that, so retry it
      if (told || reason === "io server disconnect") setTimeout(() => socket.connect(), 200 + Math.random() * 300);
      told = false;
    });
    socket.on("feed:reconnect", () => { told = true; });
    socket.on("error:new", onNew);
    socket.on("error:count", onCount);
    socket.on("error:spike", onSpike);
    socket.on("error:state", onState);
  }

  // What the server's refusal means, in words a person acts on (its codes stay in the console).
  function plainRefusal(err) {
    const code = (err.data && err.data.error) || err.message || "";
    console.info("socket refused:", code);
    if (/missing_token/.test(code)) return "This dashboard needs a token: paste the dashboard or admin token.";
    return "That token was not accepted. Paste the dashboard (read-only) or admin token from " +
           ".faultline/credentials.env, or ask whoever runs Faultline.";
  }

  async function onSubscribed(ack, token) {
    if (!ack || !ack.ok) { setConn("bad", (ack && ack.error) || "subscribe failed"); return; }
    state.node = ack.node; state.rooms = ack.rooms; state.projects = ack.projects || [];
    for (const g of ack.snapshot || []) upsert(g);
    // The DB view adds groups whose live summary Redis no longer has; max() keeps the newer counts.
    await Promise.all((ack.projects || []).map((pid) => loadRest(pid, token)));
    state.connected = true; state.snapshots += 1;
    // honest empty state: "no errors" only once both views (live and DB) have answered
    setText($("empty"), "No errors yet — waiting for events.");
    setConn("live", "live · " + ack.node);
    schedule();
  }

  async function loadRest(pid, token) {
    try {
      const q = new URLSearchParams({ project_id: pid, sort: "last_seen", limit: MAX_ROWS });
      for (const k of ["state", "level", "service", "q"]) if (filters[k]) q.set(k, filters[k]);
      const r = await fetch(`/errors?${q}`, { headers: { Authorization: "Bearer " + token } });
      if (!r.ok) return;
      const body = await r.json();
      for (const g of body.items || []) upsert(g);
      schedule();
    } catch (e) { /* the live snapshot already covers it; next reconnect retries */ }
  }

  function setConn(kind, text) {
    $("conn").className = "conn " + kind;
    $("conn-text").textContent = text;
  }

  // ---- rendering: at most once per animation frame, only what changed
  let pending = false;
  function schedule() { if (!pending) { pending = true; requestAnimationFrame(render); } }

  function rateOf(s, t) {
    while (s.history.length && s.history[0][0] < t - RATE_WINDOW_S) s.history.shift();
    return s.history.reduce((a, h) => a + h[1], 0) / RATE_WINDOW_S;
  }

  function ago(t) {
    if (!t) return "—";
    const d = Math.max(0, now() - t);
    if (d < 60) return `${Math.floor(d)} s ago`;
    if (d < 3600) return `${Math.floor(d / 60)} min ago`;
    if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
    return new Date(t * 1000).toLocaleDateString();
  }

  const fmt = new Intl.NumberFormat();
  function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

  function makeRow(s) {
    const tr = document.createElement("tr");
    tr.dataset.fp = s.fp;
    const cell = (cls) => { const td = document.createElement("td"); td.className = cls; tr.appendChild(td); return td; };
    const lvl = document.createElement("span");
    cell("lvl").appendChild(lvl);
    const msg = cell("msg");
    const text = document.createElement("a"); text.className = "text";
    text.href = "/dashboard/groups/" + encodeURIComponent(s.fp);  // the group page (token: sessionStorage)
    const badge = document.createElement("span");
    msg.append(text, badge);
    const svc = cell("svc"), count = document.createElement("span");
    count.className = "v";
    cell("n count").appendChild(count);
    s.row = { tr, lvl, text, badge, svc, count, rate: cell("n rate"), first: cell("time first"),
              last: cell("time last") };
    return s.row;
  }

  function render() {
    pending = false;
    const t = now(), ms = Date.now();
    const ordered = [...groups.values()].filter(matches).sort((a, b) => (b.last || 0) - (a.last || 0) || b.count - a.count)
      .slice(0, MAX_ROWS);
    const body = $("rows");
    let total = 0, prev = null;
    for (const s of groups.values()) total += s.count;
    for (const s of ordered) {
      const r = s.row || makeRow(s);
      const level = (s.level || "error").toLowerCase();
      setText(r.lvl, level);
      if (r.lvl.className !== "level " + level) r.lvl.className = "level " + level;
      setText(r.text, s.message || s.fp.slice(0, 12));
      r.text.title = s.message;
      const fresh = s.freshUntil > ms, spiking = s.spikeUntil > ms;
      const regressed = s.state === "unresolved" && s.regressed;
      const badge = spiking ? "spike" : regressed ? "regressed" : s.state !== "unresolved" ? s.state
        : fresh ? "new" : "";
      setText(r.badge, badge);
      if (r.badge.className !== "badge " + badge) r.badge.className = "badge " + badge;
      r.tr.classList.toggle("settled", s.state !== "unresolved");
      r.tr.classList.toggle("fresh", fresh);
      r.tr.classList.toggle("spiking", spiking);
      if (s.bump) {  // restart the count's colour pulse (own element: the row's "new" glow keeps running)
        r.count.classList.remove("bump"); void r.count.offsetWidth; r.count.classList.add("bump"); s.bump = false;
      }
      setText(r.svc, s.service || "—");
      setText(r.count, fmt.format(s.count));
      setText(r.rate, rateOf(s, t).toFixed(1));
      setText(r.first, ago(s.first));
      setText(r.last, ago(s.last));
      // move a row only when its position changed: untouched rows are never detached (no flicker)
      const want = prev ? prev.row.tr.nextSibling : body.firstChild;
      if (want !== r.tr) body.insertBefore(r.tr, want);
      prev = s;
    }
    while (prev && prev.row.tr.nextSibling) body.removeChild(body.lastChild);
    $("empty").hidden = ordered.length > 0;
    if (groups.size > 0 && !ordered.length) setText($("empty"), "No group matches these filters.");
    setText($("stat-groups"), fmt.format(groups.size));
    setText($("stat-events"), fmt.format(total));
    const cur = Math.floor(t) - 1;  // the last complete second
    setText($("stat-rate"), fmt.format(perSecond.get(cur) || 0));
    drawChart(Math.floor(t));
  }

  function drawChart(nowSecond) {
    const canvas = $("chart"), dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    for (const k of perSecond.keys()) if (k < nowSecond - WINDOW_S - 5) perSecond.delete(k);
    let max = 0;
    for (let i = 0; i < WINDOW_S; i++) max = Math.max(max, perSecond.get(nowSecond - WINDOW_S + 1 + i) || 0);
    const step = niceStep(Math.max(max, 4) / 4), top = 4 * step;  // 4 grid lines at round values
    const padL = 56, padR = 12, padT = 14, padB = 24, cw = w - padL - padR, ch = h - padT - padB;
    const css = getComputedStyle(document.documentElement);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {  // grid and y labels
      const y = padT + ch - (ch * i) / 4;
      ctx.strokeStyle = css.getPropertyValue("--line"); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(padL, Math.round(y) + 0.5); ctx.lineTo(w - padR, Math.round(y) + 0.5); ctx.stroke();
      ctx.fillStyle = css.getPropertyValue("--muted"); ctx.textAlign = "right";
      ctx.fillText(fmt.format(step * i), padL - 8, y);
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (let m = 0; m <= 5; m++) {  // x labels every minute
      const x = padL + cw - (cw * m * 60) / WINDOW_S;
      ctx.fillText(m === 0 ? "now" : `-${m} min`, Math.min(Math.max(x, padL + 12), w - padR - 12), padT + ch + 6);
    }
    const bw = cw / WINDOW_S;
    ctx.fillStyle = css.getPropertyValue("--accent");
    for (let i = 0; i < WINDOW_S; i++) {
      const v = perSecond.get(nowSecond - WINDOW_S + 1 + i) || 0;
      if (!v) continue;
      const bh = Math.max(1, (ch * v) / top);
      ctx.fillRect(padL + i * bw, padT + ch - bh, Math.max(1, bw - 0.5), bh);
    }
  }

  function niceStep(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  setInterval(schedule, 1000);  // relative times, rates and the chart move even when nothing arrives
  window.addEventListener("resize", schedule);
  connect();
  schedule();
})();
