// The live class board. Everything a client supplied (rider names, tags, titles) is set
// with textContent: text, never HTML. The page's only credential is a view token that
// arrives in the URL fragment (#token=..., never sent to a server), is kept in
// sessionStorage for this tab, removed from the address bar at once, and offered to the
// WebSocket as a subprotocol, never in a URL. Served with a strict Content-Security-Policy
// (api/pages.py): no inline script, nothing from other origins.
import { BoardClient } from "/static/pulseline.js";  // the JS client (clients/js)

(() => {
  const LABELS = {
    rank: "#", participant: "Rider", energy_kj: "Output (kJ)", power_w: "Power (W)", hr_bpm: "Heart rate",
    cadence_rpm: "Cadence (rpm)", speed_mps: "Speed (km/h)", distance_m: "Distance (km)", samples: "Samples",
    np_w: "NP (W)", power_target: "Target", replay_rank: "Replay #",
  };
  const ORDER = ["rank", "replay_rank", "participant", "energy_kj", "power_w", "power_target", "np_w", "hr_bpm", "cadence_rpm", "speed_mps", "distance_m"];
  const TARGET = { below: "▲ push", in: "✓ on", above: "▼ ease" };  // a rider against the segment's power target
  const AWAY_S = 15;        // a rider whose newest sample is older than this is marked away
  const CHART_S = 120;      // the chart shows the class's average power over this window
  const TERMINAL = {
    4401: "This link has expired or is not valid: ask for a new one.",
    4403: "This link does not give access to this class.",
    4404: "There is no such class.",
    4400: "The board could not be opened (bad request).",
  };
  const $ = (id) => document.getElementById(id);
  const sid = decodeURIComponent(location.pathname.split("/")[3] || "");
  const storeKey = "pulseline.view." + sid;
  const query = new URLSearchParams(location.search);
  const you = query.get("participant");
  const history_ = [];      // [board ts, class average power]
  let lastVersion = -1;
  let lastBoard = null;     // re-rendered when display names arrive

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = fragment.get("token") || query.get("token");  // ?token= from old links
    if (token) {
      try { sessionStorage.setItem(storeKey, token); } catch (e) { /* storage off: memory only */ }
      query.delete("token");
      const rest = query.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
      return token;
    }
    try { return sessionStorage.getItem(storeKey); } catch (e) { return null; }
  }

  // Display names (the riders' profiles), asked for the ids on the board not known yet;
  // an id without one is asked again after a minute (it may set one meanwhile).
  const names = new Map();
  const asked = new Map();
  let asking = false;
  async function loadNames(ids) {
    const now = Date.now();
    const fresh = ids.filter((id) => typeof id === "string" && !names.has(id) && !(now - (asked.get(id) || 0) < 60000)).slice(0, 200);
    if (!fresh.length || asking || !token) return;
    asking = true;
    fresh.forEach((id) => asked.set(id, now));
    try {
      const reply = await fetch(`/v1/sessions/${encodeURIComponent(sid)}/names?riders=${fresh.map(encodeURIComponent).join(",")}`,
                                { headers: { Authorization: "Bearer " + token } });
      let got = 0;
      if (reply.ok) for (const [id, name] of Object.entries((await reply.json()).names || {})) { names.set(id, name); got += 1; }
      if (got && lastBoard) render(lastBoard);  // an ended class sends no new board: show the names now
    } catch (e) { /* ids stay on the board */ } finally { asking = false; }
  }

  // Power and heart rate are coloured by the rider's zone (from its profile: Coggan 1-7, HR 1-5).
  const ZONE_OF = { power_w: "power_zone", hr_bpm: "hr_zone" };

  function format(col, value) {
    if (value === null || value === undefined) return "–";
    if (col === "participant") return names.get(value) || String(value);
    if (col.endsWith("_target")) return TARGET[value] || String(value);
    if (typeof value !== "number") return String(value);
    if (col === "speed_mps") return (value * 3.6).toFixed(1);
    if (col === "distance_m") return (value / 1000).toFixed(2);
    if (col === "energy_kj") return value.toFixed(1);
    return String(Math.round(value));
  }

  function cell(tag, text, className) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function renderHead(cols) {
    if ($("head").childElementCount) return;
    $("head").replaceChildren(...cols.map((c) => cell("th", LABELS[c] || c, "col-" + c)));
  }

  function renderYou(row, at, n, replay) {
    if (!row) {  // no viewer of its own, or a rider (?participant=) the class does not have
      $("you").replaceChildren(document.createTextNode(you === null ? "" : `${you} is not riding in this class (yet)`));
      $("you").hidden = you === null;
      return;
    }
    const parts = [
      document.createTextNode("You: "), cell("strong", `#${row[at.rank]}`), document.createTextNode(` of ${n} · `),
      cell("strong", format("energy_kj", row[at.energy_kj])), document.createTextNode(" kJ"),
      document.createTextNode(` · ${format("power_w", row[at.power_w])} W · ${format("hr_bpm", row[at.hr_bpm])} bpm`),
    ];
    if (at.power_zone !== undefined) {  // boards since issue 16: zones, NP, calories (null while unknown)
      parts.push(document.createTextNode(` · power zone ${format("power_zone", row[at.power_zone])}` +
        ` · HR zone ${format("hr_zone", row[at.hr_zone])} · NP ${format("np_w", row[at.np_w])} W` +
        ` · ${format("kcal", row[at.kcal])} kcal`));
    }
    if (at.power_target !== undefined && row[at.power_target] !== null) {  // a class plan's segment target
      parts.push(document.createTextNode(` · target: ${format("power_target", row[at.power_target])}`));
    }
    if (replay && at.replay_rank !== undefined && typeof row[at.replay_rank] === "number") {  // riding on demand
      parts.push(document.createTextNode(" · replay "), cell("strong", `#${row[at.replay_rank]}`),
        document.createTextNode(` of ${replay.recorded + replay.here_now}`));
    }
    $("you").replaceChildren(...parts);
    $("you").hidden = false;
  }

  function clock(s) {
    const m = Math.floor(s / 60);
    return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`
      : `${m}:${String(s % 60).padStart(2, "0")}`;
  }

  function renderPlan(plan, phase) {  // the class plan (boards of scheduled classes; text only)
    if (!plan || phase === "ended") { $("plan").hidden = true; return; }
    const next = plan.next;
    if (plan.segment === null || plan.segment === undefined) {
      $("plan-kind").textContent = plan.starts_in_s !== undefined && plan.starts_in_s !== null
        ? `Starts in ${clock(plan.starts_in_s)}` : "Waiting for the start";
      $("plan-left").textContent = plan.class_s ? `· ${clock(plan.class_s)} class` : "";
      $("plan-cue").textContent = "";
    } else {
      $("plan-kind").textContent = `${plan.kind.charAt(0).toUpperCase()}${plan.kind.slice(1)} (${plan.segment + 1}/${plan.segments})`;
      $("plan-left").textContent = `· ${clock(plan.segment_left_s)} left · class ${clock(plan.class_left_s)}`;
      $("plan-cue").textContent = plan.cue || "";
    }
    $("plan-next").textContent = next ? `Next: ${next.kind}${next.cue ? " — " + next.cue : ""}` : "";
    $("plan").hidden = false;
  }

  function renderReplay(replay) {  // an on-demand class: the recorded riders ("ghosts") at the offset
    if (!replay) { $("replay").hidden = true; return; }
    const at = typeof replay.offset_s === "number" ? `${clock(Math.round(replay.offset_s))} of ${clock(replay.class_s)}`
      : `${clock(replay.class_s)} class`;
    $("replay-of").textContent = `On demand: ${replay.of}`;
    $("replay-meta").textContent = ` · ${at} · ${replay.recorded} recorded ${replay.recorded === 1 ? "rider" : "riders"}` +
      ` · ${replay.here_now} riding now`;
    const ghosts = replay.ghosts || [];
    $("ghosts").replaceChildren(...ghosts.map(([name, kj]) => cell("li", `${name} — ${format("energy_kj", kj)} kJ`)));
    $("ghosts-none").hidden = ghosts.length > 0;
    $("replay").hidden = false;
  }

  function drawChart() {
    const canvas = $("chart");
    const ctx = canvas.getContext("2d");
    const w = canvas.width = canvas.clientWidth || 600;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (history_.length < 2) return;
    const end = history_[history_.length - 1][0];
    const span = Math.min(CHART_S, Math.max(10, end - history_[0][0]));  // fill the width from the start
    const max = 1.25 * Math.max(100, ...history_.map((p) => p[1]));  // headroom above the line
    ctx.strokeStyle = "#c0392b";
    ctx.lineWidth = 2;
    ctx.beginPath();
    history_.forEach(([t, v], i) => {
      const x = w - ((end - t) / span) * w;
      const y = h - 4 - (v / max) * (h - 8);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = "#555";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(`class average ${Math.round(history_[history_.length - 1][1])} W`, 6, 14);
  }

  function render(board) {
    lastBoard = board;
    const at = Object.fromEntries(board.cols.map((c, i) => [c, i]));
    const cols = ORDER.filter((c) => c in at && (c !== "replay_rank" || board.replay));
    renderHead(cols);
    const rows = board.rows || board.top || [];
    loadNames(rows.map((r) => r[at.participant]));
    let mine = null;
    $("body").replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      if (you !== null && row[at.participant] === you) { tr.classList.add("you"); mine = row; }
      if (at.presence !== undefined ? row[at.presence] === "reconnecting"
        : at.last_ts !== undefined && row[at.last_ts] !== null && board.ts - row[at.last_ts] > AWAY_S) tr.classList.add("away");
      tr.append(...cols.map((c) => {
        const td = cell("td", format(c, row[at[c]]), (c === "participant" ? "name " : "") + "col-" + c);
        const zone = ZONE_OF[c] !== undefined ? row[at[ZONE_OF[c]]] : undefined;  // (blanked: not this viewer's to see)
        if (typeof zone === "number") td.classList.add(`${ZONE_OF[c]}-${zone}`);
        return td;
      }));
      return tr;
    }));
    renderYou(mine || (you !== null ? board.you : null), at, board.n, board.replay);
    const powers = rows.map((r) => r[at.power_w]).filter((v) => typeof v === "number");
    if (board.version !== lastVersion) {
      lastVersion = board.version;
      history_.push([board.ts, powers.length ? powers.reduce((a, b) => a + b, 0) / powers.length : 0]);
      while (history_.length && board.ts - history_[0][0] > CHART_S) history_.shift();
      drawChart();
    }
    renderPlan(board.plan, board.phase);
    renderReplay(board.replay);
    $("results").hidden = board.phase !== "ended";
    $("meta").textContent = `${board.phase} · ${board.n} ${board.n === 1 ? "rider" : "riders"} · updated ${new Date(board.ts * 1000).toLocaleTimeString()}`;
  }

  function stop(message) {
    $("note").textContent = message;
    $("note").hidden = false;
    $("meta").textContent = "not connected";
  }

  async function loadCard(token) {
    try {
      const reply = await fetch(`/v1/sessions/${encodeURIComponent(sid)}/card`, { headers: { Authorization: "Bearer " + token } });
      if (!reply.ok) return;
      const card = await reply.json();
      if (card.title) {
        $("title").textContent = card.title;
        document.title = `${card.title} · pulseline`;
      }
    } catch (e) { /* the board still works without its title */ }
  }

  const token = takeToken();
  $("sid").textContent = sid;
  function connect() {
    // msgpack boards, reconnecting with back-off; 4401/4403/4404 end it (the client's TERMINAL_CLOSES)
    const board = new BoardClient({ urls: `${location.protocol}//${location.host}`, session: sid, token,
                                    rate: 2, view: "all", participant: you, minDelayMs: 1000 });
    board.on("open", () => { $("note").hidden = true; });
    board.on("board", (b) => { if (Array.isArray(b.cols)) render(b); });
    board.on("close", (ev) => {
      if (ev.code in TERMINAL) stop(TERMINAL[ev.code]);
      else if (ev.retry) $("meta").textContent = "reconnecting…";
    });
    board.connect();
  }

  if (!token) {
    stop("Open this page with a view link (…/view#token=…): ask the instructor or the app for one.");
  } else {
    loadCard(token);
    connect();
  }
})();
