// Faultline group page (/dashboard/groups/<fingerprint>): GET /errors/<fp> (group, state, hourly counts,
// latest samples), then the live feed of its project: error:count moves the count and this hour's bar,
// error:state its state. Resolve / ignore send PATCH /errors/<fp> (admin token). Every piece of event data
// goes into the page as text (textContent), never as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const fp = decodeURIComponent(location.pathname.split("/").pop() || "");
  const view = { group: null, hours: new Map(), firstHour: 0, days: 14, socket: null };
  window.faultline = { view };  // read by the end-to-end test and handy in the console
  const fmt = new Intl.NumberFormat();
  const { forget: forgetToken, take: takeToken } = window.faultlineToken;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

  // A sample as the page shows it: the event's own Sentry-shaped slots, or what Sentry ingest keeps of them
  // under context.sentry (core/sentry/normalize.py); the rest of the context is shown as it came.
  const SHOWN = ["exception", "tags", "release", "environment", "platform"];
  function facts(ev) {
    const sentry = (ev.context && typeof ev.context.sentry === "object" && ev.context.sentry) || {};
    const out = { context: null };
    for (const k of SHOWN) out[k] = ev[k] != null ? ev[k] : sentry[k];
    if (ev.context) {
      const ctx = { ...ev.context };
      if (ctx.sentry) {
        const rest = { ...sentry };
        for (const k of SHOWN) delete rest[k];
        if (Object.keys(rest).length) ctx.sentry = rest; else delete ctx.sentry;
      }
      if (Object.keys(ctx).length) out.context = ctx;
    }
    return out;
  }

  const askToken = (message) => window.faultlineToken.ask(message, load);

  async function api(method, body) {
    const token = takeToken();
    const r = await fetch("/errors/" + encodeURIComponent(fp), {
      method, headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
      body: body ? JSON.stringify(body) : undefined });
    let data = null;
    try { data = await r.json(); } catch (e) { /* an empty or non-JSON answer */ }
    return { status: r.status, data };
  }

  async function load() {
    if (!takeToken()) { askToken(); return; }
    const { status, data } = await api("GET");
    if (status === 401) { forgetToken(); askToken("That token was not accepted: paste the dashboard or admin token."); return; }
    if (status !== 200) { $("empty").textContent = (data && data.message) || `This group could not be read (${status}).`; return; }
    view.group = data;
    view.firstHour = data.hourly.first_hour; view.days = data.hourly.days;
    view.hours = new Map(data.hourly.counts.map(([h, n]) => [h, n]));
    $("empty").hidden = true; $("summary").hidden = false;
    renderSummary(); renderSamples(data.samples || []); drawChart();
    if (!view.socket) connect(data.project_id);
  }

  function renderSummary() {
    const g = view.group;
    document.title = `Faultline · ${(g.message || g.fingerprint).slice(0, 80)}`;
    $("g-message").textContent = g.message || g.fingerprint;
    $("g-type").textContent = g.error_type || "";
    $("g-level").textContent = g.level || "error";
    $("g-level").className = "level " + (g.level || "error");
    const regressed = g.state === "unresolved" && g.regressed;
    const label = regressed ? "regressed" : g.state;
    $("g-state").textContent = label;
    $("g-state").className = "badge " + label;
    $("g-count").textContent = fmt.format(g.count);
    $("g-service").textContent = g.service || "—";
    $("g-first").textContent = when(g.first_seen);
    $("g-last").textContent = when(g.last_seen);
    const latest = facts((g.samples || [])[0] || {});
    $("g-release").textContent = latest.release || "—";
    $("g-env").textContent = latest.environment || "—";
    $("resolve").disabled = g.state === "resolved";
    $("unresolve").disabled = g.state === "unresolved";
  }

  // ---- samples: exception chain with frames (in-app highlighted), else the raw stack; tags; context
  function renderSamples(samples) {
    const box = $("samples");
    box.replaceChildren();
    $("samples-caption").textContent = samples.length ? `${samples.length} most recent` : "none kept";
    for (const ev of samples) {
      const f = facts(ev);
      const card = el("details", "sample");  // the newest open; older ones one click away
      card.open = box.childElementCount === 0;
      const head = el("summary", "sample-head");
      head.append(el("span", "when", when(ev.received_at)), el("span", "mono muted", ev.event_id));
      for (const [k, v] of [["release", f.release], ["environment", f.environment], ["platform", f.platform]]) {
        if (v) head.append(el("span", "chip", `${k}: ${v}`));
      }
      card.append(head);
      const chain = Array.isArray(f.exception) ? f.exception : [];
      if (chain.length) {
        for (const exc of chain.slice().reverse()) card.append(exceptionBlock(exc));  // innermost first
      } else if (ev.stack) {
        card.append(el("h3", null, "Stack trace"), el("pre", "stack mono", ev.stack));
      } else {
        card.append(el("p", "muted", "No stack trace was sent with this event."));
      }
      if (f.tags && typeof f.tags === "object" && Object.keys(f.tags).length) {
        card.append(el("h3", null, "Tags"));
        const tags = el("div", "tags");
        for (const [k, v] of Object.entries(f.tags)) tags.append(el("span", "chip", `${k}: ${v}`));
        card.append(tags);
      }
      if (f.context) {
        card.append(el("h3", null, "Context"), el("pre", "context mono", JSON.stringify(f.context, null, 2)));
      }
      box.append(card);
    }
  }

  function exceptionBlock(exc) {
    const wrap = el("div", "exception");
    wrap.append(el("h3", "mono", [exc.type, exc.value].filter(Boolean).join(": ") || "Exception"));
    const frames = Array.isArray(exc.frames) ? exc.frames : [];
    if (!frames.length) return wrap;
    const list = el("ol", "frames mono");
    for (const f of frames.slice().reverse()) {  // most recent call first, as people read a trace
      const li = el("li", f.in_app === true ? "frame in-app" : "frame");
      li.append(el("span", "fn", f.function || "?"));
      li.append(el("span", "loc", ` ${f.filename || f.module || "?"}${f.lineno != null ? ":" + f.lineno : ""}`));
      if (f.in_app === true) li.append(el("span", "chip app", "in app"));
      list.append(li);
    }
    wrap.append(list);
    return wrap;
  }

  // ---- the hourly chart: plain SVG, one bar per hour, zero-filled
  function drawChart() {
    const svg = $("hourly");
    const w = svg.clientWidth || 800, h = svg.clientHeight || 176;
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.replaceChildren();
    const n = view.days * 24, first = view.firstHour;
    let max = 0;
    for (let i = 0; i < n; i++) max = Math.max(max, view.hours.get(first + i * 3600) || 0);
    const step = niceStep(Math.max(max, 4) / 4), top = 4 * step;
    const padL = 56, padR = 12, padT = 12, padB = 26, cw = w - padL - padR, ch = h - padT - padB;
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text != null) e.textContent = text;
      svg.append(e);
      return e;
    };
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(padT + ch - (ch * i) / 4) + 0.5;
      add("line", { x1: padL, x2: w - padR, y1: y, y2: y, class: "grid" });
      add("text", { x: padL - 8, y: y + 4, class: "axis", "text-anchor": "end" }, fmt.format(step * i));
    }
    const bw = cw / n;
    for (let d = 0; d <= view.days; d += 2) {  // a label every 2 days, at local midnight-ish hour boundaries
      const x = padL + d * 24 * bw;
      const t = new Date((first + d * 24 * 3600) * 1000);
      add("text", { x: Math.min(Math.max(x, padL + 20), w - padR - 20), y: h - 6, class: "axis", "text-anchor": "middle" },
          d === view.days ? "now" : t.toLocaleDateString(undefined, { month: "short", day: "numeric" }));
    }
    for (let i = 0; i < n; i++) {
      const v = view.hours.get(first + i * 3600) || 0;
      if (!v) continue;
      const bh = Math.max(1.5, (ch * v) / top);
      const bar = add("rect", { x: (padL + i * bw).toFixed(2), y: (padT + ch - bh).toFixed(2),
                                width: Math.max(1, bw - 0.6).toFixed(2), height: bh.toFixed(2), class: "bar" });
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${new Date((first + i * 3600) * 1000).toLocaleString()}: ${fmt.format(v)} events`;
      bar.append(title);
    }
  }
  function niceStep(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // ---- live: this group's counts and state from its project's room
  function connect(projectId) {
    const token = takeToken();
    const socket = view.socket = io({ transports: ["websocket"], auth: { token }, reconnectionDelay: 300,
                                      reconnectionDelayMax: 3000 });
    const setConn = (kind, text) => { $("conn").className = "conn " + kind; $("conn-text").textContent = text; };
    socket.on("connect", () => socket.emit("subscribe", { rooms: [`project:${projectId}`] }, (ack) => {
      if (ack && ack.ok) setConn("live", "live · " + ack.node); else setConn("bad", (ack && ack.error) || "refused");
    }));
    socket.on("disconnect", () => setConn("off", "reconnecting…"));
    socket.on("connect_error", () => setConn("off", "reconnecting…"));
    socket.on("error:count", (msg) => {
      for (const c of (msg && msg.counts) || []) {
        if (c.fingerprint !== fp || !view.group) continue;
        if (c.total > view.group.count) view.group.count = c.total;
        const hour = Math.floor(msg.t / 3600) * 3600;
        view.hours.set(hour, (view.hours.get(hour) || 0) + (c.delta || 0));
        if (hour >= view.firstHour + view.days * 24 * 3600) {  // the page stayed open past the window's end
          view.firstHour += 3600;
        }
        view.group.last_seen = new Date(msg.t * 1000).toISOString();
        renderSummary(); drawChart();
      }
    });
    socket.on("error:state", (msg) => {
      for (const g of (msg && msg.groups) || []) {
        if (g.fingerprint === fp && view.group) { view.group.state = g.state; view.group.regressed = g.regressed; renderSummary(); }
      }
    });
  }

  // ---- actions (admin token): the answer is the group as stored
  async function change(body, what) {
    $("action-msg").textContent = what + "…";
    const { status, data } = await api("PATCH", body);
    if (status === 200) {
      Object.assign(view.group, data); renderSummary();
      $("action-msg").textContent = "Saved.";
    } else if (status === 401 || status === 403) {
      $("action-msg").textContent = "Changing a state needs the admin token (this one is read-only).";
    } else {
      $("action-msg").textContent = (data && data.message) || `Not saved (${status}).`;
    }
  }
  $("resolve").addEventListener("click", () => change({ state: "resolved" }, "Resolving"));
  $("unresolve").addEventListener("click", () => change({ state: "unresolved" }, "Reopening"));
  $("ignore").addEventListener("click", () => {
    const how = $("ignore-how").value, body = { state: "ignored" };
    if (how.startsWith("s:")) body.ignore_for_seconds = Number(how.slice(2));
    if (how.startsWith("n:")) body.ignore_until_count = Number(how.slice(2));
    change(body, "Ignoring");
  });
  window.addEventListener("resize", () => { if (view.group) drawChart(); });
  load();
})();
